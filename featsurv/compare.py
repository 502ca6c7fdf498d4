"""`featsurv compare A B`: match B's knob to A's model-level target by bisection, then compare features.

The target is what the first metric declaring ``match_label`` measures (perplexity with the
built-ins). With ``search_tokens`` the bisection runs on the first N audit tokens against A's
value on the same subset; the chosen setting is then measured on all tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .assembly import assemble
from .audit import AuditOptions, AuditSession
from .errors import FeatsurvError
from .results import RunResult, check_out_dir
from .runs import finish, needs_calibration


@dataclass
class Search:
    """How B's knob is searched."""

    knob: str | None
    lo: float = 0.0
    hi: float = 0.0
    steps: int = 8
    rtol: float = 0.005
    search_tokens: int | None = None


def bisect_knob(session: AuditSession, name: str, base: dict[str, Any], knob: str, lo: float, hi: float,
                target: float, steps: int, rtol: float, tokens: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Bisection of ``knob`` on [lo, hi] toward ``target``; the closest step wins.

    Each step measures model metrics only (no SAE work). Stops after ``steps`` steps, when the
    relative gap falls to ``rtol`` or below (``rtol`` 0: never early, every step runs, as the
    reference study's loop does), or (integer knobs) when the interval is exhausted. A value below
    the target moves toward more compression; one equal to it or above, toward less.
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
        value = session.run(name, params, features=False, tokens=tokens).target
        value = float("nan") if value is None else value
        gap = value / target - 1.0 if math.isfinite(value) else float("inf")  # NaN/inf: broken, too damaging
        path.append({"params": params, session.metrics.match_label(): value, "relative_gap": gap})
        session.progress(f"  bisection {knob}={mid:g}: {value:.4g} (target {target:.4g}, gap {gap:+.2%})")
        if rtol > 0 and abs(gap) <= rtol:
            break
        if (not value < target) == harder_up:
            hi = mid
        else:
            lo = mid
    finite = [step for step in path if math.isfinite(step["relative_gap"])]
    if not finite:
        raise FeatsurvError(f"No setting of {knob!r} tried on its search range gave a finite value",
                            hint="Pass a narrower --range LO,HI")
    return min(finite, key=lambda step: abs(step["relative_gap"]))["params"], path


def plan_search(session: AuditSession, b: tuple[str, dict[str, Any]], knob: str | None,
                knob_range: tuple[float, float] | None, steps: int, rtol: float, search_tokens: int | None) -> Search:
    """Validate B's knob and range before any work (None knob: B's parameters leave nothing to search)."""
    comp_b = session.compressor(b[0])
    knob = knob or comp_b.search_knob({**{p.name: p.default for p in comp_b.params}, **b[1]})
    if steps < 1:
        raise FeatsurvError(f"Bad --steps {steps}", allowed="a whole number of 1 or more")
    if not (math.isfinite(rtol) and rtol >= 0):
        raise FeatsurvError(f"Bad --rtol {rtol}", allowed="a finite number of 0 or more")
    if search_tokens is not None and search_tokens < 1:
        raise FeatsurvError(f"Bad --search-tokens {search_tokens}", allowed="a whole number of 1 or more")
    if knob is None:
        return Search(None)
    specs = {p.name: p for p in comp_b.params}
    numeric = [n for n, p in specs.items() if p.type in (int, float)]
    if knob not in numeric:
        raise FeatsurvError(f"Unknown or non-numeric knob {knob!r} for compressor {b[0]!r}", allowed=numeric)
    lo, hi = knob_range or comp_b.knob_range or (None, None)
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise FeatsurvError(f"Bad search range {knob_range!r} for {knob!r}", allowed="LO,HI with LO <= HI")
    for end in (lo, hi):  # both ends must be allowed values of the knob
        specs[knob].parse(int(end) if specs[knob].type is int and float(end).is_integer() else end, b[0])
    return Search(knob, lo, hi, steps, rtol, search_tokens)


def search_subset(session: AuditSession, search: Search) -> Any:
    """The first ``search_tokens`` audit tokens (whole contexts), or None for all of them."""
    if search.search_tokens is None:
        return None
    tokens = session.tokens
    n_ctx = max(1, min(tokens.n_contexts, search.search_tokens // tokens.context))
    return tokens.split(n_ctx)[0] if n_ctx < tokens.n_contexts else None


def match(session: AuditSession, a: tuple[str, dict[str, Any]], b: tuple[str, dict[str, Any]], search: Search,
          target_full: float) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """B's parameters matched to A's target (on the search subset when one is set)."""
    if search.knob is None:
        session.progress(f"{b[0]}: no knob left to search with these parameters; measured as given")
        return dict(b[1]), [], target_full
    subset = search_subset(session, search)
    target = target_full if subset is None else session.run(*a, features=False, tokens=subset).target
    session.progress(f"matching {b[0]} {search.knob} on [{search.lo:g}, {search.hi:g}] to "
                     f"{session.metrics.match_label()} {target:.4g}"
                     + (f" on the first {subset.n_tokens} tokens" if subset is not None else ""))
    matched, path = bisect_knob(session, b[0], b[1], search.knob, search.lo, search.hi, target,
                                search.steps, search.rtol, subset)
    return matched, path, target


def run_compare(options: AuditOptions, a: tuple[str, dict[str, Any]], b: tuple[str, dict[str, Any]], *,
                knob: str | None = None, knob_range: tuple[float, float] | None = None, steps: int = 8,
                rtol: float = 0.005, search_tokens: int | None = None, out_dir: str | Path | None = None,
                session: AuditSession | None = None) -> RunResult:
    session = session or AuditSession(options)
    if not session.metrics.can_match():
        raise FeatsurvError("featsurv compare matches B to A on a model-level measure, and none of the metrics "
                            "that run provides one", hint="Enable the perplexity metric plugin (or one that "
                            "declares match_label), or use `featsurv audit` with both compressors")
    search = plan_search(session, b, knob, knob_range, steps, rtol, search_tokens)
    if out_dir not in (None, False):
        check_out_dir(out_dir)  # refuse a bad --out before any work
    # A, at most `steps` bisection steps (and A on the search subset), then B: ETA is an upper bound
    session.progress.plan(2 + (search.steps + bool(search.search_tokens) if search.knob else 0))
    session.prepare(needs_calibration(session, [a, b]))
    session.progress(f"reference {session.compressor(a[0]).label(a[1])}")
    out_a = session.run(*a)
    matched, path, target = match(session, a, b, search, out_a.target)
    session.progress.plan(session.progress.meter.current + 1)  # the search is over: B remains
    out_b = session.run(b[0], matched)
    comparisons = []
    for hook in session.hooks:
        label = session.metrics.match_label()
        entry: dict[str, Any] = {"a": out_a.label, "b": out_b.label, "hook": hook, "matched_params": matched,
                                 "knob": search.knob, "matched_on": label, f"{label}_a": out_a.target,
                                 f"{label}_b": out_b.target}
        if search.search_tokens:
            entry[f"search_{label}_a"] = target
        entry.update(session.metrics.compare(out_a.features[hook], out_b.features[hook]))
        entry["path"] = path
        comparisons.append(entry)
    result = assemble(session, [out_a, out_b], "compare", comparisons,
                      {"compare": {"a": a[0], "a_params": a[1], "b": b[0], "knob": search.knob,
                                   "range": [search.lo, search.hi] if search.knob else None, "steps": steps,
                                   "rtol": rtol, "search_tokens": search_tokens}})
    return finish(session, result, out_dir, "compare")
