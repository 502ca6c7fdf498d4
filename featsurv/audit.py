"""The audit pipeline: one FP pass, then every configuration on the same model object.

Data flow: documents -> TokenSet (fixed contexts) -> FP forward pass reading every requested
hook at once -> SAE encode (FP features kept sparse, per batch) + FP statistics + fit check ->
for each configuration: snapshot weights, compress, forward, encode, stream (FP, compressed)
feature pairs into the metrics, restore weights -> summary entries and per-feature rows.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .base import Batch, FeatureResult, LoadedModel, LoadedSAE
from .errors import FeatsurvError
from .hf import parse_hook
from .loading import dataset_source, load_model, load_sae
from .plugins import Registry, get_registry
from .progress import Progress
from .tokens import TokenSet, build_tokens


def _same_model(sae_model: str, *names: str) -> bool:
    """Loose match of an SAE's ``model_name`` metadata against the model's id or path."""
    want = sae_model.lower().rstrip("/").split("/")[-1]
    for name in names:
        have = str(name or "").lower().rstrip("/").split("/")[-1].split(":")[-1]
        if have and (want in have or have in want):
            return True
    return False


def _sparse(f: Any) -> Any:
    """FP features of one batch, kept as a CSR matrix (they are mostly zeros)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return f.detach().float().cpu().to_sparse_csr()


@dataclass
class AuditOptions:
    """Everything that defines an audit (recorded in run.json)."""

    model: str
    saes: list[str]
    hooks: list[str] | None = None
    adapter: str | None = None
    dataset: str = "featsurv:heldout"
    n_tokens: int = 32768
    context: int | None = None
    prepend_bos: bool | None = None
    exclude_special: bool = True
    join: str = "eos"
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    scope: tuple[str, ...] = ("attn", "mlp")
    min_explained_variance: float = 0.5
    min_firing_rate: float = 0.001
    survived_above: float = 0.9
    damaged_below: float = 0.5
    perplexity_mode: str = "window"
    ppl_window: int | None = None  # sliding window; default min(2048, the model's positions)
    ppl_stride: int | None = None  # sliding stride; default a quarter of the window
    ppl_tolerance: float = 0.01
    survival_target: float = 0.9
    bootstrap: int = 1000
    metrics: list[str] = field(default_factory=list)
    trust_remote_code: bool = False
    center_activations: bool = False
    preset: str | None = None

    def metric_options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "min_firing_rate", "survived_above", "damaged_below", "perplexity_mode", "ppl_window",
            "ppl_stride", "ppl_tolerance", "survival_target", "seed", "bootstrap")}


@dataclass
class HookState:
    """One SAE at one hook: FP features (sparse, per batch) and FP statistics."""

    hook: str
    sae: LoadedSAE
    fp_batches: list[Any] = field(default_factory=list)
    fp_stats: dict[str, Any] = field(default_factory=dict)
    explained_variance: float = float("nan")


@dataclass
class Outcome:
    """One configuration's measurements."""

    compressor: str
    params: dict[str, Any]
    label: str
    model_metrics: dict[str, Any]
    features: dict[str, dict[str, FeatureResult]] = field(default_factory=dict)  # hook -> metric -> result
    seconds: float = 0.0

    @property
    def perplexity(self) -> float:
        return float(self.model_metrics.get("perplexity", {}).get("perplexity", float("nan")))


