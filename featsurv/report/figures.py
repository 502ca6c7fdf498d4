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


def wrap_label(text: str, width: int = 34) -> str:
    """A long configuration label on several lines (at spaces), so that it does not squeeze the plot."""
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def fig_bands(rows: Sequence[dict[str, Any]]) -> Any:
    """Stacked survived/blurred/damaged bars per configuration, perplexity change beside them.

    ``rows``: dicts with ``name``, ``survived``, ``blurred``, ``damaged``, ``perplexity_change``,
    ``misses`` and optionally ``ci`` ({band: [lo, hi]}).
    """
    n = len(rows)
    lines = sum(max(1, wrap_label(r["name"]).count("\n") + 1) for r in rows)
    fig = _figure(9.0, 1.2 + 0.45 * max(n, 1) + 0.15 * max(lines - n, 0))
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
            # the interval as it is, centred on itself (it can exclude the estimate: see docs/measurement.md)
            ax.errorbar((sci[0] + sci[1]) / 2, y, xerr=(sci[1] - sci[0]) / 2, fmt="none", ecolor="black",
                        capsize=3, lw=1)
        if d is not None and dci and None not in dci and all(_num(v) is not None for v in dci) and d > 0:
            x = 1.0 - d
            ax.errorbar(1.0 - (dci[0] + dci[1]) / 2, y, xerr=(dci[1] - dci[0]) / 2, fmt="none",
                        ecolor="black", capsize=3, lw=1)
        note = f"ppl {_pct(row.get('perplexity_change'))}"
        if row.get("misses"):
            note += "  ⚠ misses damage"
        ax.text(1.02, y, note, va="center", fontsize=9, transform=ax.get_yaxis_transform(),
                color=ALERT if row.get("misses") else "black",
                fontweight="bold" if row.get("misses") else "normal")
    ax.set_yticks(ys, [wrap_label(r["name"]) for r in rows])
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


#: distinguishable line colours and styles, cycled per configuration (colour-blind safe Okabe-Ito order)
SERIES_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
SERIES_STYLES = ("-", "--", "-.", ":")


def series_style(i: int) -> dict[str, Any]:
    """Colour and line style of the i-th series: eight colours, then the next line style."""
    return {"color": SERIES_COLORS[i % len(SERIES_COLORS)],
            "ls": SERIES_STYLES[(i // len(SERIES_COLORS)) % len(SERIES_STYLES)]}


def percent_label(y: float, _pos: Any = None) -> str:
    """A log axis tick as a percentage: 0.001 -> 0.1%, 0.5 -> 50%, 1 -> 100%."""
    return f"{100 * y:.3g}%" if y > 0 else "0%"


def fig_r_distribution(series: Sequence[tuple[str, Any]], survived_above: float = 0.9,
                       damaged_below: float = 0.5) -> Any:
    """Histogram of r over the active features, one step curve per configuration (log y axis:
    fraction of the configuration's active features, ticks labelled as percentages)."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    series = [(name, np.asarray(r, dtype=float)) for name, r in series]
    series = [(name, r[np.isfinite(r)]) for name, r in series]
    if not any(r.size for _, r in series):
        return None
    fig = _figure(9.0, 4.2 + 0.2 * len(series))
    ax = fig.add_subplot()
    lo = min(-0.05, min(float(r.min()) for _, r in series if r.size))
    bins = np.linspace(max(lo, -1.0), 1.0, 81)
    for i, (name, r) in enumerate(series):
        if r.size == 0:
            continue
        ax.hist(r, bins=bins, histtype="step", lw=1.6, label=f"{name} (n={r.size})",
                weights=np.full(r.size, 1.0 / r.size), **series_style(i))
    ax.axvline(survived_above, color=BAND_COLORS["survived"], ls="--", lw=1)
    ax.axvline(damaged_below, color=BAND_COLORS["damaged"], ls="--", lw=1)
    ax.set_yscale("log")
    smallest = min(1.0 / r.size for _, r in series if r.size)
    ax.set_ylim(smallest / 2, 1.5)
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(percent_label))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("survival score r (Pearson, FP vs compressed)")
    ax.set_ylabel("fraction of active features (log)")
    ax.set_title("Distribution of r over active features")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=1, frameon=False)
    return fig


#: label positions tried around a point, nearest first, in points: (dx, dy, ha); a label moved more
#: than one line up or down gets a leader line to its point
LABEL_OFFSETS = [(6 * side, dy, "left" if side > 0 else "right") for k in range(24)
                 for dy in ((0,) if k == 0 else (9 * k, -9 * k)) for side in (1, -1)]


def place_labels(fig: Any, ax: Any, points: Sequence[tuple[float, float, str, str]]) -> list[Any] | None:
    """Annotate each ``(x, y, text, colour)`` at the first offset whose box overlaps no label placed
    before and no point, inside the axes; returns the annotations, or None (and removes them) when a
    label finds no such place."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # the final layout, so that boxes are where they will be drawn
    renderer = fig.canvas.get_renderer()
    frame = ax.bbox
    taken = [_dot(ax, x, y) for x, y, _, _ in points]
    out: list[Any] = []
    for x, y, text, colour in points:
        for dx, dy, ha in LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va="center",
                              fontsize=8, color=colour,
                              arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6, "shrinkA": 0}
                              if abs(dy) > 9 else None)
            ann.set_in_layout(False)  # the layout must not move the axes after the labels are placed
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text only: a leader line may cross others
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(t) for t in taken):
                taken.append(box)
                out.append(ann)
                break
            ann.remove()
        else:
            for ann in out:
                ann.remove()
            return None
    return out


