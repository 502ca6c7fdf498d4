"""Figures of `featsurv analyze` and `featsurv stability`, equivalent to the reference study's.

matplotlib's object API on the Agg renderer (no pyplot); each function returns a Figure or None.
"""
from __future__ import annotations

from typing import Any, Sequence

from . import phase_tables as T

SURV, DMG, A_COLOR, B_COLOR = "seagreen", "crimson", "steelblue", "orange"


def _fig(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def survival_by_quartile(runs: Sequence[Any]) -> Any:
    """One row per run, one panel per FP statistic: survival % by its quartile (reference phase 5A)."""
    fig = _fig(16, 3.8 * len(runs))
    axes = fig.subplots(len(runs), len(T.STATISTICS), squeeze=False)
    for i, run in enumerate(runs):
        q = run.tables["quartiles"]
        for j, prop in enumerate(T.STATISTICS):
            ax, part = axes[i][j], q[q["statistic"] == prop]
            ax.bar(range(len(part)), part["survival_pct"], color=SURV, edgecolor="black")
            for k, (rate, n) in enumerate(zip(part["survival_pct"], part["n"])):
                ax.text(k, rate + 1, f"{rate:.0f}%\nn={n}", ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(part)), list(part["quartile"]), fontsize=8)
            ax.set_ylim(0, max(105, float(part["survival_pct"].max() if len(part) else 0) + 10))
            ax.set_title(f"{run.name}: survival by {prop}", fontsize=9)
            ax.set_ylabel("Survival rate (%)")
            ax.grid(True, alpha=0.3, axis="y")
    return fig


def roc_curves(runs: Sequence[Any]) -> Any:
    """The ROC of each run's logistic fit on all active features, with its cross-validated AUC."""
    from sklearn.metrics import roc_curve

    fig = _fig(6 * len(runs), 5)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, run in zip(axes, runs):
        y, score = run.scores.get(run.a, (None, None))
        pred = run.summary["predictor"]
        if score is None:
            ax.text(0.5, 0.5, pred.get("skipped", "no predictor"), ha="center", va="center")
            continue
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, linewidth=2, label=f"AUC = {pred['in_sample_auc']:.3f}")
        ax.plot([0, 1], [0, 1], "k--", alpha=0.5, label="Chance")
        cv = f"CV AUC = {pred['cv_auc_mean']:.3f} ± {pred['cv_auc_std']:.3f}" if "cv_auc_mean" in pred else "no CV"
        ax.set_title(f"{run.name}: {run.a}\n({cv})", fontsize=9)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.legend(loc="lower right")
        ax.grid(True, alpha=0.3)
    return fig


def coefficient_bars(runs: Sequence[Any]) -> Any:
    """Standardized coefficients per statistic, one bar per run (positive: predicts survival)."""
    import numpy as np

    fits = [(r, {c["statistic"]: c["standardized_coef"] for c in r.summary["predictor"].get("coefficients", [])})
            for r in runs]
    fits = [(r, c) for r, c in fits if c]
    if not fits:
        return None
    fig = _fig(10, 4.5)
    ax = fig.subplots()
    x, w = np.arange(len(T.STATISTICS)), 0.8 / len(fits)
    for i, (run, coefs) in enumerate(fits):
        ax.bar(x - 0.4 + w * (i + 0.5), [coefs.get(s, np.nan) for s in T.STATISTICS], width=w,
               color=(A_COLOR, B_COLOR)[i % 2], label=f"{run.name}: {run.a}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, list(T.STATISTICS), rotation=15, ha="right")
    ax.set_ylabel("Standardized coefficient\n(positive = predicts survival)")
    ax.set_title("FP statistics predicting survival")
    ax.legend()
    ax.grid(True, alpha=0.3, axis="y")
    return fig


def scatter(run: Any, s: float, d: float) -> Any:
    """r under A against r under B per active feature, with the band thresholds (reference phase 5B)."""
    pair = run.tables.get("scatter")
    if pair is None:
        return None
    fig = _fig(6, 6)
    ax = fig.subplots()
    ax.scatter(pair["r_a"], pair["r_b"], s=8, alpha=0.25)
    ax.axvline(s, linestyle="--", alpha=0.7, label=f"survival threshold {s:g}")
    ax.axhline(s, linestyle="--", alpha=0.7)
    ax.axvline(d, linestyle=":", alpha=0.7, label=f"damage threshold {d:g}")
    ax.axhline(d, linestyle=":", alpha=0.7)
    ax.set_xlabel(f"r under {run.a}")
    ax.set_ylabel(f"r under {run.b}")
    ax.set_title(f"{run.name}: {run.a} vs {run.b}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def deciles(run: Any) -> Any:
    """Non-survived % of A and B by FP firing-rate decile."""
    dec = run.tables.get("deciles")
    if dec is None:
        return None
    fig = _fig(7, 5)
    ax = fig.subplots()
    ax.plot(dec["firing_decile"], dec["a_non_survived_pct"], marker="o", label=run.a, color=A_COLOR)
    ax.plot(dec["firing_decile"], dec["b_non_survived_pct"], marker="o", label=run.b, color=B_COLOR)
    ax.set_xlabel("FP firing-rate decile")
    ax.set_ylabel("Non-survived features (%)")
    ax.set_title(f"{run.name}: vulnerability by firing-rate decile", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def stability(budgets: Any, subsets: Any, null: dict[str, Any] | None, label: str) -> Any:
    """The reference's phase 4 figure: token budget, random subsets, FP-vs-FP null test."""
    fig = _fig(18, 5)
    ax = fig.subplots(1, 3)
    if len(budgets):
        ax[0].plot(budgets["token_budget"] / 1000, budgets["survived_pct"], marker="o", color=SURV, label="Survived")
        ax[0].plot(budgets["token_budget"] / 1000, budgets["damaged_pct"], marker="s", color=DMG, label="Damaged")
        ax[0].legend()
    ax[0].set_xlabel("Token budget (thousands)")
    ax[0].set_ylabel("Feature %")
    ax[0].set_title(f"A. Token-budget stability\n({label})")
    if len(subsets):
        x = subsets["seed"].to_numpy()
        ax[1].bar(x - 0.2, subsets["survived_pct"], width=0.4, color=SURV, label="Survived")
        ax[1].bar(x + 0.2, subsets["damaged_pct"], width=0.4, color=DMG, label="Damaged")
        ax[1].set_xticks(x)
        ax[1].legend()
    ax[1].set_xlabel("Seed (random subset of contexts)")
    ax[1].set_title(f"B. Random subsets\n({label})")
    if null:
        c = float(null["mean_r"])
        ax[2].bar([0, 1], [c, 1.0], width=0.6, color=[A_COLOR, "lightgrey"], edgecolor="black")
        ax[2].set_xticks([0, 1], ["Observed mean r", "Expected (1.0)"])
        ax[2].set_ylim(min(c, 0.98), 1.005)
        ax[2].axhline(1.0, color="red", linestyle="--", alpha=0.5)
        ax[2].set_title(f"C. FP vs FP null test\n(damaged={null['damaged_pct']:.3f}%)")
    for a in ax:
        a.grid(True, alpha=0.3)
    return fig
