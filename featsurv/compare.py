"""`featsurv compare A B`: match B's knob to A's perplexity by bisection, then compare features."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .audit import AuditOptions, AuditSession
from .errors import FeatsurvError
from .results import RunResult, check_out_dir
from .runs import assemble, finish


def bisect_knob(session: AuditSession, name: str, base: dict[str, Any], knob: str, lo: float, hi: float,
                target: float, steps: int, rtol: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Bisection of ``knob`` on [lo, hi] toward perplexity ``target``; the closest step wins.

    Each step measures perplexity only (no SAE work). Stops after ``steps`` steps, when the
    relative gap falls below ``rtol``, or (integer knobs) when the interval is exhausted.
    """
    compressor = session.registry.get("compressors", name)
    spec = {p.name: p for p in compressor.params}[knob]
    integer = spec.type is int
    harder_up = compressor.knob_increases_compression
    path: list[dict[str, Any]] = []
    tried: set[float] = set()
    for _ in range(steps):
        mid: float = (lo + hi) / 2
        if integer:
            mid = int(round(mid))
            if mid in tried:
                break
        tried.add(mid)
        params = {**base, knob: spec.parse(mid if integer else float(mid), name)}
        ppl = session.run(name, params, features=False).perplexity
        gap = ppl / target - 1.0 if math.isfinite(ppl) else float("inf")  # NaN/inf: broken, too damaging
        path.append({"params": params, "perplexity": ppl, "relative_gap": gap})
        session.progress(f"  bisection {knob}={mid:g}: perplexity {ppl:.4g} (target {target:.4g}, gap {gap:+.2%})")
        if abs(gap) <= rtol:
            break
        too_damaging = not ppl <= target
        if too_damaging == harder_up:
            hi = mid
        else:
            lo = mid
    finite = [step for step in path if math.isfinite(step["relative_gap"])]
    if not finite:
        raise FeatsurvError(f"No setting of {knob!r} tried on its search range gave a finite perplexity",
                            hint="Pass a narrower --range LO,HI")
    best = min(finite, key=lambda step: abs(step["relative_gap"]))
    return best["params"], path


def run_compare(options: AuditOptions, a: tuple[str, dict[str, Any]], b: tuple[str, dict[str, Any]], *,
                knob: str | None = None, knob_range: tuple[float, float] | None = None, steps: int = 8,
                rtol: float = 0.005, out_dir: str | Path | None = None, analyses: tuple[str, ...] = (),
                session: AuditSession | None = None) -> RunResult:
    session = session or AuditSession(options)
    registry = session.registry
    comp_b = registry.get("compressors", b[0])
    knob = knob or comp_b.knob
    if knob is None:
        raise FeatsurvError(f"Compressor {b[0]!r} declares no knob to search",
                            hint="Pass --knob NAME naming one of its numeric parameters")
    specs = {p.name: p for p in comp_b.params}
    numeric = [n for n, p in specs.items() if p.type in (int, float)]
    if knob not in numeric:
        raise FeatsurvError(f"Unknown or non-numeric knob {knob!r} for compressor {b[0]!r}", allowed=numeric)
    lo, hi = knob_range or comp_b.knob_range or (None, None)
    if lo is None or hi is None or lo > hi:
        raise FeatsurvError(f"Bad search range {knob_range!r} for {knob!r}", allowed="LO,HI with LO <= HI")
    for end in (lo, hi):  # both ends must be allowed values of the knob
        specs[knob].parse(int(end) if specs[knob].type is int and float(end).is_integer() else end, b[0])
    if out_dir is not None:
        check_out_dir(out_dir)  # refuse a bad --out before any work
    session.prepare()
    session.progress(f"reference {session.registry.get('compressors', a[0]).label(a[1])}")
    out_a = session.run(*a)
    session.progress(f"matching {b[0]} {knob} on [{lo:g}, {hi:g}] to perplexity {out_a.perplexity:.4g}")
    matched, path = bisect_knob(session, b[0], b[1], knob, lo, hi, out_a.perplexity, steps, rtol)
    out_b = session.run(b[0], matched)
    comparisons = []
    opts = options.metric_options()
    for hook in session.hooks:
        active = session.hooks[hook].fp_stats["firing_rate"] > options.min_firing_rate
        r_a = out_a.features[hook]["survival"].per_feature["r"][active]
        r_b = out_b.features[hook]["survival"].per_feature["r"][active]
        entry: dict[str, Any] = {"a": out_a.label, "b": out_b.label, "hook": hook, "matched_params": matched,
                                 "knob": knob, "perplexity_a": out_a.perplexity, "perplexity_b": out_b.perplexity}
        for metric in registry.all("metrics"):
            stats = metric.compare(r_a, r_b, opts)
            if stats:
                entry.update(stats)
        entry["path"] = path
        comparisons.append(entry)
    result = assemble(session, [out_a, out_b], "compare", comparisons,
                      {"compare": {"a": a[0], "a_params": a[1], "b": b[0], "knob": knob, "range": [lo, hi],
                                   "steps": steps, "rtol": rtol}})
    return finish(session, result, out_dir, "compare", analyses)
