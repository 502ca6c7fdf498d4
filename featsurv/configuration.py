"""One configuration: compress, transform, one forward pass over the audit tokens, restore.

The FP weights are snapshotted before ``compress`` and written back (and every target synced)
in a ``finally``, and the compressor's ``transform`` is always exited, whatever happens: the
model is full precision again after every configuration, failed or not.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from .base import Compressor, FeatureResult
from .metric_set import MetricSet
from .passes import run_pass
from .workbench import Workbench


@dataclass
class Outcome:
    """One configuration's measurements."""

    compressor: str
    params: dict[str, Any]
    label: str
    model_metrics: dict[str, Any]
    features: dict[str, dict[str, FeatureResult]] = field(default_factory=dict)  # hook point -> metric -> result
    seconds: float = 0.0
    target: float | None = None  # the value `compare` matches (see Metric.match_label)


@contextlib.contextmanager
def compressed(bench: Workbench, compressor: Compressor, params: dict[str, Any]):
    """The model compressed with ``params`` inside the block, full precision again after it."""
    import torch

    loaded = bench.loaded
    targets = loaded.adapter.compressible_weights(loaded.model, bench.options.scope)
    snapshot = [t.weight.detach().clone() for t in targets]
    bench.progress(f"{compressor.label(params)}: compressing {len(targets)} weight matrices")
    try:
        torch.manual_seed(bench.options.seed)
        with torch.no_grad():
            compressor.compress(targets, dict(params))
            for t in targets:
                t.sync()
        with compressor.transform(loaded, targets, dict(params)) or contextlib.nullcontext():
            yield targets
    finally:
        with torch.no_grad():
            for t, w in zip(targets, snapshot):
                t.weight.copy_(w)
                t.sync()


class FeatureFeed:
    """Hands each batch's (FP, compressed) features to every metric's accumulator."""

    def __init__(self, bench: Workbench, metrics: MetricSet):
        self.bench = bench
        self.accs = {h: metrics.feature_accumulators(s.sae.d_sae, s.fp_results) for h, s in bench.hooks.items()}

    def consume(self, hook: str, x: Any, f: Any, batch: Any) -> None:
        state = self.bench.hooks[hook]
        fp = state.fp_batches[batch.index].to(f.device).to_dense()
        f = f.detach().float()
        for acc in self.accs[hook].values():
            acc.update(fp, f, batch)

    def results(self) -> dict[str, dict[str, FeatureResult]]:
        return {h: {name: acc.result(self.bench.hooks[h].fp_stats) for name, acc in accs.items()}
                for h, accs in self.accs.items()}


def run_configuration(bench: Workbench, metrics: MetricSet, compressor: Compressor, params: dict[str, Any],
                      features: bool = True, tokens: Any = None) -> Outcome:
    """Measure one configuration (``features=False``: model metrics only, as in a bisection step,
    optionally on a subset of the audit ``tokens``)."""
    t0 = time.perf_counter()
    tokens = tokens if tokens is not None else bench.tokens
    label = compressor.label(params)
    with compressed(bench, compressor, params):
        model_accs = metrics.collect("model_accumulator")
        feed = FeatureFeed(bench, metrics) if features else None
        run_pass(bench, tokens, list(bench.hooks) if features else [], model_accs,
                 feed.consume if feed else None, label)
        model_metrics = {name: acc.result() for name, acc in model_accs.items()}
        model_metrics.update(metrics.collect("evaluate", bench.loaded, tokens))
    results = feed.results() if feed else {}
    outcome = Outcome(compressor.name, dict(params), label, model_metrics, results)
    outcome.target = metrics.match_value(model_metrics)
    outcome.seconds = round(time.perf_counter() - t0, 3)
    bench.timed("configurations", t0)
    return outcome
