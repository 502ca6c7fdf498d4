"""Metric ``survival``: per-feature Pearson r between FP and compressed SAE activations.

Active features fire (f > 0) on more than ``min_firing_rate`` of the audit tokens under FP.
Bands over active features: survived r > ``survived_above``, damaged r < ``damaged_below``,
blurred otherwise. A compressed feature that never changes value is ``silenced`` and gets r = 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from featsurv import FeatureAccumulator, FeatureResult, Metric, hookimpl

BANDS = ("survived", "blurred", "damaged")


def bands(r: np.ndarray, survived_above: float = 0.9, damaged_below: float = 0.5) -> np.ndarray:
    """Band name per feature from its r."""
    return np.where(r > survived_above, "survived", np.where(r < damaged_below, "damaged", "blurred"))


class SurvivalAccumulator(FeatureAccumulator):
    def __init__(self, d_sae: int, options: dict[str, Any]):
        from featsurv.stats import StreamingPearson

        self.pearson = StreamingPearson(d_sae)
        self.options = options
        self.blocks = None
        if options.get("bootstrap", 0) > 0:
            from featsurv.bootstrap import BlockMoments

            self.blocks = BlockMoments(d_sae)  # one block per batch of contexts

    def update(self, fp, compressed, batch) -> None:
        # one update per context: the bootstrap resamples contexts, whatever the batch size
        for fp_c, f_c in zip(fp.split(batch.context_sizes), compressed.split(batch.context_sizes)):
            if fp_c.shape[0]:
                self.pearson.update(fp_c, f_c)
                if self.blocks is not None:
                    self.blocks.update(fp_c, f_c)

    def result(self, fp_stats: dict[str, np.ndarray]) -> FeatureResult:
        opts = self.options
        r = self.pearson.r()
        active = fp_stats["firing_rate"] > opts.get("min_firing_rate", 0.001)
        band = bands(r, opts.get("survived_above", 0.9), opts.get("damaged_below", 0.5))
        silenced = self.pearson.constant_y()
        n_active = int(active.sum())
        ra = r[active]
        frac = {b: (float((band[active] == b).sum()) / n_active if n_active else float("nan")) for b in BANDS}
        summary = {
            "n_features": int(r.size), "n_active": n_active, **frac,
            "mean_r": float(ra.mean()) if n_active else float("nan"),
            "median_r": float(np.median(ra)) if n_active else float("nan"),
            "n_silenced": int((silenced & active).sum()),
            "counts": {b: int((band[active] == b).sum()) for b in BANDS},
        }
        if self.blocks is not None:
            from featsurv.bootstrap import bootstrap_band_ci

            summary["ci"] = bootstrap_band_ci(
                self.blocks, active, opts.get("survived_above", 0.9), opts.get("damaged_below", 0.5),
                n_resamples=opts["bootstrap"], seed=opts.get("seed", 0))
        return FeatureResult(summary, {"r": r, "band": band, "active": active, "silenced": silenced})


class Survival(Metric):
    name = "survival"
    description = "Per-feature Pearson r (FP vs compressed SAE activations), bands, silenced features"

    def feature_accumulator(self, d_sae: int, options: dict[str, Any]) -> FeatureAccumulator:
        return SurvivalAccumulator(d_sae, options)


@hookimpl
def register_metrics(register):
    register(Survival())
