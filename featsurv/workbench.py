"""Loading what an audit needs: the model, one SAE per hook point, the audit (and calibration) tokens.

Everything is checked against everything else here, before the FP pass: SAE width against the
model's, hook points against the model's layers, context against the model's positions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .base import LoadedModel, LoadedSAE
from .errors import FeatsurvError
from .loading import dataset_source, load_model, load_sae
from .options import AuditOptions
from .plugins import Registry
from .progress import Progress
from .tokens import TokenSet, build_tokens

DEFAULT_CALIBRATION_TOKENS = 8192


@dataclass
class HookState:
    """One SAE at one hook point: FP features (sparse, per batch), FP statistics and fit."""

    hook: str
    sae: LoadedSAE
    fp_batches: list[Any] = field(default_factory=list)
    fp_stats: dict[str, Any] = field(default_factory=dict)
    fp_results: dict[str, Any] = field(default_factory=dict)  # metric name -> FP accumulator result
    explained_variance: float = float("nan")
    fit: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workbench:
    """A loaded audit: model, hook states and tokens, ready for the FP pass."""

    options: AuditOptions
    registry: Registry
    progress: Progress
    device: str
    loaded: LoadedModel | None = None
    hooks: dict[str, HookState] = field(default_factory=dict)
    tokens: TokenSet | None = None
    calibration: TokenSet | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, key: str, start: float) -> None:
        self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - start, 3)


def same_model(sae_model: str, *names: str) -> bool:
    """Loose match of an SAE's ``model_name`` metadata against the model's id or path."""
    want = sae_model.lower().rstrip("/").split("/")[-1]
    for name in names:
        have = str(name or "").lower().rstrip("/").split("/")[-1].split(":")[-1]
        if have and (want in have or have in want):
            return True
    return False


def read_saes(bench: Workbench) -> list[tuple[str, Any]]:
    """Load every SAE (cheap) before the model, so a bad SAE path fails before the model loads."""
    out = []
    for spec in bench.options.saes:
        bench.progress(f"loading SAE {spec}")
        out.append((spec, load_sae(bench.registry, spec, device=bench.device)))
    return out


def pair_saes(bench: Workbench, saes: list[tuple[str, Any]]) -> None:
    """One SAE per hook point, each checked against the loaded model."""
    o, loaded = bench.options, bench.loaded
    adapter, model = loaded.adapter, loaded.model
    for i, (spec, sae) in enumerate(saes):
        hook = o.hooks[i] if o.hooks else sae.hook_name
        if not hook:
            raise FeatsurvError(f"SAE {spec!r} does not say which hook point it was trained on",
                                hint="Pass --hook blocks.L.hook_resid_post (or the hook point it was trained at)")
        if o.hooks and sae.hook_name and sae.hook_name != hook:
            bench.progress(f"warning: SAE {spec} was trained at {sae.hook_name}, audited at {hook} (--hook)")
        adapter.hook_point(model, hook)  # an unknown hook point fails here
        if sae.model_name and not same_model(sae.model_name, o.model, getattr(getattr(model, "config", None), "_name_or_path", "")):
            bench.progress(f"warning: SAE {spec} says it was trained on {sae.model_name!r}, not {o.model!r}; "
                           "the fit check below tells whether it fits")
        width = adapter.hook_width(model, hook)
        if sae.d_in != width:
            raise FeatsurvError(
                f"SAE {spec!r} expects d_in={sae.d_in}, but model {o.model!r} has width {width} at {hook}",
                hint="Pair the SAE with the model it was trained on (`featsurv presets` lists known pairings)")
        if hook in bench.hooks:
            raise FeatsurvError(f"Two SAEs are given for hook point {hook!r}", hint="Give one SAE per hook point")
        bench.hooks[hook] = HookState(hook, sae)


def peek_dataset(bench: Workbench) -> None:
    """Read the dataset's first document before the model loads (a missing or undecodable file fails now)."""
    source = dataset_source(bench.registry, bench.options.dataset)
    next(iter(source.documents(bench.options.dataset)), None)


def load_tokens(bench: Workbench, calibration_tokens: int) -> None:
    """The audit contexts, then (when asked) calibration contexts cut from the stream after them."""
    o = bench.options
    first = next(iter(bench.hooks.values())).sae
    context = o.context or first.context_size or 128
    max_pos = bench.loaded.adapter.max_positions(bench.loaded.model)
    if max_pos and context > max_pos:
        raise FeatsurvError(f"Context {context} exceeds the {max_pos} positions of model {o.model!r}",
                            hint=f"Pass --context {max_pos} or less")
    bos = o.prepend_bos if o.prepend_bos is not None else (first.prepend_bos if first.prepend_bos is not None else True)
    bench.progress(f"tokenizing {o.dataset}: {o.n_tokens} tokens in contexts of {context}"
                   f"{' with BOS' if bos else ', no BOS'}"
                   + (f", plus {calibration_tokens} calibration tokens after them" if calibration_tokens else ""))
    audit_ctx = o.n_tokens // context
    docs = dataset_source(bench.registry, o.dataset).documents(o.dataset)
    tokens = build_tokens(bench.loaded.tokenizer, docs, dataset=o.dataset,
                          n_tokens=(audit_ctx + -(-calibration_tokens // context)) * context if calibration_tokens else o.n_tokens,
                          context=context, prepend_bos=bos, exclude_special=o.exclude_special, join=o.join)
    if calibration_tokens:
        bench.tokens, bench.calibration = tokens.split(audit_ctx)
    else:
        bench.tokens = tokens


def load_workbench(options: AuditOptions, registry: Registry, progress: Progress,
                   needs_calibration: bool = False) -> Workbench:
    """Load the model, SAEs and tokens of an audit and check they fit together."""
    import torch

    derived = options.validate().derived()
    bench = Workbench(options, registry, progress, derived["device"])
    t0 = time.perf_counter()
    torch.manual_seed(options.seed)
    saes = read_saes(bench)
    peek_dataset(bench)
    progress(f"loading model {options.model}")
    bench.loaded = load_model(registry, options.model, adapter=options.adapter, dtype=options.dtype,
                              device=bench.device, trust_remote_code=options.trust_remote_code,
                              require_safetensors=options.require_safetensors,
                              adapter_options=options.adapter_options, revision=options.revision)
    bench.loaded.adapter.compressible_weights(bench.loaded.model, options.scope)  # a scope it cannot take fails now
    pair_saes(bench, saes)
    calib = options.calibration_tokens or (DEFAULT_CALIBRATION_TOKENS if needs_calibration else 0)
    load_tokens(bench, calib)
    bench.timed("load", t0)
    return bench
