"""One configuration: compress, transform, one forward pass over the audit tokens, restore.

The FP weights are snapshotted before ``compress`` and written back (and every target synced)
in a ``finally``, and the compressor's ``transform`` is always exited, whatever happens: the
model is full precision again after every configuration, failed or not. A configuration may be
split into groups of weight matrices (a per-group plan, a restricted scope): ``compress`` is then
called once per group with that group's parameters, so every compressor takes part unchanged.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from .base import Compressor, FeatureResult
from .dense_fp import DenseFP
from .heap import release_freed_memory
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


@dataclass
class Group:
    """Part of a configuration: the weight matrices named in ``targets``, compressed with ``params``
    (merged over the configuration's own). A plan or a restricted scope is a list of groups;
    matrices in no group stay full precision."""

    name: str
    targets: frozenset[str]
    params: dict[str, Any] = field(default_factory=dict)


def split_targets(targets: list[Any], params: dict[str, Any],
                  groups: list[Group] | None) -> list[tuple[list[Any], dict[str, Any]]]:
    """``[(targets, params)]`` to compress: every target with ``params`` (no groups), or one part per group."""
    if groups is None:
        return [(targets, dict(params))]
    from .errors import FeatsurvError

    known = {t.name for t in targets}
    seen: dict[str, str] = {}
    for g in groups:
        for name in g.targets:
            if name not in known:
                raise FeatsurvError(f"Group {g.name!r} names weight matrix {name!r}, which is not in the scope",
                                    hint="Build groups from this model's weight matrices (--by, --groups)")
            if name in seen:
                raise FeatsurvError(f"Weight matrix {name!r} is in two groups, {seen[name]!r} and {g.name!r}",
                                    hint="Give each weight matrix at most one group")
            seen[name] = g.name
    return [([t for t in targets if t.name in g.targets], {**params, **g.params}) for g in groups]


@contextlib.contextmanager
def compressed(bench: Workbench, compressor: Compressor, params: dict[str, Any], groups: list[Group] | None = None,
               label: str | None = None):
    """The model compressed with ``params`` inside the block, full precision again after it.

    With ``groups``, ``compress`` is called once per group on that group's matrices with that
    group's parameters (and ``transform`` entered per group); the rest stays full precision.
    """
    import torch

    loaded = bench.loaded
    parts = split_targets(loaded.adapter.compressible_weights(loaded.model, bench.options.scope), params, groups)
    if groups is not None:
        parts = [(ts, p) for ts, p in parts if ts]
    targets = [t for ts, _ in parts for t in ts]
    snapshot = [t.weight.detach().clone() for t in targets]
    in_groups = f" in {len(parts)} groups" if groups is not None else ""
    bench.progress(f"{label or compressor.label(params)}: compressing {len(targets)} weight matrices{in_groups}")
    try:
        torch.manual_seed(bench.options.seed)
        with torch.no_grad():
            for ts, p in parts:
                compressor.compress(ts, dict(p))
            for t in targets:
                t.sync()
        with contextlib.ExitStack() as stack:
            for ts, p in parts:
                stack.enter_context(compressor.transform(loaded, ts, dict(p)) or contextlib.nullcontext())
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
        self.dense = {h: DenseFP() for h in bench.hooks}

    def consume(self, hook: str, x: Any, f: Any, batch: Any) -> None:
        state = self.bench.hooks[hook]
        fp = self.dense[hook].dense(state.fp_batches[batch.index], f.device)
        f = f.detach().float()
        for acc in self.accs[hook].values():
            acc.update(fp, f, batch)

    def results(self) -> dict[str, dict[str, FeatureResult]]:
        return {h: {name: acc.result(self.bench.hooks[h].fp_stats) for name, acc in accs.items()}
                for h, accs in self.accs.items()}


def run_configuration(bench: Workbench, metrics: MetricSet, compressor: Compressor, params: dict[str, Any],
                      features: bool = True, tokens: Any = None, groups: list[Group] | None = None,
                      label: str | None = None) -> Outcome:
    """Measure one configuration (``features=False``: model metrics only, as in a bisection step,
    optionally on a subset of the audit ``tokens``; ``groups``: see :func:`compressed`)."""
    t0 = time.perf_counter()
    tokens = tokens if tokens is not None else bench.tokens
    label = label or compressor.label(params)
    with compressed(bench, compressor, params, groups, label):
        model_accs = metrics.collect("model_accumulator")
        feed = FeatureFeed(bench, metrics) if features else None
        run_pass(bench, tokens, list(bench.hooks) if features else [], model_accs,
                 feed.consume if feed else None, label)
        model_metrics = {name: acc.result() for name, acc in model_accs.items()}
        model_metrics.update(metrics.collect("evaluate", bench.loaded, tokens))
    results = feed.results() if feed else {}
    feed = None  # the accumulators (per-context moments, top-k pools) go before the heap is trimmed
    release_freed_memory()
    outcome = Outcome(compressor.name, dict(params), label, model_metrics, results)
    outcome.target = metrics.match_value(model_metrics)
    outcome.seconds = round(time.perf_counter() - t0, 3)
    bench.timed("configurations", t0)
    return outcome
