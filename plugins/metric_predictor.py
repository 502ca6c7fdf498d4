"""Metric ``predictor`` (off by default): can FP statistics alone predict which features survive?

For one (configuration, hook), every *active* feature is described by FP statistics only:

- ``rarity`` = ``-ln(firing_rate)``;
- ``log_mean_act`` = ``ln(mean_act)`` (mean over all tokens, zeros included);
- ``log_peak_act`` = ``ln(peak_act)``;
- ``log_concentration`` = ``ln(max(peak_act / mean_act, 1))``;
- ``decoder_norm``, ``encoder_norm``, ``encoder_bias``, ``threshold`` when the SAE provides them
  (a column that is missing, NaN for some active feature, or constant is left out and listed in
  ``excluded`` with the reason).

The label is ``band == "survived"``. Two models are cross-validated with the same stratified
k folds (default k = 5, shuffled with seed 0) and scored by ROC AUC: a logistic regression on
standardised statistics (the scaler is fitted inside each fold, in a scikit-learn Pipeline) and a
deterministic LightGBM classifier. Each model reports ``auc_mean``, ``auc_std`` (population std
of the fold AUCs), ``folds`` and ``roc``: the ROC curve of the pooled out-of-fold scores, sampled
on 101 false-positive rates, with its AUC ``auc_pooled`` (the report draws it). ``marginal``
ranks the statistics by ``|auc - 0.5|`` of each one alone (raw value as the score, no fitting):
``auc`` > 0.5 means higher values go with survival (``direction`` "higher survives").

Degenerate cases give a result, never a crash: no active feature or a single class skips
everything (``skipped`` says why); a minority class smaller than k lowers k to its size
(``note``), and below 2 members the models are skipped while the marginal AUCs are still given.
"""
from __future__ import annotations

from typing import Any, Callable

from featsurv import Metric, Param, hookimpl

CORE_STATISTICS = ("rarity", "log_mean_act", "log_peak_act", "log_concentration")
OPTIONAL_STATISTICS = ("decoder_norm", "encoder_norm", "encoder_bias", "threshold")
MODELS = ("logistic", "lightgbm")
ROC_POINTS = 101


STATISTIC_SETS = ("all", "core")


def feature_statistics(df: Any, statistics: str = "all") -> tuple[Any, dict[str, str]]:
    """The predictor statistics of the rows of ``df`` (a DataFrame) and the excluded columns.

    Returns ``(stats, excluded)``: ``stats`` is a DataFrame (same index as ``df``) with the four
    core statistics and each usable optional one; ``excluded`` maps a left-out optional column to
    the reason. Rows keep non-finite values (e.g. a zero mean); the caller drops them.
    """
    import numpy as np
    import pandas as pd

    def col(name: str) -> np.ndarray:
        return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)

    rate, mean, peak = col("firing_rate"), col("mean_act"), col("peak_act")
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = {
            "rarity": -np.log(rate),
            "log_mean_act": np.log(mean),
            "log_peak_act": np.log(peak),
            "log_concentration": np.log(np.maximum(peak / mean, 1.0)),
        }
    excluded: dict[str, str] = {}
    for name in OPTIONAL_STATISTICS:
        if statistics == "core":
            if name in df.columns:
                excluded[name] = "statistics=core (the reference study's four)"
            continue
        if name not in df.columns:
            continue
        values = col(name)
        if values.size == 0 or np.isnan(values).all():
            excluded[name] = "not provided (all NaN)"
        elif not np.isfinite(values).all():
            excluded[name] = f"non-finite for {int((~np.isfinite(values)).sum())} active features"
        elif np.all(values == values[0]):
            excluded[name] = "constant"
        else:
            stats[name] = values
    return pd.DataFrame(stats, index=df.index), excluded


def _direction(auc: float) -> str:
    if auc > 0.5:
        return "higher survives"
    if auc < 0.5:
        return "lower survives"
    return "none"


