"""Quality gate on a finished audit: fail a CI job when compression damages too many features.

A configuration (one entry of ``summary["results"]``, i.e. one configuration at one hook)
passes when its survived fraction is at least ``min_survival`` and, when ``max_ppl_change`` is
given, its relative perplexity change is at most ``max_ppl_change``. A missing value fails
(no active features, perplexity not measured): a gate never passes on data it does not have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import FeatsurvError


@dataclass
class GateLine:
    """The verdict on one configuration."""

    label: str
    hook: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    survived: float | None = None
    perplexity_change: float | None = None

    def text(self, show_hook: bool = True) -> str:
        name = f"{self.label} @ {self.hook}" if show_hook and self.hook else self.label
        return f"{'PASS' if self.passed else 'FAIL'}  {name}: " + "; ".join(self.reasons)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def evaluate_gate(summary: dict[str, Any], min_survival: float = 0.9,
                  max_ppl_change: float | None = None) -> list[GateLine]:
    """One :class:`GateLine` per entry of ``summary["results"]``, in order."""
    results = summary.get("results") or []
    if not results:
        raise FeatsurvError("This result holds no configurations to gate (summary.json has no results)",
                            hint="Run `featsurv audit` with at least one compressor configuration")
    lines = []
    for res in results:
        surv, ppl = _num(res.get("survived")), _num(res.get("perplexity_change"))
        reasons, ok = [], True
        if surv is None:
            ok = False
            reasons.append("survived fraction unknown (no active features?)")
        elif surv < min_survival:
            ok = False
            reasons.append(f"survived {surv:.2%} < {min_survival:.2%}")
        else:
            reasons.append(f"survived {surv:.2%} >= {min_survival:.2%}")
        if max_ppl_change is not None:
            if ppl is None:
                ok = False
                reasons.append("perplexity change not measured")
            elif ppl > max_ppl_change:
                ok = False
                reasons.append(f"perplexity change {ppl:+.2%} > {max_ppl_change:+.2%}")
            else:
                reasons.append(f"perplexity change {ppl:+.2%} <= {max_ppl_change:+.2%}")
        elif ppl is not None:
            reasons.append(f"perplexity change {ppl:+.2%} (not gated)")
        if res.get("perplexity_misses_damage"):
            reasons.append("perplexity misses damage")
        lines.append(GateLine(str(res.get("label", "?")), str(res.get("hook") or ""), ok, reasons, surv, ppl))
    return lines


def run_gate(result_dir: Any, min_survival: float = 0.9, max_ppl_change: float | None = None) -> tuple[bool, list[GateLine]]:
    """Load a result directory and gate it: ``(all_passed, lines)``. A bad directory raises FeatsurvError."""
    import json
    from pathlib import Path

    from .results import FEATURES_FILE, RUN_FILE, SUMMARY_FILE

    p = Path(result_dir)
    missing = [f for f in (RUN_FILE, SUMMARY_FILE, FEATURES_FILE) if not (p / f).is_file()]
    if not p.is_dir() or missing:
        raise FeatsurvError(
            f"{str(result_dir)!r} is not a featsurv result directory"
            + (f" (missing {', '.join(missing)})" if p.is_dir() else ""),
            hint="Pass the folder printed at the end of `featsurv audit` or `featsurv compare`")
    try:
        summary = json.loads((p / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatsurvError(f"Cannot read {str(p / SUMMARY_FILE)!r}: {exc}",
                            hint="The run may have been written by an incompatible version; re-run the audit") from None
    if not isinstance(summary, dict):
        raise FeatsurvError(f"{str(p / SUMMARY_FILE)!r} does not hold a featsurv summary")
    from .schema import version_of

    version_of(summary, str(p / SUMMARY_FILE))  # a newer schema's numbers may mean something else
    lines = evaluate_gate(summary, min_survival, max_ppl_change)
    return all(line.passed for line in lines), lines
