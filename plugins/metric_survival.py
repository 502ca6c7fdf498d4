"""Metric ``survival``: per-feature Pearson r between FP and compressed SAE activations.

Active features fire (f > 0) on more than ``min_firing_rate`` of the audit tokens under FP.
Bands over active features: survived r > ``survived_above``, damaged r < ``damaged_below``,
blurred otherwise. A compressed feature that never changes value is ``silenced`` and gets r = 0.
The numerics (moments, merge, constant rule, bootstrap) live in ``survival_numerics`` and
``survival_bootstrap``; ``BANDS`` and the default thresholds are defined there and exported here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from featsurv import FeatsurvError, FeatureAccumulator, FeatureResult, Metric, Param, hookimpl

from . import survival_report as presentation
from .survival_numerics import BANDS, DEFAULT_DAMAGED_BELOW, DEFAULT_SURVIVED_ABOVE, SurvivalMoments, bands

#: The default band thresholds, under the names other plugins import.
SURVIVED_ABOVE, DAMAGED_BELOW = DEFAULT_SURVIVED_ABOVE, DEFAULT_DAMAGED_BELOW

__all__ = ["BANDS", "SURVIVED_ABOVE", "DAMAGED_BELOW", "bands", "Survival", "SurvivalAccumulator"]


class SurvivalAccumulator(FeatureAccumulator):
    """One accumulator of per-context moments; r comes from their pooled total, the interval
    from their blocks (one block per context, whatever the batch size)."""

    def __init__(self, d_sae: int, options: dict[str, Any]):
        self.options = options
        self.moments = SurvivalMoments(d_sae, max_blocks=256 if options.get("bootstrap", 0) > 0 else None)

    def update(self, fp, compressed, batch) -> None:
        self.moments.update(fp, compressed, batch.context_sizes)

    def result(self, fp_stats: dict[str, np.ndarray]) -> FeatureResult:
        opts = self.options
        r, _, silenced = self.moments.pearson()
        active = fp_stats["firing_rate"] > opts["min_firing_rate"]
        band = np.where(active, bands(r, opts["survived_above"], opts["damaged_below"]), None)  # inactive: no band
        n_active = int(active.sum())
        ra = r[active]
        counts = {b: int((band[active] == b).sum()) for b in BANDS}
        summary = {
            "n_features": int(r.size), "n_active": n_active,
            **{b: (counts[b] / n_active if n_active else float("nan")) for b in BANDS},
            "mean_r": float(ra.mean()) if n_active else float("nan"),
            "median_r": float(np.median(ra)) if n_active else float("nan"),
            "n_silenced": int((silenced & active).sum()),
            "counts": counts,
        }
        if self.moments.max_blocks is not None:
            from .survival_bootstrap import bootstrap_band_ci

            ci = bootstrap_band_ci(self.moments, active, opts["survived_above"], opts["damaged_below"],
                                   n_resamples=opts["bootstrap"], seed=opts["seed"])
            if ci["n_resamples"]:
                ci["excludes_estimate"] = excluded_bands(summary, ci)
            summary["ci"] = ci
        return FeatureResult(summary, {"r": r, "band": band, "active": active, "silenced": silenced})


def excluded_bands(summary: dict[str, Any], ci: dict[str, Any]) -> list[str]:
    """The bands whose point fraction lies outside its own percentile interval.

    It happens when per-feature r is unstable at the token budget (features firing on a few
    contexts): resampling spreads r further and pulls the fractions toward the middle, so the
    interval measures that instability, not the estimate's uncertainty. Said, never hidden.
    """
    out = []
    for b in BANDS:
        lo, hi = ci.get(b, (float("nan"), float("nan")))
        point = summary.get(b)
        if point is not None and lo == lo and hi == hi and not (lo - 1e-12 <= point <= hi + 1e-12):
            out.append(b)
    return out


class Survival(Metric):
    name = "survival"
    description = "Per-feature Pearson r (FP vs compressed SAE activations), bands, silenced features"
    order = 20
    feature_prefix = ""  # r, band, active, silenced: the columns of features.parquet users read first
    options = (
        Param("min_firing_rate", float, 0.001, "active feature: FP firing rate above this", minimum=0.0,
              maximum=1.0, exclusive_maximum=True, flag="min-firing-rate"),
        Param("survived_above", float, SURVIVED_ABOVE, "survived: r above this", minimum=-1.0, maximum=1.0,
              flag="survived-above"),
        Param("damaged_below", float, DAMAGED_BELOW, "damaged: r below this", minimum=-1.0, maximum=1.0,
              flag="damaged-below"),
        Param("bootstrap", int, 1000, "bootstrap resamples for confidence intervals (0: off)", minimum=0,
              maximum=100_000, flag="bootstrap"),
        Param("ppl_tolerance", float, 0.01, "'perplexity misses damage': relative perplexity change at most this",
              minimum=0.0, maximum=10.0, flag="ppl-tolerance"),
        Param("survival_target", float, 0.9, "'perplexity misses damage': survived fraction at most this",
              minimum=0.0, maximum=1.0, flag="survival-target"),
    )

    def setup(self, model, tokens, options):
        if options["damaged_below"] > options["survived_above"]:
            raise FeatsurvError(f"Bad band thresholds: damaged below {options['damaged_below']} is above "
                                f"survived above {options['survived_above']}",
                                allowed="damaged_below <= survived_above")
        return None

    def feature_accumulator(self, d_sae: int, options: dict[str, Any], fp_result: Any = None) -> FeatureAccumulator:
        return SurvivalAccumulator(d_sae, options)

    def baseline(self, fp, options):
        return {"saes": {h: {"n_active": int((s.fp_stats["firing_rate"] > options["min_firing_rate"]).sum())}
                         for h, s in fp.hooks.items()}}

    def entry(self, entry, outcome, baseline, options):
        res = outcome.features.get(options["hook"], {}).get(self.name)
        if res is None:
            return None
        fields = dict(res.summary)
        change = entry.get("perplexity_change")
        if isinstance(change, (int, float)):
            fields["perplexity_misses_damage"] = bool(
                change <= options["ppl_tolerance"] and res.summary["survived"] <= options["survival_target"])
        return fields

    def columns(self):
        return presentation.columns()

    def row_flags(self, entry):
        return presentation.row_flags(entry)

    def row_notes(self, entry):
        return presentation.row_notes(entry)

    def text(self, summary):
        return presentation.text(summary)

    def report_sections(self, run):
        return presentation.report_sections(run)


@hookimpl
def register_metrics(register):
    register(Survival())
