"""The reference study's post-hoc tables (its phase 4 threshold grid and phase 5), from per-feature r.

Every function takes the per-feature rows of one configuration at one hook point (columns of
features.parquet: ``feature``, ``r``, ``active``, ``firing_rate``, ``mean_act``, ``peak_act``) and
follows the reference's definitions (evan-d30/sae-feature-survival-quantization, scripts 02, 04
and 05), over the *active* features:

- survived ``r > s`` (s = 0.9), non-survived ``r <= s``, damaged ``r < d`` (d = 0.5), degraded
  ``d <= r <= s``; damage ``1 - r``;
- FP statistics: ``rarity = -ln(max(rate, 1e-8))``, ``log_mean_activation = ln(max(mean, 1e-8))``,
  ``log_max_activation = ln(max(peak, 1e-8))``,
  ``log_concentration = ln(max(peak / max(mean, 1e-8), 1))``; rows with a non-finite value dropped;
- quartiles and deciles: ``pandas.qcut`` (duplicate edges dropped);
- coefficients: ``StandardScaler`` fitted on all active features, ``LogisticRegression(C=1,
  max_iter=1000)`` fitted on all of them; cross-validated AUC with ``StratifiedKFold(5,
  shuffle=True, random_state=0)`` on the standardized statistics.
"""
from __future__ import annotations

from typing import Any

STATISTICS = ("rarity", "log_mean_activation", "log_max_activation", "log_concentration")
SURVIVAL_GRID = (0.80, 0.85, 0.90, 0.95)
DAMAGE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
QUARTILE_LABELS = ("Q1 (low)", "Q2", "Q3", "Q4 (high)")


def active_rows(rows: Any) -> Any:
    """The active features of one configuration's rows, sorted by feature id."""
    act = rows[rows["active"].astype(bool)]
    return act.sort_values("feature", kind="mergesort").reset_index(drop=True)


def threshold_grid(r: Any, survival: tuple[float, ...] = SURVIVAL_GRID,
                   damage: tuple[float, ...] = DAMAGE_GRID) -> Any:
    """Survived / degraded / damaged % of the active features' r for each threshold pair (damage < survival)."""
    import numpy as np
    import pandas as pd

    r = np.asarray(r, dtype=np.float64)
    rows = []
    for st in survival:
        for dt in damage:
            if dt >= st:
                continue
            surv = float((r > st).mean() * 100) if r.size else float("nan")
            dmg = float((r < dt).mean() * 100) if r.size else float("nan")
            rows.append({"survival_threshold": st, "damage_threshold": dt, "survived_pct": surv,
                         "degraded_pct": 100 - surv - dmg, "damaged_pct": dmg})
    return pd.DataFrame(rows)


