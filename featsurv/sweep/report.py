"""The sweep report: a heatmap hook point x configuration per model, and a value against each
compressor's knob (e.g. survived fraction vs bit-width) per hook point, on one HTML page."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..report.figures import _figure, save_png
from ..report.html import esc, figure, page, table
from .jobs import slug


def fig_heatmap(df: Any, model: str, value: str) -> Any:
    """Hook points (rows, by layer) x configurations (columns) of one model, coloured by ``value``."""
    sub = df[df["model"] == model]
    hooks = sorted(sub["hook"].unique(), key=lambda h: (sub[sub.hook == h]["layer"].min(), str(h)))
    configs = list(dict.fromkeys(sub["config"]))
    grid = [[float(sub[(sub.hook == h) & (sub.config == c)][value].mean()) for c in configs] for h in hooks]
    fig = _figure(1.6 + 1.3 * len(configs), 1.4 + 0.5 * len(hooks))
    ax = fig.add_subplot()
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "n/a" if v != v else f"{v:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if v != v or v < 0.6 else "black")
    ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(hooks)), hooks, fontsize=8)
    ax.set_title(f"{model}: {value} per hook point x configuration")
    fig.colorbar(im, ax=ax)
    return fig


def fig_vs_knob(df: Any, compressor: str, knob: str, value: str) -> Any:
    """``value`` against the compressor's knob, one line per model and hook point."""
    col = f"param.{knob}"
    sub = df[(df["compressor"] == compressor) & df[col].notna()] if col in df.columns else df.iloc[0:0]
    if sub.empty or sub[col].nunique() < 2:
        return None
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    for (model, hook), part in sub.groupby(["model", "hook"], sort=False):
        part = part.sort_values(col)
        ax.plot(part[col].astype(float), part[value].astype(float), marker="o", label=f"{model} {hook}")
    ax.set_xlabel(f"{compressor} {knob}")
    ax.set_ylabel(value)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"{value} vs {knob} ({compressor})")
    return fig


def _knobs(registry: Any, df: Any) -> list[tuple[str, str]]:
    out = []
    for name in dict.fromkeys(df["compressor"]):
        knob = getattr(registry.get("compressors", name), "knob", None)
        if knob:
            out.append((name, knob))
    return out


def render_report(df: Any, folder: Path, registry: Any, value: str, title: str) -> Path:
    """Write report.html and its figures into ``folder``."""
    body = [f"<h1>{esc(title)}</h1>", f"<p>{len(df)} rows: model x hook point x configuration.</p>"]
    for model in dict.fromkeys(df["model"]):
        name = f"fig_heatmap_{slug(model)}.png"
        save_png(fig_heatmap(df, model, value), folder / name)
        body += [f"<h2>{esc(model)}</h2>", figure(name, f"{value} heatmap of {model}")]
    for compressor, knob in _knobs(registry, df):
        fig = fig_vs_knob(df, compressor, knob, value)
        if fig is not None:
            name = f"fig_{slug(value)}_vs_{slug(knob)}.png"
            save_png(fig, folder / name)
            body += [f"<h2>{esc(value)} vs {esc(knob)} ({esc(compressor)})</h2>", figure(name, name)]
    cols = [c for c in ("model", "hook", "config", value, "perplexity_change") if c in df.columns]
    body.append(table(cols, df[cols].itertuples(index=False), left=(0, 1, 2)))
    (folder / "report.html").write_text(page(title, body), encoding="utf-8")
    return folder / "report.html"
