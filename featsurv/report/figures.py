"""The report's figures, drawn with matplotlib's object API on the Agg renderer.

No pyplot: the global backend and figure registry of the calling process are left alone. Each
``fig_*`` function returns a ``matplotlib.figure.Figure`` (or None when there is nothing to draw);
:func:`save_png` writes it atomically.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..results import make_readable

BAND_COLORS = {"survived": "#2e8b57", "blurred": "#e0a030", "damaged": "#c0392b"}
ALERT = "#c0392b"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_png(fig: Any, path: Path) -> Path:
    """Write a figure as PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def png_bytes(fig: Any) -> bytes:
    """A figure as PNG bytes (for a metric's ReportSection.files)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _pct(v: Any) -> str:
    x = _num(v)
    return "n/a" if x is None else f"{x:+.2%}"


def fig_bands(rows: Sequence[dict[str, Any]]) -> Any:
    """Stacked survived/blurred/damaged bars per configuration, perplexity change beside them.

    ``rows``: dicts with ``name``, ``survived``, ``blurred``, ``damaged``, ``perplexity_change``,
    ``misses`` and optionally ``ci`` ({band: [lo, hi]}).
    """
    n = len(rows)
    fig = _figure(9.0, 1.2 + 0.45 * max(n, 1))
    ax = fig.add_subplot()
    ys = list(range(n))[::-1]
    for y, row in zip(ys, rows):
        left = 0.0
        for band in ("survived", "blurred", "damaged"):
            w = _num(row.get(band)) or 0.0
            ax.barh(y, w, left=left, color=BAND_COLORS[band], edgecolor="white", height=0.7,
                    label=band if y == ys[0] else None)
            if w >= 0.06:
                ax.text(left + w / 2, y, f"{w:.0%}", ha="center", va="center", fontsize=8, color="white")
            left += w
        ci = row.get("ci") or {}
        s, d = _num(row.get("survived")), _num(row.get("damaged"))
        sci, dci = ci.get("survived"), ci.get("damaged")
        if s is not None and sci and None not in sci and all(_num(v) is not None for v in sci):
            ax.errorbar(s, y, xerr=[[max(s - sci[0], 0)], [max(sci[1] - s, 0)]], fmt="none",
                        ecolor="black", capsize=3, lw=1)
        if d is not None and dci and None not in dci and all(_num(v) is not None for v in dci) and d > 0:
            x = 1.0 - d
            ax.errorbar(x, y, xerr=[[max(dci[1] - d, 0)], [max(d - dci[0], 0)]], fmt="none",
                        ecolor="black", capsize=3, lw=1)
        note = f"ppl {_pct(row.get('perplexity_change'))}"
        if row.get("misses"):
            note += "  ⚠ misses damage"
        ax.text(1.02, y, note, va="center", fontsize=9, transform=ax.get_yaxis_transform(),
                color=ALERT if row.get("misses") else "black",
                fontweight="bold" if row.get("misses") else "normal")
    ax.set_yticks(ys, [r["name"] for r in rows])
    for tick, row in zip(ax.get_yticklabels(), rows):
        if row.get("misses"):
            tick.set_color(ALERT)
            tick.set_fontweight("bold")
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("fraction of active features")
    ax.set_title("Feature survival per configuration (error bars: bootstrap CI)" if any(r.get("ci") for r in rows)
                 else "Feature survival per configuration", pad=24)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=9)
    ax.margins(y=0.02)
    return fig


def _percent_formatter() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


def fig_r_distribution(series: Sequence[tuple[str, Any]], survived_above: float = 0.9,
                       damaged_below: float = 0.5) -> Any:
    """Histogram of r over the active features, one step curve per configuration."""
    import numpy as np
    from matplotlib import colormaps

    series = [(name, np.asarray(r, dtype=float)) for name, r in series]
    series = [(name, r[np.isfinite(r)]) for name, r in series]
    if not any(r.size for _, r in series):
        return None
    fig = _figure(9.0, 4.2)
    ax = fig.add_subplot()
    lo = min(-0.05, min(float(r.min()) for _, r in series if r.size))
    bins = np.linspace(max(lo, -1.0), 1.0, 81)
    cmap = colormaps["viridis"]
    for i, (name, r) in enumerate(series):
        if r.size == 0:
            continue
        color = cmap(i / max(len(series) - 1, 1) * 0.9)
        ax.hist(r, bins=bins, histtype="step", lw=1.6, color=color, label=f"{name} (n={r.size})",
                weights=np.full(r.size, 1.0 / r.size))
    ax.axvline(survived_above, color=BAND_COLORS["survived"], ls="--", lw=1)
    ax.axvline(damaged_below, color=BAND_COLORS["damaged"], ls="--", lw=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("survival score r (Pearson, FP vs compressed)")
    ax.set_ylabel("fraction of active features")
    ax.set_title("Distribution of r over active features")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def fig_survival_vs_ppl(points: Sequence[dict[str, Any]], ppl_tolerance: float = 0.01,
                        survival_target: float = 0.9) -> Any:
    """Survived fraction against relative perplexity change; the 'perplexity misses damage' zone shaded."""
    pts = [p for p in points if _num(p.get("survived")) is not None and _num(p.get("perplexity_change")) is not None]
    if not pts:
        return None
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    xs = [float(p["perplexity_change"]) for p in pts]
    xmin, xmax = min(xs + [-ppl_tolerance * 2]), max(xs + [ppl_tolerance * 2])
    ax.set_xscale("symlog", linthresh=0.01)
    ax.axvspan(xmin * (1.5 if xmin < 0 else 0.5), ppl_tolerance, ymin=0, ymax=survival_target / 1.05,
               color=ALERT, alpha=0.08, lw=0)
    ax.axvline(ppl_tolerance, color=ALERT, ls=":", lw=1)
    ax.axhline(survival_target, color=ALERT, ls=":", lw=1)
    ax.text(ppl_tolerance, 0.02, " perplexity misses damage ←", color=ALERT, fontsize=8, ha="right",
            va="bottom")
    for p in pts:
        miss = bool(p.get("misses"))
        ax.scatter(p["perplexity_change"], p["survived"], s=40 if miss else 28,
                   color=ALERT if miss else "#1f4e79", zorder=3, marker="D" if miss else "o")
        ax.annotate(p["name"], (p["perplexity_change"], p["survived"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8, color=ALERT if miss else "black")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(xmin * (1.5 if xmin < 0 else 0.5), xmax * 1.8 if xmax > 0 else 0.05)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("perplexity change vs FP (symlog)")
    ax.set_ylabel("survived fraction of active features")
    ax.set_title("Survival against perplexity change")
    ax.grid(alpha=0.3)
    return fig


def fig_roc(predictors: dict[str, Any], models: Sequence[str] = ("logistic", "lightgbm")) -> Any:
    """ROC curves of the pooled out-of-fold scores stored by the predictor, one panel per model."""
    from matplotlib import colormaps

    have = [(key, res) for key, res in predictors.items()
            if any(isinstance(res.get(m), dict) and res[m].get("roc") for m in models)]
    if not have:
        return None
    fig = _figure(5.0 * len(models), 4.6)
    cmap = colormaps["viridis"]
    hooks = {str(res.get("hook") or "") for _, res in have}
    names = {key: (str(res.get("label", key)) if len(hooks) == 1 else key) for key, res in have}
    for j, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), j + 1)
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        for i, (key, res) in enumerate(have):
            sub = res.get(model)
            if not isinstance(sub, dict) or not sub.get("roc"):
                continue
            roc = sub["roc"]
            ax.plot(roc["fpr"], roc["tpr"], drawstyle="steps-post", lw=1.5,
                    color=cmap(i / max(len(have) - 1, 1) * 0.9),
                    label=f"{names[key]}: AUC {sub['auc_mean']:.3f} ± {sub['auc_std']:.3f}")
        ax.set_title({"logistic": "Logistic regression", "lightgbm": "LightGBM"}.get(model, model)
                     + " (out-of-fold ROC)", fontsize=10)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate (survived)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.legend(fontsize=7, loc="lower right")
    return fig


def fig_damage_scatter(d_a: Any, d_b: Any, name_a: str, name_b: str, stats: dict[str, Any] | None = None,
                       survived_above: float = 0.9, damaged_below: float = 0.5) -> Any:
    """Damage score ``1 - r`` of configuration A against B, one point per active feature."""
    import numpy as np

    d_a, d_b = np.asarray(d_a, dtype=float), np.asarray(d_b, dtype=float)
    if d_a.size == 0:
        return None
    fig = _figure(5.4, 5.0)
    ax = fig.add_subplot()
    ax.scatter(d_a, d_b, s=4, alpha=0.35, color="#1f4e79", lw=0, rasterized=True)
    hi = max(float(np.nanmax(d_a)), float(np.nanmax(d_b)), 1.0 - damaged_below) * 1.05
    lo = min(float(np.nanmin(d_a)), float(np.nanmin(d_b)), 0.0)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    for t, c in ((1.0 - survived_above, BAND_COLORS["blurred"]), (1.0 - damaged_below, BAND_COLORS["damaged"])):
        ax.axvline(t, color=c, lw=0.8, ls=":")
        ax.axhline(t, color=c, lw=0.8, ls=":")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"damage 1 - r: {name_a}")
    ax.set_ylabel(f"damage 1 - r: {name_b}")
    title = f"{name_a} vs {name_b}"
    if stats:
        def f(v: Any) -> str:
            x = _num(v)
            return "n/a" if x is None else f"{x:.3f}"
        title += f"\nJaccard {f(stats.get('jaccard'))}, damaged {f(stats.get('jaccard_damaged'))}, " \
                 f"Spearman {f(stats.get('spearman'))}"
    ax.set_title(title, fontsize=9)
    return fig
