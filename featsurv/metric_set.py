"""The metrics of one run: which run, their parsed options, and calls into each in turn.

The host never names a metric: everything a run measures, stores and shows comes from what the
selected metrics declare (``Metric.options``, ``columns``...) and return. A metric runs when it
is ``default`` or was asked for (``--metric NAME`` or its ``enable_flag``).
"""
from __future__ import annotations

from typing import Any, Iterable

from .base import FeatureResult, Metric
from .errors import FeatsurvError, unknown
from .plugins import Registry


def metric_option_defaults(metric: Metric) -> dict[str, Any]:
    return {p.name: p.default for p in metric.options}


def parse_metric_options(registry: Registry, raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate ``{metric: {option: value}}`` against what each metric declares."""
    out: dict[str, dict[str, Any]] = {}
    for name, values in raw.items():
        metric = registry.get("metrics", name)
        declared = {p.name: p for p in metric.options}
        for key, value in values.items():
            if key not in declared:
                raise FeatsurvError(f"Unknown option {key!r} of metric {name!r}", allowed=sorted(declared) or "none",
                                    hint="Run `featsurv plugins` to see each metric's options")
            spec = declared[key]
            out.setdefault(name, {})[key] = None if value is None else spec.parse(value, f"metric {name!r}")
    return out


def parse_assignments(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["m.folds=10"]`` -> ``{"m": {"folds": "10"}}`` (``--metric-option``)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        metric, dot, option = key.strip().partition(".")
        if not sep or not dot or not metric or not option or not value.strip():
            raise FeatsurvError(f"Bad metric option {item!r}: expected METRIC.OPTION=VALUE",
                                hint="Write e.g. --metric-option predictor.folds=10")
        out.setdefault(metric, {})[option] = value.strip()
    return out


class MetricSet:
    """The selected metrics, in their declared order, with their options resolved."""

    def __init__(self, registry: Registry, enabled: Iterable[str] = (), options: dict[str, dict[str, Any]] | None = None,
                 seed: int = 0):
        enabled = list(enabled)
        for name in enabled:
            registry.get("metrics", name)  # unknown names fail here, before any work
        chosen = [m for m in registry.all("metrics") if m.default or m.name in enabled]
        self.metrics: list[Metric] = sorted(chosen, key=lambda m: (m.order, m.name))
        self.enabled = set(enabled)
        parsed = parse_metric_options(registry, options or {})
        self.values = {m.name: {**metric_option_defaults(m), **parsed.get(m.name, {})} for m in self.metrics}
        self.seed = seed
        self.derived: dict[str, dict[str, Any]] = {}

    def __iter__(self):
        return iter(self.metrics)

    def options(self, metric: Metric) -> dict[str, Any]:
        """What a metric's hooks receive: the run-wide seed, its own options, its derived settings."""
        return {"seed": self.seed, "metric_options": self.values, **self.values.get(metric.name, {}),
                **self.derived.get(metric.name, {})}

    def setup(self, model: Any, tokens: Any) -> dict[str, dict[str, Any]]:
        """Each metric's derived settings (kept apart from its options, recorded in run.json)."""
        self.derived = {name: dict(d) for name, d in self.collect("setup", model, tokens).items()}
        return self.derived

    def record(self) -> dict[str, dict[str, Any]]:
        """The options of every metric that ran, for run.json."""
        return {name: dict(values) for name, values in self.values.items()}

    def get(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise unknown("metric", name, [m.name for m in self.metrics])

    # ------------------------------------------------------------------ measurement
    def collect(self, method: str, *args: Any) -> dict[str, Any]:
        """``{name: result}`` of calling ``method`` on every metric, skipping None results."""
        out = {}
        for m in self.metrics:
            res = getattr(m, method)(*args, self.options(m))
            if res is not None:
                out[m.name] = res
        return out

    def feature_accumulators(self, d_sae: int, fp_results: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for m in self.metrics:
            if m.name in fp_results:
                acc = m.feature_accumulator(d_sae, self.options(m), fp_result=fp_results[m.name])
            else:
                acc = m.feature_accumulator(d_sae, self.options(m))
            if acc is not None:
                out[m.name] = acc
        return out

    def match_value(self, model_metrics: dict[str, Any]) -> float | None:
        """The model-level value `compare` matches (the first metric that declares one)."""
        for m in self.metrics:
            value = m.match_value(model_metrics.get(m.name)) if m.match_label else None
            if value is not None:
                return value
        return None

    def can_match(self) -> bool:
        return any(m.match_label for m in self.metrics)

    def match_label(self) -> str:
        return next((m.match_label for m in self.metrics if m.match_label), "target")

    # ------------------------------------------------------------------ results
    def entry(self, base: dict[str, Any], outcome: Any, hook: str, baseline: dict[str, Any]) -> dict[str, Any]:
        """One summary entry: the host's keys, then each metric's fields in order."""
        entry = dict(base)
        extras: dict[str, Any] = {}
        for m in self.metrics:
            fields = m.entry(entry, outcome, baseline, {**self.options(m), "hook": hook})
            if fields is not None:
                entry.update(fields)
                continue
            res: FeatureResult | None = outcome.features.get(hook, {}).get(m.name)
            if res is not None and res.summary:
                extras[m.name] = res.summary
        if extras:
            entry["metrics"] = extras
        return entry

    def baseline(self, baseline: dict[str, Any], fp: Any) -> dict[str, Any]:
        """Each metric's additions to the FP baseline (deep-merged one level)."""
        for m in self.metrics:
            extra = m.baseline(fp, self.options(m))
            for key, value in (extra or {}).items():
                if isinstance(value, dict) and isinstance(baseline.get(key), dict):
                    for k2, v2 in value.items():
                        if isinstance(v2, dict) and isinstance(baseline[key].get(k2), dict):
                            baseline[key][k2].update(v2)
                        else:
                            baseline[key][k2] = v2
                else:
                    baseline[key] = value
        return baseline

    def compare(self, a: dict[str, FeatureResult], b: dict[str, FeatureResult]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.metrics:
            stats = m.compare(a, b, self.options(m))
            if stats:
                out.update(stats)
        return out

    def analyze(self, run: Any, progress: Any) -> None:
        """Run every metric's ``analyze`` on the finished run; store the results in the summary."""
        for m in self.metrics:
            if not m.default and m.name not in self.enabled:
                continue
            progress(f"analysis: {m.name}")
            res = m.analyze(run, {**self.options(m), "progress": progress})
            if res is not None:
                run.summary[m.summary_key or m.name] = res

    def feature_columns(self, name: str, per_feature: dict[str, Any]) -> dict[str, Any]:
        metric = self.get(name)
        prefix = f"{name}." if metric.feature_prefix is None else metric.feature_prefix
        return {f"{prefix}{key}": values for key, values in per_feature.items()}
