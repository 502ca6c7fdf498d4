"""The one batch loop every forward pass of an audit goes through (FP, calibration, configurations).

Per batch: forward once, feed the logits to the model accumulators, read every requested hook
point's activations from the same pass, encode them with the hook point's SAE, and hand
``(hook, x, features, batch)`` to the caller's ``consume``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from .base import Batch
from .capture import capture
from .workbench import HookState, Workbench

Consume = Callable[[str, Any, Any, Batch], None]


def kept_rows(acts: Any, keep: Any) -> Any:
    """``acts[keep]`` (``acts`` ``[batch, ctx, ...]`` on any device, ``keep`` a boolean ``[batch, ctx]``
    on the host): the same rows, gathered by indices found on the host, so an accelerator is not
    waited for to learn how many rows there are."""
    if keep.device == acts.device:
        return acts[keep]
    idx = keep.reshape(-1).nonzero().squeeze(1).to(acts.device, non_blocking=True)
    return acts.reshape(-1, *acts.shape[2:]).index_select(0, idx)


def encode(bench: Workbench, state: HookState, acts: Any, keep: Any) -> tuple[Any, Any]:
    """SAE input ``x`` (kept positions, the SAE's dtype, centred when asked) and its features."""
    x = kept_rows(acts, keep)
    dtype = getattr(state.sae.sae, "dtype", None)
    if dtype is not None:
        x = x.to(dtype)
    if bench.options.center_activations:
        # TransformerLens's center_writing_weights convention: every write to the residual
        # stream has zero mean across d_model, so SAEs trained on it expect centred activations
        x = x - x.mean(dim=-1, keepdim=True)
    return x, state.sae.encode(x)


def run_pass(bench: Workbench, tokens: Any, hooks: Iterable[str], model_accs: dict[str, Any],
             consume: Consume | None, label: str, *, extra_hooks: Iterable[str] = (),
             on_acts: Callable[[dict[str, Any], Any, Batch], None] | None = None) -> None:
    """Forward every batch of ``tokens`` once; see the module docstring.

    ``extra_hooks`` are read but not encoded; ``on_acts(acts, keep, batch)`` sees every hook
    point's raw activations of a batch (the fit check encodes neighbouring hook points with it).
    """
    import torch

    loaded, o = bench.loaded, bench.options
    hooks = list(dict.fromkeys(hooks))
    n = tokens.n_batches(o.batch_size)
    bench.progress.step(label, 0, n)  # the pass begins
    with torch.no_grad(), capture(loaded.adapter, loaded.model, [*hooks, *extra_hooks]) as acts:
        for i, (ids, keep) in enumerate(tokens.batches(o.batch_size), 1):
            logits = loaded.adapter.forward(loaded.model, ids.to(bench.device))
            for acc in model_accs.values():
                acc.update(logits, ids.to(logits.device))
            batch = Batch(i - 1, (i - 1) * o.batch_size, keep.sum(1).tolist(), keep.nonzero()[:, 1], ids,
                          loaded.tokenizer)
            if consume is not None:
                for hook in hooks:
                    x, f = encode(bench, bench.hooks[hook], acts[hook], keep)
                    consume(hook, x, f, batch)
            if on_acts is not None:
                on_acts(acts, keep, batch)
            bench.progress.step(label, i, n)
