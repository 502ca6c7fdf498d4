"""`featsurv analyze RUN [RUN2]`: the reference study's post-hoc analyses of finished runs.

For configuration A of each run (and B, the configuration it is compared with): the threshold
grid of every configuration, survival by quartile of each FP statistic, the standardized logistic
coefficients (and, with RUN2, their cross-run sign agreement), the firing-rate-decile table of A
and B, the non-survived / damaged / degraded overlap counts and Jaccard indices, and the most
disrupted features. Definitions: plugins/phase_tables.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featsurv import FeatsurvError

from . import phase_tables as T


@dataclass
class RunAnalysis:
    """The tables of one run (pandas DataFrames) and its JSON summary."""

    name: str
    a: str
    b: str | None
    hook: str
    tables: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)  # for the ROC figure


def labels_in(run: Any) -> list[str]:
    df = run.features
    if df is None or len(df) == 0 or "config" not in df.columns:
        raise FeatsurvError(f"{str(run.path)!r} holds no per-feature results (features.parquet is empty)",
                            hint="Run `featsurv audit` or `featsurv compare` with at least one configuration first")
    return list(dict.fromkeys(df["config"].astype(str).tolist()))


def default_pair(run: Any, a: str | None, b: str | None) -> tuple[str, str | None]:
    """A and B: given, else the run's comparison (featsurv compare), else its first two configurations."""
    labels = labels_in(run)
    comps = [c for c in (run.summary.get("comparisons") or []) if c.get("a") and c.get("b")]
    if a is None:
        a = str(comps[0]["a"]) if comps else labels[0]
    if b is None:
        if comps and str(comps[0]["a"]) == a:
            b = str(comps[0]["b"])
        else:
            b = next((lab for lab in labels if lab != a), None)
    for lab in (a, b):
        if lab is not None and lab not in labels:
            raise FeatsurvError(f"No configuration labelled {lab!r} in {str(run.path)!r}", allowed=labels,
                                hint="Quote labels that contain spaces, e.g. --a \"rtn bits=6\"")
    if b == a:
        raise FeatsurvError(f"--a and --b are both {a!r}", hint="Name two different configurations")
    return a, b


def pick_hook(run: Any, labels: list[str], hook: str | None) -> str:
    df = run.features
    if "hook" not in df.columns:
        return ""
    common = None
    for lab in labels:
        hooks = set(df.loc[df["config"].astype(str) == lab, "hook"].astype(str))
        common = hooks if common is None else common & hooks
    common_list = sorted(common or ())
    if hook is None:
        if len(common_list) != 1:
            raise FeatsurvError(f"The configurations share {len(common_list)} hook points; choose one with --hook",
                                allowed=common_list or ["(none)"])
        return common_list[0]
    if hook not in common_list:
        raise FeatsurvError(f"Hook {hook!r} is not measured for {', '.join(map(repr, labels))}",
                            allowed=common_list or ["(none)"])
    return hook


def rows_of(run: Any, label: str, hook: str) -> Any:
    df = run.features
    sel = df["config"].astype(str) == label
    if hook:
        sel &= df["hook"].astype(str) == hook
    return df[sel]


def thresholds_of(run: Any) -> tuple[float, float]:
    from .metric_overlap import thresholds

    summary = run.summary or {}
    return thresholds(summary.get("metric_options") or {"survival": summary.get("options") or {}})


def grid_all(run: Any, hook: str) -> Any:
    import pandas as pd

    parts = []
    for lab in labels_in(run):
        rows = rows_of(run, lab, hook)
        if len(rows):
            parts.append(T.threshold_grid(T.active_rows(rows)["r"]).assign(config=lab))
    return pd.concat(parts, ignore_index=True)


def analyze_run(run: Any, name: str, a: str | None = None, b: str | None = None, hook: str | None = None,
                top: int = 20, folds: int = 5) -> RunAnalysis:
    """Every table of one run for configurations A (and B)."""
    a, b = default_pair(run, a, b)
    hook = pick_hook(run, [a] + ([b] if b else []), hook)
    s, d = thresholds_of(run)
    res = RunAnalysis(name, a, b, hook)
    act_a = T.active_rows(rows_of(run, a, hook))
    stats = T.statistics_frame(act_a, s)
    coefs = T.coefficients(stats, folds)
    res.scores[a] = (stats["survived"].to_numpy(), coefs.pop("_score", None))
    res.tables["threshold_grid"] = grid_all(run, hook)
    res.tables["quartiles"] = T.survival_by_quartile(stats)
    res.tables["top_disrupted"] = T.top_disrupted(act_a, top, s, d).assign(config=a)
    res.summary = {"run": str(run.path), "a": a, "b": b, "hook": hook, "survived_above": s, "damaged_below": d,
                   "n_active": int(len(act_a)), "predictor": coefs}
    if b is not None:
        act_b = T.active_rows(rows_of(run, b, hook))
        pair = T.paired(act_a, act_b)
        res.tables["deciles"] = T.firing_rate_deciles(pair, s, d)
        res.tables["overlap_counts"] = T.overlap_counts(pair, s, d)
        res.tables["scatter"] = pair
        import pandas as pd

        res.tables["top_disrupted"] = pd.concat(
            [res.tables["top_disrupted"], T.top_disrupted(act_b, top, s, d).assign(config=b)], ignore_index=True)
        res.summary["overlap"] = res.tables["overlap_counts"].to_dict("records")
    return res


def cross_run(first: RunAnalysis, second: RunAnalysis) -> Any:
    """The coefficient comparison of two runs' A configurations (None when either has no fit)."""
    c1 = first.summary["predictor"].get("coefficients")
    c2 = second.summary["predictor"].get("coefficients")
    if not c1 or not c2:
        return None
    return T.sign_agreement(c1, c2)