def statistics_frame(act: Any, survived_above: float = 0.9) -> Any:
    """The reference's four FP statistics, ``survived`` (0/1), ``r`` and ``feature`` per active feature."""
    import numpy as np
    import pandas as pd

    rate = act["firing_rate"].to_numpy(np.float64)
    mean = act["mean_act"].to_numpy(np.float64)
    peak = act["peak_act"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        conc = peak / np.maximum(mean, 1e-8)
        df = pd.DataFrame({
            "feature": act["feature"].to_numpy(),
            "rarity": -np.log(np.maximum(rate, 1e-8)),
            "log_mean_activation": np.log(np.maximum(mean, 1e-8)),
            "log_max_activation": np.log(np.maximum(peak, 1e-8)),
            "log_concentration": np.log(np.maximum(conc, 1.0)),
            "survived": (act["r"].to_numpy(np.float64) > survived_above).astype(int),
            "r": act["r"].to_numpy(np.float64),
            "firing_rate": rate,
        })
    finite = np.isfinite(df[list(STATISTICS)].to_numpy()).all(axis=1)
    return df[finite].reset_index(drop=True)


def _qcut(values: Any, q: int, labels: Any) -> Any:
    """pandas.qcut with duplicate edges dropped; integer bins when labels no longer fit."""
    import pandas as pd

    try:
        return pd.qcut(values, q=q, labels=labels, duplicates="drop")
    except ValueError:  # fewer bins than labels after dropping duplicate edges
        codes = pd.qcut(values, q=q, labels=False, duplicates="drop")
        return codes.map(lambda c: f"Q{int(c) + 1}")


def survival_by_quartile(stats: Any) -> Any:
    """Per FP statistic and quartile of it: ``n`` features and ``survival_pct``."""
    import pandas as pd

    out = []
    for prop in STATISTICS:
        if stats.empty:
            continue
        q = _qcut(stats[prop], 4, list(QUARTILE_LABELS))
        g = stats.assign(quartile=q).groupby("quartile", observed=True, sort=True)["survived"]
        for label, grp in g:
            out.append({"statistic": prop, "quartile": str(label), "n": int(grp.size),
                        "survival_pct": float(grp.mean() * 100)})
    return pd.DataFrame(out, columns=["statistic", "quartile", "n", "survival_pct"])


def coefficients(stats: Any, folds: int = 5) -> dict[str, Any]:
    """Standardized logistic coefficients (positive: predicts survival) and the CV AUC, as the reference fits them."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import StandardScaler

    y = stats["survived"].to_numpy()
    n_min = int(min(y.sum(), (1 - y).sum())) if y.size else 0
    if y.size == 0 or n_min == 0:
        return {"skipped": "only one class among the active features", "n_samples": int(y.size)}
    X = StandardScaler().fit_transform(stats[list(STATISTICS)].to_numpy())
    out: dict[str, Any] = {"n_samples": int(y.size), "frac_survived": float(y.mean())}
    k = min(folds, n_min)
    if k >= 2:
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=0)
        aucs = cross_val_score(LogisticRegression(max_iter=1000, C=1.0), X, y, cv=cv, scoring="roc_auc")
        out.update(cv_folds=k, cv_aucs=[float(a) for a in aucs], cv_auc_mean=float(aucs.mean()),
                   cv_auc_std=float(aucs.std()))
    clf = LogisticRegression(max_iter=1000, C=1.0).fit(X, y)
    score = clf.predict_proba(X)[:, 1]
    order = np.argsort(-np.abs(clf.coef_[0]), kind="mergesort")
    out["coefficients"] = [{"statistic": STATISTICS[i], "standardized_coef": float(clf.coef_[0][i]),
                            "abs_coef": float(abs(clf.coef_[0][i]))} for i in order]
    out["in_sample_auc"] = float(roc_auc_score(y, score))
    out["_score"] = score  # for the ROC figure; dropped before JSON
    return out


def sign_agreement(coefs_1: list[dict[str, Any]], coefs_2: list[dict[str, Any]]) -> Any:
    """The reference's cross-run coefficient table: both coefficients, sign agreement, mean |coef|."""
    import numpy as np
    import pandas as pd

    c1 = {c["statistic"]: c["standardized_coef"] for c in coefs_1}
    c2 = {c["statistic"]: c["standardized_coef"] for c in coefs_2}
    rows = [{"statistic": s, "coef_1": c1[s], "coef_2": c2[s],
             "sign_agreement": bool(np.sign(c1[s]) == np.sign(c2[s])), "abs_avg": (abs(c1[s]) + abs(c2[s])) / 2}
            for s in STATISTICS if s in c1 and s in c2]
    df = pd.DataFrame(rows, columns=["statistic", "coef_1", "coef_2", "sign_agreement", "abs_avg"])
    return df.sort_values("abs_avg", ascending=False, kind="mergesort").reset_index(drop=True)


def paired(act_a: Any, act_b: Any) -> Any:
    """Two configurations' active rows merged by feature (``r_a``, ``r_b``, the FP ``firing_rate``)."""
    a = act_a[["feature", "r", "firing_rate"]]
    b = act_b[["feature", "r"]]
    return a.merge(b, on="feature", suffixes=("_a", "_b"), validate="one_to_one").sort_values(
        "feature", kind="mergesort").reset_index(drop=True)


def firing_rate_deciles(pair: Any, s: float = 0.9, d: float = 0.5) -> Any:
    """Per FP firing-rate decile: survived / non-survived / damaged % and mean damage of A and B."""
    import pandas as pd

    work = pair.copy()
    work["firing_decile"] = pd.qcut(work["firing_rate"], q=10, labels=False, duplicates="drop")
    for side in ("a", "b"):
        r = work[f"r_{side}"]
        work[f"{side}_survived"], work[f"{side}_non_survived"] = r > s, r <= s
        work[f"{side}_damaged"], work[f"{side}_damage"] = r < d, 1.0 - r
    agg = {"n_features": ("feature", "count"), "mean_firing_rate": ("firing_rate", "mean")}
    for side in ("a", "b"):
        for what in ("survived", "non_survived", "damaged"):
            agg[f"{side}_{what}_pct"] = (f"{side}_{what}", lambda x: float(x.mean() * 100))
    for side in ("a", "b"):
        agg[f"{side}_mean_damage"] = (f"{side}_damage", "mean")
    return work.groupby("firing_decile").agg(**agg).reset_index()


def overlap_counts(pair: Any, s: float = 0.9, d: float = 0.5) -> Any:
    """Non-survived, damaged and degraded sets of A and B: counts, intersection, union, Jaccard."""
    import pandas as pd

    ra, rb, ids = pair["r_a"].to_numpy(), pair["r_b"].to_numpy(), pair["feature"].to_numpy()
    sets = {"non_survived": (ra <= s, rb <= s), "damaged": (ra < d, rb < d),
            "degraded": ((ra >= d) & (ra <= s), (rb >= d) & (rb <= s))}
    rows = []
    for name, (ma, mb) in sets.items():
        a, b = set(ids[ma].tolist()), set(ids[mb].tolist())
        union = a | b
        rows.append({"set_type": name, "a_count": len(a), "b_count": len(b), "intersection_count": len(a & b),
                     "union_count": len(union), "jaccard": len(a & b) / len(union) if union else float("nan"),
                     "a_only_count": len(a - b), "b_only_count": len(b - a)})
    return pd.DataFrame(rows)


def top_disrupted(act: Any, k: int = 20, s: float = 0.9, d: float = 0.5) -> Any:
    """The ``k`` active features with the lowest r (ties by feature id), with their FP statistics."""
    top = act.sort_values(["r", "feature"], kind="mergesort").head(k)
    out = top[["feature", "r", "firing_rate", "mean_act", "peak_act"]].reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    out["survived"], out["damaged"] = out["r"] > s, out["r"] < d
    return out
