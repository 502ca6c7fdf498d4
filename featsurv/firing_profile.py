"""Does the SAE fire on the FP model as it fired where it was trained? L0 and dead fraction.

An SAE read at the wrong hook point, or on activations scaled or centred differently from its
training, often still reconstructs much of the variance but fires far more or far fewer features
per token. Where the SAE's metadata records its L0 (sae-lens's pretrained directory ``l0``, a
sae-lens ``cfg.json``'s ``metadata.l0`` or featsurv's ``featsurv_heldout_eval``) the audit's FP
L0 (mean number of active features per token) is compared with it: outside a factor
``max_l0_ratio`` the audit stops, outside its square root a warning says so. The dead fraction
(features that never fire on the audit tokens) depends on how many tokens are read, so a dead
fraction far above the recorded one is a warning only. TopK SAEs fire exactly k features per
token wherever they are read, so their L0 is recorded but cannot tell a pairing apart.
"""
from __future__ import annotations

import math
from typing import Any

from .errors import FeatsurvError

DEAD_MARGIN = 0.25  # a dead fraction this much above the recorded one is worth a warning


def measured(fp_stats: dict[str, Any]) -> dict[str, float]:
    """FP L0 and dead fraction from the FP pass's per-feature firing rates."""
    import numpy as np

    rate = np.asarray(fp_stats["firing_rate"], dtype=np.float64)
    return {"l0": float(rate.sum()), "dead_fraction": float((rate == 0).mean()) if rate.size else 0.0}


def profile(expected: dict[str, Any], fp_stats: dict[str, Any], max_ratio: float) -> dict[str, Any]:
    """The evidence recorded in summary.json: measured and recorded L0 / dead fraction, the verdict."""
    got = measured(fp_stats)
    out: dict[str, Any] = {**got, "expected_l0": expected.get("l0"),
                           "expected_dead_fraction": expected.get("dead_fraction"),
                           "expected_from": expected.get("source"), "max_l0_ratio": max_ratio,
                           "l0_ratio": None, "verdict": "no recorded profile"}
    want = expected.get("l0")
    if isinstance(want, (int, float)) and want > 0 and math.isfinite(want):
        ratio = got["l0"] / want
        out["l0_ratio"] = ratio
        spread = max(ratio, 1 / ratio) if ratio > 0 else math.inf
        if max_ratio <= 0:
            out["verdict"] = "not checked (--max-l0-ratio 0)"
        elif spread > max_ratio:
            out["verdict"] = "stop"
        elif spread > math.sqrt(max_ratio):
            out["verdict"] = "warning"
        else:
            out["verdict"] = "ok"
    dead = expected.get("dead_fraction")
    out["dead_warning"] = bool(isinstance(dead, (int, float)) and got["dead_fraction"] > dead + DEAD_MARGIN)
    return out


def check_profile(bench: Any, hook: str, state: Any) -> dict[str, Any]:
    """Record the firing-profile evidence of one SAE; warn or stop as :func:`profile` decides."""
    o = bench.options
    expected = getattr(state.sae, "expected_profile", None) or {}
    ev = profile(expected, state.fp_stats, o.max_l0_ratio)
    if ev["l0_ratio"] is not None:
        bench.progress(f"firing profile {hook}: L0 {ev['l0']:.1f} on the audit tokens, "
                       f"{ev['expected_l0']:.1f} recorded ({ev['expected_from']}); "
                       f"dead fraction {ev['dead_fraction']:.3f}")
    if ev["verdict"] == "stop":
        raise FeatsurvError(
            f"SAE {state.sae.spec!r} fires {ev['l0']:.1f} features per token at {hook}, but its metadata "
            f"records an L0 of {ev['expected_l0']:.1f} ({ev['expected_from']}): {ev['l0_ratio']:.2f}x, beyond "
            f"the allowed factor {o.max_l0_ratio:g}. The SAE most likely reads the wrong hook point, or "
            "activations scaled, centred or tokenized differently from its training",
            hint=("Check --hook, --bos/--no-bos and --center-activations; pass --max-l0-ratio 0 to audit "
                  "anyway"))
    if ev["verdict"] == "warning":
        bench.progress(f"warning: SAE {state.sae.spec} fires {ev['l0_ratio']:.2f}x the L0 its metadata records "
                       f"at {hook}: check the pairing")
    if ev["dead_warning"]:
        bench.progress(f"warning: {ev['dead_fraction']:.1%} of SAE {state.sae.spec}'s features never fire on the "
                       f"{bench.tokens.n_tokens} audit tokens at {hook} (its metadata records "
                       f"{ev['expected_dead_fraction']:.1%}); more tokens, or the pairing, may explain it")
    return ev