def marginal_aucs(stats: Any, y: Any) -> list[dict[str, Any]]:
    """ROC AUC of each statistic alone as a score for ``y``, ranked by ``|auc - 0.5|``."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for name in stats.columns:
        auc = float(roc_auc_score(y, stats[name].to_numpy()))
        rows.append({"statistic": name, "auc": auc, "direction": _direction(auc)})
    order = sorted(range(len(rows)), key=lambda i: (-abs(rows[i]["auc"] - 0.5), i))
    return [rows[i] for i in order]


def make_model(name: str, seed: int = 0, n_train: int = 1000) -> Any:
    """A fresh, unfitted model: ``logistic`` (scaler + logistic regression) or ``lightgbm``."""
    if name == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        return Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(max_iter=2000))])
    if name == "lightgbm":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15,
                              min_child_samples=max(5, min(20, n_train // 20)),
                              random_state=seed, deterministic=True, force_row_wise=True,
                              n_jobs=1, verbose=-1)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def _scores(estimator: Any, X: Any) -> Any:
    """The score the roc_auc scorer uses: decision_function when there is one, else P(class 1)."""
    if hasattr(estimator, "decision_function"):
        return estimator.decision_function(X)
    return estimator.predict_proba(X)[:, 1]


def _roc(y: Any, scores: Any) -> dict[str, Any]:
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, scores)
    grid = np.linspace(0.0, 1.0, ROC_POINTS)
    # the highest TPR reached at a false-positive rate <= each grid value (the ROC step curve)
    tpr_grid = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    return {"fpr": [round(float(v), 4) for v in grid], "tpr": [round(float(v), 4) for v in tpr_grid],
            "auc_pooled": float(roc_auc_score(y, scores))}


def cross_validated_auc(name: str, X: Any, y: Any, k: int, seed: int) -> dict[str, Any]:
    """Stratified k-fold ROC AUC of one model, with the pooled out-of-fold ROC curve."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold, cross_validate

    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    n_train = int(len(y) * (k - 1) / k)
    res = cross_validate(make_model(name, seed, n_train), X, y, cv=cv, scoring="roc_auc",
                         return_estimator=True, return_indices=True, n_jobs=None, error_score="raise")
    folds = [float(v) for v in res["test_score"]]
    oof = np.empty(len(y), dtype=np.float64)
    for est, test in zip(res["estimator"], res["indices"]["test"]):
        oof[test] = _scores(est, X[test])
    return {"auc_mean": float(np.mean(folds)), "auc_std": float(np.std(folds)), "folds": folds,
            "roc": _roc(y, oof)}


def predict_survival(df: Any, k: int = 5, seed: int = 0, models: tuple[str, ...] = MODELS,
                     statistics: str = "all") -> dict[str, Any]:
    """Cross-validated survival prediction for the rows of ONE (configuration, hook).

    ``df`` has the columns of ``features.parquet`` (``active``, ``band``, ``firing_rate``,
    ``mean_act``, ``peak_act`` and optionally ``decoder_norm``, ``encoder_norm``,
    ``encoder_bias``, ``threshold``); inactive rows are ignored. Returns ``n``, ``n_survived``,
    ``statistics``, ``excluded``, ``k``, ``seed``, one entry per model (``auc_mean``,
    ``auc_std``, ``folds``, ``roc``, or ``skipped``) and ``marginal``; see the module docstring.
    """
    import numpy as np

    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    for name in models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    act = df[df["active"].astype(bool)] if "active" in df.columns else df
    stats, excluded = feature_statistics(act, statistics)
    finite = np.isfinite(stats.to_numpy()).all(axis=1)
    n_dropped = int((~finite).sum())
    stats = stats[finite]
    y = (act["band"].astype(str).to_numpy() == "survived")[finite].astype(int)
    n, n_surv = int(len(y)), int(y.sum())
    out: dict[str, Any] = {"n": n, "n_survived": n_surv, "statistics": list(stats.columns),
                           "excluded": excluded, "k": k, "seed": seed}
    if n_dropped:
        out["n_dropped"] = n_dropped
        out["note_dropped"] = f"{n_dropped} active features with a non-finite statistic (zero mean or peak) left out"

    reason = None
    if n == 0:
        reason = "no active features"
    elif n_surv in (0, n):
        reason = (f"only one class: all {n} active features survived" if n_surv == n
                  else f"only one class: none of the {n} active features survived")
    if reason:
        out["skipped"] = reason
        out["marginal"] = []
        for name in models:
            out[name] = {"skipped": reason}
        return out

    out["marginal"] = marginal_aucs(stats, y)
    minority = min(n_surv, n - n_surv)
    k_used = min(k, minority)
    if k_used < 2:
        for name in models:
            out[name] = {"skipped": f"the smaller class has {minority} feature(s); cross-validation needs at least 2"}
        out["k"] = k_used
        return out
    if k_used < k:
        out["note"] = f"k lowered from {k} to {k_used}: the smaller class has only {minority} features"
    out["k"] = k_used
    X = stats.to_numpy(dtype=np.float64)
    for name in models:
        try:
            out[name] = cross_validated_auc(name, X, y, k_used, seed)
        except ImportError as exc:
            out[name] = {"skipped": f"{name} is not installed ({exc})"}
    return out