class AuditSession:
    """Loads once, runs the FP pass once, then measures any number of configurations."""

    def __init__(self, options: AuditOptions, registry: Registry | None = None, progress: Progress | None = None):
        self.options = options
        self.registry = registry or get_registry()
        self.progress = progress or Progress()
        self.timings: dict[str, float] = {}
        self.loaded: LoadedModel | None = None
        self.hooks: dict[str, HookState] = {}
        self.tokens: TokenSet | None = None
        self.baseline: dict[str, Any] = {}
        self._metrics = self._select_metrics()

    # ------------------------------------------------------------------ set-up
    def _select_metrics(self) -> list[Any]:
        for name in self.options.metrics:
            self.registry.get("metrics", name)  # unknown names fail here, before any work
        return [m for m in self.registry.all("metrics") if m.default or m.name in self.options.metrics]

    def _timed(self, key: str, start: float) -> None:
        self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - start, 3)

    def validate(self) -> None:
        """Check every option that needs no model, before any loading."""
        import torch

        o = self.options
        for name in ("n_tokens", "batch_size"):
            if getattr(o, name) < 1:
                raise FeatsurvError(f"Bad {name.replace('n_', '').replace('_', '-')} {getattr(o, name)}",
                                    allowed="a whole number of 1 or more")
        if o.context is not None and o.context < 2:
            raise FeatsurvError(f"Bad --context {o.context}", allowed="2 or more")
        bad_scope = set(o.scope) - {"attn", "mlp", "embed", "lm_head"}
        if bad_scope or not o.scope:
            raise FeatsurvError(f"Bad --scope {','.join(o.scope)!r}", allowed="a comma list of attn, mlp, embed, lm_head")
        if o.perplexity_mode not in ("window", "sliding"):
            raise FeatsurvError(f"Unknown perplexity mode {o.perplexity_mode!r}", allowed=["window", "sliding"])
        if (o.ppl_window is not None and o.ppl_window < 2) or (o.ppl_stride is not None and (
                o.ppl_stride < 1 or (o.ppl_window is not None and o.ppl_stride > o.ppl_window))):
            raise FeatsurvError(f"Bad sliding perplexity window {o.ppl_window} / stride {o.ppl_stride}",
                                allowed="window >= 2 and 0 < stride <= window")
        try:
            device = torch.device(o.device)
        except (RuntimeError, TypeError):
            raise FeatsurvError(f"Unknown device {o.device!r}", allowed="cpu, cuda, cuda:N, mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise FeatsurvError(f"Device {o.device!r} was asked for, but this torch has no CUDA device",
                                hint="Pass --device cpu, or install a CUDA build of torch")

    def prepare(self) -> None:
        """Load model, SAEs and tokens, check they fit, run the FP pass and the fit check."""
        import torch

        self.validate()
        o = self.options
        t0 = time.perf_counter()
        torch.manual_seed(o.seed)
        self.progress(f"loading model {o.model}")
        self.loaded = load_model(self.registry, o.model, adapter=o.adapter, dtype=o.dtype, device=o.device,
                                 trust_remote_code=o.trust_remote_code)
        model = self.loaded.model
        n_layers = len(self.loaded.adapter.layers(model))
        d_model = self.loaded.adapter.width(model)
        self.loaded.adapter.compressible_weights(model, o.scope)  # a scope this model cannot take fails now
        max_pos = self.loaded.adapter.max_positions(model)
        if o.perplexity_mode == "sliding":
            if o.ppl_window is None:
                o.ppl_window = min(2048, max_pos or 2048)
            if o.ppl_stride is None:
                o.ppl_stride = max(1, o.ppl_window // 4)
            if max_pos and o.ppl_window > max_pos:
                raise FeatsurvError(f"Sliding perplexity window {o.ppl_window} exceeds the {max_pos} positions of "
                                    f"model {o.model!r}", hint=f"Pass --ppl-window {max_pos} or less")
        if o.hooks and len(o.hooks) != len(o.saes):
            raise FeatsurvError(f"Got {len(o.hooks)} --hook values for {len(o.saes)} --sae values",
                                hint="Give one --hook per --sae, in the same order, or none to use the SAEs' metadata")
        for i, spec in enumerate(o.saes):
            self.progress(f"loading SAE {spec}")
            sae = load_sae(self.registry, spec, device=o.device)
            hook = o.hooks[i] if o.hooks else sae.hook_name
            if not hook:
                raise FeatsurvError(f"SAE {spec!r} does not say which hook it was trained on",
                                    hint="Pass --hook blocks.L.hook_resid_post (or the hook it was trained at)")
            if o.hooks and sae.hook_name and sae.hook_name != hook:
                self.progress(f"warning: SAE {spec} was trained at {sae.hook_name}, audited at {hook} (--hook)")
            parse_hook(hook, n_layers)
            if sae.model_name and not _same_model(sae.model_name, o.model, getattr(model.config, "_name_or_path", "")):
                self.progress(f"warning: SAE {spec} says it was trained on {sae.model_name!r}, not {o.model!r}; "
                              "the fit check below tells whether it fits")
            if sae.d_in != d_model:
                raise FeatsurvError(
                    f"SAE {spec!r} expects d_in={sae.d_in}, but model {o.model!r} has width {d_model} at {hook}",
                    hint="Pair the SAE with the model it was trained on (`featsurv presets` lists known pairings)")
            if hook in self.hooks:
                raise FeatsurvError(f"Two SAEs are given for hook {hook!r}", hint="Give one SAE per hook")
            self.hooks[hook] = HookState(hook, sae)
        first = next(iter(self.hooks.values())).sae
        context = o.context or first.context_size or 128
        if max_pos and context > max_pos:
            raise FeatsurvError(f"Context {context} exceeds the {max_pos} positions of model {o.model!r}",
                                hint=f"Pass --context {max_pos} or less")
        prepend_bos = o.prepend_bos if o.prepend_bos is not None else (first.prepend_bos if first.prepend_bos is not None else True)
        self.progress(f"tokenizing {o.dataset}: {o.n_tokens} tokens in contexts of {context}"
                      f"{' with BOS' if prepend_bos else ', no BOS'}")
        docs = dataset_source(self.registry, o.dataset).documents(o.dataset)
        self.tokens = build_tokens(self.loaded.tokenizer, docs, dataset=o.dataset, n_tokens=o.n_tokens,
                                   context=context, prepend_bos=prepend_bos,
                                   exclude_special=o.exclude_special, join=o.join)
        self._timed("load", t0)
        self._fp_pass()
        self._fit_check()

    def _forward(self, ids: Any) -> Any:
        return self.loaded.adapter.forward(self.loaded.model, ids.to(self.options.device))

    def _encode(self, state: HookState, acts: Any, keep: Any) -> tuple[Any, Any]:
        x = acts[keep.to(acts.device)].to(state.sae.sae.dtype if hasattr(state.sae.sae, "dtype") else acts.dtype)
        if self.options.center_activations:
            # TransformerLens's center_writing_weights convention: every write to the residual
            # stream has zero mean across d_model, so SAEs trained on it expect centred activations
            x = x - x.mean(dim=-1, keepdim=True)
        return x, state.sae.encode(x)

    def _fp_pass(self) -> None:
        import torch

        from .capture import capture
        from .stats import ExplainedVariance, FeatureStats

        t0 = time.perf_counter()
        o, tokens = self.options, self.tokens
        stats = {h: FeatureStats(s.sae.d_sae) for h, s in self.hooks.items()}
        ev = {h: ExplainedVariance(s.sae.d_in) for h, s in self.hooks.items()}
        accs = self._model_accumulators()
        n = tokens.n_batches(o.batch_size)
        self.progress(f"FP pass over {tokens.n_contexts} contexts ({tokens.n_tokens} kept tokens)")
        with torch.no_grad(), capture(self.loaded.adapter, self.loaded.model, list(self.hooks)) as acts:
            for i, (ids, keep) in enumerate(tokens.batches(o.batch_size), 1):
                logits = self._forward(ids)
                for acc in accs.values():
                    acc.update(logits, ids.to(logits.device))
                for hook, state in self.hooks.items():
                    x, f = self._encode(state, acts[hook], keep)
                    ev[hook].update(x, state.sae.decode(f))
                    stats[hook].update(f)
                    state.fp_batches.append(_sparse(f))
                self.progress.step("FP pass", i, n)
        model_metrics = {name: acc.result() for name, acc in accs.items()}
        model_metrics.update(self._evaluate())
        for hook, state in self.hooks.items():
            state.fp_stats = stats[hook].result()
            state.explained_variance = ev[hook].result()
        self.baseline = {
            "perplexity": model_metrics.get("perplexity", {}).get("perplexity"),
            "n_tokens": tokens.n_tokens,
            "n_contexts": tokens.n_contexts,
            "context": tokens.context,
            "prepend_bos": tokens.prepend_bos,
            "perplexity_mode": o.perplexity_mode,
            "metrics": model_metrics,
            "saes": {h: {"spec": s.sae.spec, "architecture": s.sae.architecture, "d_in": s.sae.d_in,
                         "model_name": s.sae.model_name, "neuronpedia_id": s.sae.neuronpedia_id,
                         "d_sae": s.sae.d_sae, "explained_variance": s.explained_variance,
                         "n_active": int((s.fp_stats["firing_rate"] > o.min_firing_rate).sum())}
                     for h, s in self.hooks.items()},
        }
        self._timed("fp_pass", t0)

    def _fit_check(self) -> None:
        o = self.options
        for hook, state in self.hooks.items():
            ev = state.explained_variance
            self.progress(f"fit check {hook}: explained variance {ev:.3f} (threshold {o.min_explained_variance})")
            if not ev >= o.min_explained_variance:
                raise FeatsurvError(
                    f"SAE {state.sae.spec!r} explains only {ev:.3f} of the variance of FP activations at "
                    f"{hook} (threshold {o.min_explained_variance}): it does not fit this model and these tokens. "
                    "Likely causes: the wrong layer or hook; a missing or extra BOS token (--bos/--no-bos); "
                    "an activation centring convention the SAE expects (SAEs trained through TransformerLens on "
                    "LayerNorm models often need --center-activations); an SAE trained on another model",
                    hint="Fix the pairing, or pass --min-explained-variance 0 to audit anyway")

    # ------------------------------------------------------------------ metrics
    def _model_accumulators(self) -> dict[str, Any]:
        opts = self.options.metric_options()
        out = {}
        for m in self._metrics:
            acc = m.model_accumulator(opts)
            if acc is not None:
                out[m.name] = acc
        return out

    def _evaluate(self) -> dict[str, Any]:
        opts = self.options.metric_options()
        out = {}
        for m in self._metrics:
            res = m.evaluate(self.loaded, self.tokens, opts)
            if res is not None:
                out[m.name] = res
        return out

    def _feature_accumulators(self, d_sae: int) -> dict[str, Any]:
        opts = self.options.metric_options()
        out = {}
        for m in self._metrics:
            acc = m.feature_accumulator(d_sae, opts)
            if acc is not None:
                out[m.name] = acc
        return out

    # ------------------------------------------------------------------ configurations
    def run(self, compressor_name: str, params: dict[str, Any], *, features: bool = True) -> Outcome:
        """Measure one configuration; FP weights are restored afterwards whatever happens."""
        import torch

        from .capture import capture

        t0 = time.perf_counter()
        o = self.options
        compressor = self.registry.get("compressors", compressor_name)
        label = compressor.label(params)
        adapter, model = self.loaded.adapter, self.loaded.model
        targets = adapter.compressible_weights(model, o.scope)
        snapshot = [t.weight.detach().clone() for t in targets]
        self.progress(f"{label}: compressing {len(targets)} weight matrices")
        try:
            torch.manual_seed(o.seed)
            compressor.compress(targets, dict(params))
            for t in targets:
                t.sync()
            accs = self._model_accumulators()
            feats = {h: self._feature_accumulators(s.sae.d_sae) for h, s in self.hooks.items()} if features else {}
            n = self.tokens.n_batches(o.batch_size)
            hooks = list(self.hooks) if features else []
            with torch.no_grad(), capture(adapter, model, hooks) as acts:
                for i, (ids, keep) in enumerate(self.tokens.batches(o.batch_size), 1):
                    logits = self._forward(ids)
                    for acc in accs.values():
                        acc.update(logits, ids.to(logits.device))
                    batch = Batch(i - 1, (i - 1) * o.batch_size, keep.sum(1).tolist(),
                                  keep.nonzero()[:, 1], ids)
                    for hook in hooks:
                        state = self.hooks[hook]
                        _, f = self._encode(state, acts[hook], keep)
                        fp = state.fp_batches[i - 1].to(f.device).to_dense()
                        f = f.detach().float()
                        for acc in feats[hook].values():
                            acc.update(fp, f, batch)
                    self.progress.step(label, i, n)
            model_metrics = {name: acc.result() for name, acc in accs.items()}
            model_metrics.update(self._evaluate())
        finally:
            with torch.no_grad():
                for t, w in zip(targets, snapshot):
                    t.weight.copy_(w)
                    t.sync()
        results = {h: {name: acc.result(self.hooks[h].fp_stats) for name, acc in accs_h.items()}
                   for h, accs_h in feats.items()}
        outcome = Outcome(compressor_name, dict(params), label, model_metrics, results)
        outcome.seconds = round(time.perf_counter() - t0, 3)
        self._timed("configurations", t0)
        return outcome

    # ------------------------------------------------------------------ results
    def summary_entries(self, outcome: Outcome) -> list[dict[str, Any]]:
        o = self.options
        base = self.baseline.get("perplexity")
        ppl = outcome.perplexity
        change = (ppl / base - 1.0) if base else float("nan")
        entries = []
        for hook, by_metric in outcome.features.items():
            surv = by_metric.get("survival")
            entry: dict[str, Any] = {"label": outcome.label, "compressor": outcome.compressor,
                                     "params": outcome.params, "hook": hook, "perplexity": ppl,
                                     "perplexity_change": change}
            if surv is not None:
                entry.update(surv.summary)
                entry["perplexity_misses_damage"] = bool(
                    change <= o.ppl_tolerance and surv.summary["survived"] <= o.survival_target)
            extras = {m: r.summary for m, r in by_metric.items() if m != "survival"}
            if extras:
                entry["metrics"] = extras
            entries.append(entry)
        return entries

    def feature_frame(self, outcome: Outcome) -> Any:
        import numpy as np
        import pandas as pd

        frames = []
        for hook, by_metric in outcome.features.items():
            state = self.hooks[hook]
            cols: dict[str, Any] = {"config": outcome.label, "compressor": outcome.compressor, "hook": hook,
                                    "feature": np.arange(state.sae.d_sae, dtype=np.int32)}
            for name, res in by_metric.items():
                for key, values in res.per_feature.items():
                    cols[key if name == "survival" else f"{name}.{key}"] = values
            cols.update(state.fp_stats)
            cols.update(state.sae.feature_stats())
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def run_record(self, command: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        from importlib import metadata

        import torch

        versions = {}
        for dist in ("featsurv", "torch", "transformers", "sae-lens", "numpy", "scipy", "scikit-learn", "lightgbm"):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                versions[dist] = None
        opts = asdict(self.options)
        opts["scope"] = list(self.options.scope)
        return {
            "command": command,
            "options": opts,
            "seed": self.options.seed,
            "device": self.options.device,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": versions,
            "plugins": [p.as_json() for p in self.registry.plugins.values()],
            "adapter": self.loaded.adapter.name if self.loaded else None,
            "timings": dict(self.timings),
            **(extra or {}),
        }
