"""Metric ``overlap`` (off by default): do two compressions damage the same features?

For two configurations measured on the same tokens, SAE and hook, over the *active* features
(active is an FP property, so it is the same set for both):

- ``jaccard``: Jaccard index of the non-survived sets ``{i : r_i <= survived_above}`` (0.9);
- ``jaccard_damaged``: Jaccard index of the damaged sets ``{i : r_i < damaged_below}`` (0.5);
- ``spearman`` / ``pearson`` (with ``*_p`` p-values, scipy.stats): rank and linear correlation
  of the damage scores ``d_i = 1 - r_i``;
- the counts behind them: ``n_features`` (active features compared), ``n_nonsurvived_a``,
  ``n_nonsurvived_b``, ``n_nonsurvived_both``, ``n_nonsurvived_either`` and the same four for
  ``damaged``.

Conventions: the Jaccard index of two empty sets is undefined and reported as NaN (``null`` in
JSON): neither compression damaged anything, so there is no overlap to measure. A correlation
with fewer than two features, or with a constant damage vector, is NaN too.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Any

from featsurv import FeatsurvError, Metric, Param, hookimpl


def _jaccard(a: Any, b: Any) -> tuple[float, int, int]:
    both, either = int((a & b).sum()), int((a | b).sum())
    return (both / either if either else float("nan")), both, either


def _corr(fn: Any, a: Any, b: Any) -> tuple[float, float]:
    import numpy as np

    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn(a, b)
    return float(res[0]), float(res[1])


def overlap_stats(r_a: Any, r_b: Any, survived_above: float = 0.9, damaged_below: float = 0.5) -> dict[str, Any]:
    """Overlap of the damage two configurations do, from their r over the same active features.

    ``r_a`` and ``r_b`` are aligned by feature (same length, same order) and hold only the
    features to compare (the active ones). See the module docstring for every key.
    """
    import numpy as np
    import scipy.stats

    a = np.asarray(r_a, dtype=np.float64).ravel()
    b = np.asarray(r_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"r_a and r_b must be aligned by feature; got lengths {a.size} and {b.size}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("r_a and r_b must not contain NaN")
    ns_a, ns_b = a <= survived_above, b <= survived_above
    dm_a, dm_b = a < damaged_below, b < damaged_below
    jac, ns_both, ns_either = _jaccard(ns_a, ns_b)
    jac_d, dm_both, dm_either = _jaccard(dm_a, dm_b)
    d_a, d_b = 1.0 - a, 1.0 - b
    spearman, spearman_p = _corr(scipy.stats.spearmanr, d_a, d_b)
    pearson, pearson_p = _corr(scipy.stats.pearsonr, d_a, d_b)
    return {
        "n_features": int(a.size),
        "jaccard": jac,
        "jaccard_damaged": jac_d,
        "spearman": spearman,
        "spearman_p": spearman_p,
        "pearson": pearson,
        "pearson_p": pearson_p,
        "n_nonsurvived_a": int(ns_a.sum()),
        "n_nonsurvived_b": int(ns_b.sum()),
        "n_nonsurvived_both": ns_both,
        "n_nonsurvived_either": ns_either,
        "n_damaged_a": int(dm_a.sum()),
        "n_damaged_b": int(dm_b.sum()),
        "n_damaged_both": dm_both,
        "n_damaged_either": dm_either,
        "survived_above": survived_above,
        "damaged_below": damaged_below,
    }


def thresholds(metric_options: dict[str, Any] | None) -> tuple[float, float]:
    """The survival metric's band thresholds of a run (its defaults when absent)."""
    from .metric_survival import DAMAGED_BELOW, SURVIVED_ABOVE

    opts = (metric_options or {}).get("survival") or {}
    return float(opts.get("survived_above", SURVIVED_ABOVE)), float(opts.get("damaged_below", DAMAGED_BELOW))


def _thresholds(run: Any) -> tuple[float, float]:
    summary = run.summary or {}
    return thresholds(summary.get("metric_options") or {"survival": summary.get("options") or {}})


def labels_of(run: Any) -> list[str]:
    """The configuration labels of a run, in table order."""
    return list(dict.fromkeys(run.features["config"].astype(str).tolist()))


def aligned_r(run: Any, label_a: str, label_b: str, hook: str | None = None) -> tuple[Any, str]:
    """``(table, hook)``: per active feature, ``feature``, ``r_a`` and ``r_b`` for two configurations.

    Raises FeatsurvError (listing what exists) for an unknown label or hook, or when the
    configurations span several hooks and ``hook`` is not given.
    """
    df = run.features
    labels = labels_of(run)
    for lab in (label_a, label_b):
        if lab not in labels:
            raise FeatsurvError(f"No configuration labelled {lab!r} in this result", allowed=labels,
                                hint="Quote labels that contain spaces, e.g. \"rtn bits=6\"")
    has_hook = "hook" in df.columns
    rows_a = df[df["config"].astype(str) == label_a]
    rows_b = df[df["config"].astype(str) == label_b]
    if has_hook:
        common = [h for h in dict.fromkeys(rows_a["hook"].astype(str)) if h in set(rows_b["hook"].astype(str))]
        if hook is None:
            if len(common) != 1:
                raise FeatsurvError(
                    f"{label_a!r} and {label_b!r} share {len(common)} hooks; choose one with --hook",
                    allowed=common or ["(none)"])
            hook = common[0]
        elif hook not in common:
            raise FeatsurvError(f"Hook {hook!r} is not measured for both {label_a!r} and {label_b!r}",
                                allowed=common or ["(none)"])
        rows_a = rows_a[rows_a["hook"].astype(str) == hook]
        rows_b = rows_b[rows_b["hook"].astype(str) == hook]
    cols = ["feature", "r", "active"]
    merged = rows_a[cols].merge(rows_b[cols], on="feature", suffixes=("_a", "_b"), validate="one_to_one")
    # active is an FP property (identical for both); requiring both guards mixed tables
    merged = merged[merged["active_a"].astype(bool) & merged["active_b"].astype(bool)]
    out = merged[["feature", "r_a", "r_b"]].sort_values("feature").reset_index(drop=True)
    return out, hook or ""