def groups(features: Any) -> list[tuple[str, str, Any]]:
    """``(label, hook, rows)`` for each (configuration, hook) of a features table, in table order."""
    if features is None or len(features) == 0:
        return []
    hook_col = features["hook"] if "hook" in features.columns else None
    keys = features["config"].astype(str) + "\x00" + (hook_col.astype(str) if hook_col is not None else "")
    out = []
    for key in dict.fromkeys(keys.tolist()):
        label, hook = key.split("\x00", 1)
        out.append((label, hook, features[keys == key]))
    return out


def result_key(label: str, hook: str) -> str:
    """The key of one (configuration, hook) in ``summary["predictors"]``."""
    return f"{label} @ {hook}" if hook else label


def predict_run(run: Any, k: int = 5, seed: int = 0, progress: Callable[[str], None] | None = None,
                statistics: str = "all") -> dict[str, Any]:
    """``predict_survival`` for every (configuration, hook) of a RunResult, keyed ``"<label> @ <hook>"``."""
    out: dict[str, Any] = {}
    for label, hook, rows in groups(run.features):
        if progress:
            n_act = int(rows["active"].astype(bool).sum()) if "active" in rows.columns else len(rows)
            progress(f"predictor: {result_key(label, hook)} ({n_act} active features, k={k})")
        res = predict_survival(rows, k=k, seed=seed, statistics=statistics)
        out[result_key(label, hook)] = {"label": label, "hook": hook, **res}
    return out


def format_table(predictors: dict[str, Any]) -> str:
    """A plain-text table of the predictor results (one line per configuration)."""
    def auc(entry: dict[str, Any]) -> str:
        if not isinstance(entry, dict) or "auc_mean" not in entry:
            return "skipped"
        return f"{entry['auc_mean']:.3f} ± {entry['auc_std']:.3f}"

    rows = [("configuration", "n", "survived", "logistic AUC", "LightGBM AUC", "best single statistic")]
    notes = []
    for key, res in predictors.items():
        best = "-"
        if res.get("marginal"):
            m = res["marginal"][0]
            best = f"{m['statistic']} ({m['auc']:.3f}, {m['direction']})"
        rows.append((key, str(res.get("n", "")), str(res.get("n_survived", "")),
                     auc(res.get("logistic")), auc(res.get("lightgbm")), best))
        for field in ("skipped", "note", "note_dropped"):
            if res.get(field):
                notes.append(f"{key}: {res[field]}")
        for model in MODELS:
            sub = res.get(model)
            if isinstance(sub, dict) and sub.get("skipped") and not res.get("skipped"):
                notes.append(f"{key}: {model} skipped: {sub['skipped']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


class Predictor(Metric):
    name = "predictor"
    description = "Cross-validated AUC of predicting feature survival from FP statistics (logistic, LightGBM)"
    default = False
    enable_flag = "predict"
    summary_key = "predictors"
    order = 60
    options = (
        Param("folds", int, 5, "stratified cross-validation folds (lowered for a tiny class)", minimum=2, maximum=100),
        Param("statistics", str, "all", "all: every FP statistic the SAE gives; core: the reference study's four "
              "(rarity, log mean, log peak, log concentration)", choices=STATISTIC_SETS),
    )

    def analyze(self, run: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        return predict_run(run, k=options["folds"], seed=options["seed"], progress=options.get("progress"),
                           statistics=options["statistics"])

    def text(self, summary: dict[str, Any]) -> list[str]:
        predictors = summary.get(self.summary_key) or {}
        if not predictors:
            return []
        return ["Survival predicted from FP statistics (stratified k-fold CV ROC AUC):", format_table(predictors)]

    def report_sections(self, run: Any) -> list[Any]:
        from .predictor_report import report_section

        section = report_section((run.summary or {}).get(self.summary_key))
        return [section] if section else []


@hookimpl
def register_metrics(register):
    register(Predictor())


@hookimpl
def register_commands(cli):
    from .predictor_command import predict_cmd

    cli.add_command(predict_cmd)
