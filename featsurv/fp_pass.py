"""The FP pass: once per audit, every hook point read in the same forward pass.

Per hook point it keeps the FP features (sparse, per batch) for every later configuration, the
FP statistics (firing rate, mean, peak), the SAE's explained variance, each metric's FP
accumulator, and checks that activations are finite. Then the fit check.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .errors import FeatsurvError
from .fit_check import NeighbourFit, check_fit
from .heap import release_freed_memory
from .metric_set import MetricSet
from .passes import run_pass
from .stats import ExplainedVariance, FeatureStats, SparseDecode
from .workbench import Workbench


@dataclass
class FPView:
    """What metrics' ``baseline`` hooks see: FP model metrics and the hook states."""

    model_metrics: dict[str, Any]
    hooks: dict[str, Any]


def _csr(crow: Any, col: Any, values: Any, shape: Any) -> Any:
    """A CSR tensor from its parts, without torch's beta-support warning or invariant checks."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def sparse(f: Any) -> Any:
    """FP features of one batch, kept as a CSR matrix (they are mostly zeros).

    Its indices are int32 when they fit (8 bytes per stored value instead of 12; ``to_dense`` and
    ``@`` accept them and give the same values)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        t = f.detach().float().to_sparse_csr()
    if t.values().numel() < 2 ** 31 and t.shape[-1] < 2 ** 31:
        t = _csr(t.crow_indices().int(), t.col_indices().int(), t.values(), t.shape)
    return t


def pack(batches: list[Any]) -> list[Any]:
    """The same CSR batches as views into one buffer per part (row offsets, columns, values).

    Each batch's CSR was allocated between the pass's temporaries, which pins the heap around it;
    packed, the heap's freed pages can be handed back (:func:`featsurv.heap.release_freed_memory`)
    and the cache is one allocation. Values and indices are unchanged.
    """
    import torch

    if len(batches) < 2:
        return list(batches)
    parts = []
    for get in (lambda b: b.crow_indices(), lambda b: b.col_indices(), lambda b: b.values()):
        pieces = [get(b) for b in batches]
        parts.append(torch.cat(pieces).split([p.numel() for p in pieces]))  # views into one buffer
    return [_csr(crow, col, val, b.shape) for b, crow, col, val in zip(batches, *parts)]


class FPCollector:
    """The per-hook-point state the FP pass fills."""

    def __init__(self, bench: Workbench, metrics: MetricSet):
        self.bench = bench
        self.stats = {h: FeatureStats(s.sae.d_sae) for h, s in bench.hooks.items()}
        self.ev = {h: ExplainedVariance(s.sae.d_in) for h, s in bench.hooks.items()}
        self.decode = {h: SparseDecode(s.sae) for h, s in bench.hooks.items()}
        self.accs = {h: metrics.collect("fp_accumulator", s.sae.d_sae) for h, s in bench.hooks.items()}
        self.finite: dict[str, Any] = {}  # hook point -> a bool tensor on the device: read once, in finish

    @property
    def nonfinite(self) -> set[str]:
        """The hook points where some FP activation was NaN or inf (reading it waits for the device)."""
        return {h for h, ok in self.finite.items() if not bool(ok)}

    def consume(self, hook: str, x: Any, f: Any, batch: Any) -> None:
        import torch

        state = self.bench.hooks[hook]
        ok = torch.isfinite(x).all()
        self.finite[hook] = ok if hook not in self.finite else self.finite[hook] & ok
        fp = sparse(f)  # stays on the device of the features
        self.ev[hook].update(x, self.decode[hook](f, fp))
        self.stats[hook].update(fp)  # from the stored values only
        state.fp_batches.append(fp)
        for acc in self.accs[hook].values():
            acc.update(f, batch)

    def finish(self) -> None:
        nonfinite = self.nonfinite
        if nonfinite:
            raise FeatsurvError(
                f"The FP model's activations are not finite (NaN or inf) at {', '.join(sorted(nonfinite))}: "
                "nothing measured against them would mean anything",
                hint="Check the model's weights (a NaN or inf in them), or load it in float32 (--dtype float32)")
        for hook, state in self.bench.hooks.items():
            state.fp_batches[:] = pack(state.fp_batches)
            state.fp_stats = self.stats[hook].result()
            state.explained_variance = self.ev[hook].result()
            state.fp_results = {name: acc.result() for name, acc in self.accs[hook].items()}


def fp_pass(bench: Workbench, metrics: MetricSet) -> dict[str, Any]:
    """Run the FP pass and the fit check; return the baseline (summary.json ``baseline``)."""
    t0 = time.perf_counter()
    tokens = bench.tokens
    collector = FPCollector(bench, metrics)
    fit = NeighbourFit(bench)
    model_accs = metrics.collect("model_accumulator")
    bench.progress(f"FP pass over {tokens.n_contexts} contexts ({tokens.n_tokens} kept tokens)")
    run_pass(bench, tokens, list(bench.hooks), model_accs, collector.consume, "FP pass",
             extra_hooks=fit.extra_hooks, on_acts=fit.on_acts)
    collector.finish()
    release_freed_memory()  # the pass's temporaries, no longer pinned by the cache (see pack)
    model_metrics = {name: acc.result() for name, acc in model_accs.items()}
    model_metrics.update(metrics.collect("evaluate", bench.loaded, tokens))
    bench.timed("fp_pass", t0)
    check_fit(bench, fit.results())
    baseline = {
        "n_tokens": tokens.n_tokens, "n_contexts": tokens.n_contexts, "context": tokens.context,
        "prepend_bos": tokens.prepend_bos, "metrics": model_metrics,
        "saes": {h: {"spec": s.sae.spec, "architecture": s.sae.architecture, "d_in": s.sae.d_in,
                     "model_name": s.sae.model_name, "neuronpedia_id": s.sae.neuronpedia_id, "d_sae": s.sae.d_sae,
                     "explained_variance": s.explained_variance, "fit": s.fit}
                 for h, s in bench.hooks.items()},
    }
    return metrics.baseline(baseline, FPView(model_metrics, bench.hooks))