def label_points(fig: Any, ax: Any, points: Sequence[tuple[float, float, str, str]]) -> None:
    """Name each point beside it; where the names do not fit without overlapping, number the points
    and list the names in a key under the plot."""
    if place_labels(fig, ax, points) is not None:
        return
    from matplotlib.lines import Line2D

    key = [f"{i}. {text}" for i, (_, _, text, _) in enumerate(points, 1)]
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + 0.16 * len(key))  # room for the key
    fig.legend([Line2D([], [], ls="none")] * len(key), key, loc="outside lower center", fontsize=8, frameon=False,
               handlelength=0, handletextpad=0, ncols=1 if max(map(len, key)) > 45 else 2)
    place_labels(fig, ax, [(x, y, str(i), colour) for i, (x, y, _, colour) in enumerate(points, 1)])


def _dot(ax: Any, x: float, y: float, radius: float = 4.0) -> Any:
    from matplotlib.transforms import Bbox

    px, py = ax.transData.transform((x, y))
    return Bbox([[px - radius, py - radius], [px + radius, py + radius]])


def _ci_of(p: dict[str, Any]) -> tuple[float, float] | None:
    ci = (p.get("ci") or {}).get("survived") if isinstance(p.get("ci"), dict) else None
    if not ci or len(ci) != 2 or any(_num(v) is None for v in ci):
        return None
    return float(ci[0]), float(ci[1])


def fig_survival_vs_ppl(points: Sequence[dict[str, Any]], ppl_tolerance: float = 0.01,
                        survival_target: float = 0.9) -> Any:
    """Survived fraction against relative perplexity change; the 'perplexity misses damage' zone shaded,
    bootstrap intervals as error bars, labels placed where they overlap nothing."""
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
    labels = []
    for p in pts:
        miss = bool(p.get("misses"))
        colour = ALERT if miss else "#1f4e79"
        x, y = float(p["perplexity_change"]), float(p["survived"])
        ci = _ci_of(p)
        if ci is not None:
            ax.errorbar(x, (ci[0] + ci[1]) / 2, yerr=(ci[1] - ci[0]) / 2, fmt="none", ecolor=colour,
                        elinewidth=1, capsize=3, zorder=2)
        ax.scatter(x, y, s=40 if miss else 28, color=colour, zorder=3, marker="D" if miss else "o")
        labels.append((x, y, str(p["name"]), ALERT if miss else "black"))
    ax.set_ylim(0, 1.05)
    ax.set_xlim(xmin * (1.5 if xmin < 0 else 0.5), xmax * 1.8 if xmax > 0 else 0.05)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("perplexity change vs FP (symlog)")
    ax.set_ylabel("survived fraction of active features")
    ax.set_title("Survival against perplexity change" + (" (error bars: bootstrap CI)" if any(_ci_of(p) for p in pts)
                                                          else ""))
    ax.grid(alpha=0.3)
    label_points(fig, ax, labels)
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
                       survived_above: float = 0.9, damaged_below: float = 0.5, subtitle: str | None = None) -> Any:
    """Damage score ``1 - r`` of configuration A against B, one point per active feature (``subtitle``:
    the second title line, else the numbers in ``stats``)."""
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
    title = f"{name_a} vs {name_b}" + (f" at {stats['hook']}" if stats and stats.get("hook") else "")
    if subtitle:
        title += "\n" + subtitle
    elif stats:
        def f(v: Any) -> str:
            x = _num(v)
            return "n/a" if x is None else f"{x:.3f}"
        title += f"\nJaccard {f(stats.get('jaccard'))}, damaged {f(stats.get('jaccard_damaged'))}, " \
                 f"Spearman {f(stats.get('spearman'))}"
    ax.set_title(title, fontsize=9)
    return fig