def overlap_between(run: Any, label_a: str, label_b: str, hook: str | None = None) -> dict[str, Any]:
    """Overlap statistics of two configurations of a RunResult, over their active features.

    ``hook`` may be omitted when the two share exactly one hook. The bands' thresholds are the
    survival metric's options of the run (``survived_above``, ``damaged_below``; 0.9 and 0.5 by default).
    Returns ``{"a", "b", "hook", **overlap_stats(...)}``.
    """
    table, hook = aligned_r(run, label_a, label_b, hook)
    s_above, d_below = _thresholds(run)
    return {"a": label_a, "b": label_b, "hook": hook,
            **overlap_stats(table["r_a"].to_numpy(), table["r_b"].to_numpy(), s_above, d_below)}


def format_overlap(res: dict[str, Any]) -> str:
    """A readable multi-line description of one overlap result."""
    def num(v: Any, fmt: str = ".3f") -> str:
        return "n/a" if v is None or v != v else format(v, fmt)

    hook = f" @ {res['hook']}" if res.get("hook") else ""
    return "\n".join([
        f"overlap: {res.get('a', 'A')!s} vs {res.get('b', 'B')!s}{hook} ({res['n_features']} active features)",
        f"  non-survived (r <= {res['survived_above']:g}): A {res['n_nonsurvived_a']}, B {res['n_nonsurvived_b']}, "
        f"both {res['n_nonsurvived_both']}, either {res['n_nonsurvived_either']}; Jaccard {num(res['jaccard'])}",
        f"  damaged (r < {res['damaged_below']:g}):       A {res['n_damaged_a']}, B {res['n_damaged_b']}, "
        f"both {res['n_damaged_both']}, either {res['n_damaged_either']}; Jaccard {num(res['jaccard_damaged'])}",
        f"  damage score d = 1 - r: Spearman {num(res['spearman'])} (p {num(res['spearman_p'], '.2g')}), "
        f"Pearson {num(res['pearson'])} (p {num(res['pearson_p'], '.2g')})",
    ])


class Overlap(Metric):
    name = "overlap"
    description = "Jaccard overlap of non-survived/damaged features and damage-score correlation between configurations"
    order = 70
    options = (
        Param("pairs", str, "", "also store the overlap of these configuration pairs in summary.json: "
              "'A|B;C|D' by label, or 'all' (featsurv compare always compares its two)"),
    )

    def compare(self, a: dict[str, Any], b: dict[str, Any], options: dict[str, Any]) -> dict[str, Any] | None:
        """Used by `featsurv compare`: overlap of the two configurations over the active features."""
        ra, rb = a.get("survival"), b.get("survival")
        if ra is None or rb is None:
            return None
        active = ra.per_feature["active"]
        s_above, d_below = thresholds(options.get("metric_options"))
        return overlap_stats(ra.per_feature["r"][active], rb.per_feature["r"][active], s_above, d_below)

    def analyze(self, run: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        """Overlap of the pairs named by the ``pairs`` option, per shared hook point;
        keyed ``"<a> vs <b> @ <hook>"``. Nothing when ``pairs`` is empty."""
        df = run.features
        if not options.get("pairs") or df is None or len(df) == 0:
            return None
        if options["pairs"] == "all":
            pairs = list(itertools.combinations(labels_of(run), 2))
        else:
            pairs = [tuple(p.split("|", 1)) for p in options["pairs"].split(";") if "|" in p]
        hooks = list(dict.fromkeys(df["hook"].astype(str))) if "hook" in df.columns else [None]
        out: dict[str, Any] = {}
        for a, b in pairs:
            for hook in hooks:
                if hook is not None:
                    have = df[(df["hook"].astype(str) == hook) & df["config"].astype(str).isin([a, b])]
                    if set(have["config"].astype(str)) != {a, b}:
                        continue
                res = overlap_between(run, a, b, hook)
                out[f"{a} vs {b}" + (f" @ {res['hook']}" if res["hook"] else "")] = res
        return out

    def text(self, summary: dict[str, Any]) -> list[str]:
        from .overlap_report import comparison_lines

        return comparison_lines(summary.get("comparisons") or [])

    def report_sections(self, run: Any) -> list[Any]:
        from .overlap_report import report_section

        section = report_section(run)
        return [section] if section else []


@hookimpl
def register_metrics(register):
    register(Overlap())


@hookimpl
def register_commands(cli):
    from .overlap_command import overlap_cmd

    cli.add_command(overlap_cmd)
