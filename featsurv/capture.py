"""Reading hook-point activations from a forward pass with PyTorch forward hooks."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence


@contextmanager
def capture(adapter: Any, model: Any, hook_names: Sequence[str]) -> Iterator[dict[str, Any]]:
    """While active, every forward pass stores each hook's activation ``[batch, ctx, d]`` in the dict."""
    store: dict[str, Any] = {}
    handles = []

    def first(x: Any) -> Any:
        return x[0] if isinstance(x, (tuple, list)) else x

    for name in dict.fromkeys(hook_names):
        module, where = adapter.hook_point(model, name)
        if where == "output":
            handles.append(module.register_forward_hook(
                lambda _m, _a, out, name=name: store.__setitem__(name, first(out).detach())))
        else:
            def pre(_m: Any, args: tuple, kwargs: dict, name: str = name) -> None:
                x = args[0] if args else kwargs.get("hidden_states")
                store[name] = x.detach()
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
