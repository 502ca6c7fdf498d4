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


def evaluate_gate(summary: dict[str, Any], min_survival: float | None = 0.9,
                  max_ppl_change: float | None = None) -> list[GateLine]:
    """One :class:`GateLine` per entry of ``summary["results"]``, in order."""
    from .results import check_summary

    results = check_summary(summary).get("results") or []
    if not results:
        raise FeatsurvError("This result holds no configurations to gate (summary.json has no results)",
                            hint="Run `featsurv audit` with at least one compressor configuration")
    lines = []
    for res in results:
        surv, ppl = _num(res.get("survived")), _num(res.get("perplexity_change"))
        reasons, ok = [], True
        if min_survival is None:
            reasons.append("survived " + ("n/a" if surv is None else f"{surv:.2%}") + " (not gated)")
        elif surv is None:
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


def run_gate(result_dir: Any, min_survival: float | None = 0.9, max_ppl_change: float | None = None,
             watch: Any = None, min_watched_survival: float = 1.0) -> tuple[bool, list[GateLine]]:
    """Load a result directory or a sweep directory (verified against its manifests) and gate it:
    ``(all_passed, lines)``.

    A missing, incomplete or damaged directory raises FeatsurvError naming the file. ``watch`` (a
    watch file or list, see featsurv.watch) adds one line per configuration that fails when fewer
    than ``min_watched_survival`` of the watched features survived; with a watch list and neither
    ``min_survival`` nor ``max_ppl_change``, only the watch list is gated.
    """
    from .results import load_run
    from .sweep.store import is_sweep_dir, sweep_summary

    sweep = is_sweep_dir(result_dir)
    if sweep:  # a `featsurv sweep` directory: every piece, verified
        summary = sweep_summary(result_dir)
    else:
        summary = load_run(result_dir, features=False).summary
    gated = watch is None or min_survival is not None or max_ppl_change is not None
    lines = evaluate_gate(summary, min_survival, max_ppl_change) if gated else []
    if watch is not None:
        if sweep:
            raise FeatsurvError(f"--watch gates a run directory; {str(result_dir)!r} is a sweep directory",
                                hint="Pass one of the sweep's run folders to gate its watched features")
        from .watch import watch_gate

        lines += watch_gate(result_dir, watch, min_watched_survival, summary)
    return all(line.passed for line in lines), lines
