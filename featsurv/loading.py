"""Resolving user-given names (model, SAE, dataset) to the plugin that handles them."""
from __future__ import annotations

from typing import Any

from .base import LoadedModel, LoadedSAE
from .data_paths import resolve
from .errors import FeatsurvError
from .plugins import Registry


def pick_adapter(registry: Registry, config: Any, adapter: str | None) -> Any:
    if adapter:
        return registry.get("model_adapters", adapter)
    adapters = sorted(registry.all("model_adapters"), key=lambda a: -getattr(a, "priority", 10))
    for candidate in adapters:
        if candidate.matches(config):
            return candidate
    raise FeatsurvError(
        f"No model adapter handles model type {getattr(config, 'model_type', None)!r}",
        allowed=registry.names("model_adapters"),
        hint="Pass --adapter NAME, or write an adapter plugin (docs/plugins/adapters.md)")


def load_keywords(adapter: Any, **optional: Any) -> dict[str, Any]:
    """The optional keywords set (not None) that ``adapter.load`` accepts; one it does not accept is
    a FeatsurvError (adapters written before a keyword existed keep working without it)."""
    import inspect

    given = {k: v for k, v in optional.items() if v is not None}
    params = inspect.signature(adapter.load).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return given
    refused = sorted(set(given) - set(params))
    if refused:
        raise FeatsurvError(f"Model adapter {adapter.name!r} does not take {', '.join(refused)} "
                            f"(--{refused[0].replace('_', '-')})",
                            hint=f"Drop the option, or add {refused[0]}=None (or **kwargs) to the adapter's load()")
    return given


def load_model(registry: Registry, source: str, *, adapter: str | None = None, dtype: str = "float32",
               device: str = "cpu", trust_remote_code: bool = False, require_safetensors: bool = False,
               adapter_options: dict[str, Any] | None = None, revision: str | None = None) -> LoadedModel:
    """Load a model through the adapter that matches its config (or the one named), configured
    with ``adapter_options`` (validated against the adapter's declared options).

    ``require_safetensors`` refuses pickle weights; ``revision``: a hub branch, tag or commit. Both
    are passed to the adapter's ``load`` only when set (:func:`load_keywords`).
    """
    from transformers import AutoConfig

    from .hf import model_load_error

    path = resolve(source)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code,
                                            **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as exc:
        raise model_load_error(source, exc) from None
    chosen = pick_adapter(registry, config, adapter).configure(dict(adapter_options or {}))
    extra = load_keywords(chosen, require_safetensors=True if require_safetensors else None, revision=revision)
    loaded = chosen.load(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **extra)
    try:
        # resolve everything the audit will need now, so a mismatch fails before any work
        n_layers = len(chosen.layers(loaded.model))
        chosen.compressible_weights(loaded.model)
        for kind in ("resid_post", "attn_out", "mlp_out"):
            chosen.hook_point(loaded.model, f"blocks.{n_layers - 1}.hook_{kind}")
    except (AttributeError, IndexError, KeyError, TypeError):
        raise FeatsurvError(
            f"Adapter {chosen.name!r} cannot find the decoder blocks of model {source!r} "
            f"(type {config.model_type!r})",
            allowed=registry.names("model_adapters"),
            hint="Pass --adapter NAME, or write an adapter plugin (docs/plugins/adapters.md)") from None
    loaded.source = source
    return loaded


def load_sae(registry: Registry, spec: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedSAE:
    """Load an SAE: ``SOURCE:REST`` names the source; otherwise the first source that recognises it."""
    path = resolve(spec)
    head, sep, rest = path.partition(":")
    if sep and head in registry.items["sae_sources"]:
        source = registry.get("sae_sources", head)
        path = rest
    else:
        source = next((s for s in registry.all("sae_sources") if s.can_load(path)), None)
    if source is None:
        raise FeatsurvError(
            f"No SAE source recognises {spec!r}",
            allowed=[f"{s.name}: {s.description}" for s in registry.all("sae_sources")],
            hint="Pass a sae-lens directory or RELEASE:SAE_ID; `featsurv presets` lists known pairings")
    sae = source.load(path, device=device, dtype=dtype)
    sae.spec = spec
    return sae


def dataset_source(registry: Registry, spec: str) -> Any:
    """The source named by a ``NAME:`` prefix, else the first that recognises the spec."""
    head, sep, _ = spec.partition(":")
    if sep and head in registry.items["datasets"]:
        return registry.get("datasets", head)
    for source in registry.all("datasets"):
        if source.can_load(spec):
            return source
    raise FeatsurvError(
        f"No dataset source recognises {spec!r}",
        allowed=[f"{s.name}: {s.description}" for s in registry.all("datasets")],
        hint="Pass a .txt/.jsonl file, hf:NAME[:CONFIG[:SPLIT]], or featsurv:heldout")
