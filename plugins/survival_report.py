"""How the survival metric shows itself: table columns, flags, report sections (banner, figures,
most damaged features)."""
from __future__ import annotations

from typing import Any

from featsurv import Column, ReportSection

MISSES = "PERPLEXITY MISSES DAMAGE"
OPTIONAL_STATS = ("decoder_norm", "encoder_norm", "encoder_bias", "threshold")


def _opts(summary: dict[str, Any]) -> dict[str, Any]:
    from .metric_survival import DAMAGED_BELOW, SURVIVED_ABOVE

    got = (summary.get("metric_options") or {}).get("survival") or {}
    return {"survived_above": SURVIVED_ABOVE, "damaged_below": DAMAGED_BELOW, "ppl_tolerance": 0.01,
            "survival_target": 0.9, "top": 10, **got}


def columns() -> list[Column]:
    return [Column("survived", "survived", "pct"), Column("blurred", "blurred", "pct", 8),
            Column("damaged", "damaged", "pct", 8), Column("mean_r", "mean r", "float", 7)]


def row_flags(entry: dict[str, Any]) -> list[str]:
    return [MISSES] if entry.get("perplexity_misses_damage") else []


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) or x != x else f"{100 * x:.1f}%"


def row_notes(entry: dict[str, Any]) -> list[str]:
    ci = entry.get("ci") or {}
    lohi = ci.get("survived") if isinstance(ci, dict) else None
    if lohi and len(lohi) == 2 and None not in lohi:
        note = f"95% CI survived {_pct(lohi[0])}-{_pct(lohi[1])}"
        if ci.get("excludes_estimate"):
            note += (f" (excludes the {'/'.join(ci['excludes_estimate'])} estimate: per-feature r is unstable at "
                     "this budget; audit more --tokens)")
        return [note]
    return []


def text(summary: dict[str, Any]) -> list[str]:
    flagged = [e for e in summary.get("results") or [] if isinstance(e, dict) and e.get("perplexity_misses_damage")]
    if not flagged:
        return []
    o = _opts(summary)
    return [f"{len(flagged)} configuration(s) keep perplexity within {o['ppl_tolerance']:.1%} of FP while "
            f"{o['survival_target']:.0%} or fewer of active features survive."]


def _entries(summary: dict[str, Any]) -> list[dict[str, Any]]:
    results = [r for r in (summary.get("results") or []) if isinstance(r, dict) and "survived" in r]
    hooks = {str(r.get("hook") or "") for r in results}
    return [{**r, "name": f"{r.get('label', '?')} @ {r.get('hook')}" if len(hooks) > 1 and r.get("hook") else
             str(r.get("label", "?")), "misses": bool(r.get("perplexity_misses_damage"))} for r in results]


def active_rows(features: Any, label: str, hook: str) -> Any:
    if features is None or len(features) == 0 or "r" not in features.columns:
        return None
    sel = features["config"].astype(str) == label
    if hook and "hook" in features.columns:
        sel &= features["hook"].astype(str) == hook
    rows = features[sel]
    return rows[rows["active"].astype(bool)] if "active" in rows.columns else rows


def banner(entries: list[dict[str, Any]], o: dict[str, Any]) -> ReportSection:
    from featsurv.report import html as H

    misses = [e for e in entries if e["misses"]]
    if not misses:
        return ReportSection("Perplexity and features", '<p class="ok">No configuration hides feature damage behind '
                             f"an unchanged perplexity (tolerance {o['ppl_tolerance']:.1%}, survival target "
                             f"{o['survival_target']:.0%}).</p>", order=0)
    items = "".join(f"<li><strong>{H.esc(e['name'])}</strong>: perplexity {H.esc(H.pct(e.get('perplexity_change'), True))}"
                    f", only {H.esc(H.pct(e.get('survived')))} of active features survived "
                    f"({H.esc(H.pct(e.get('damaged')))} damaged)</li>" for e in misses)
    return ReportSection("Perplexity misses damage", (
        f'<div class="banner" id="misses-damage"><strong>⚠ Perplexity misses damage in {len(misses)} '
        f"configuration(s)</strong><br>Perplexity is at most {o['ppl_tolerance']:.1%} worse than FP "
        f"(or better), yet no more than {o['survival_target']:.0%} of active SAE features survive:"
        f"<ul>{items}</ul></div>"), order=0)


def figures(run: Any, entries: list[dict[str, Any]], o: dict[str, Any]) -> ReportSection:
    from featsurv.report import figures as F
    from featsurv.report import html as H

    files: dict[str, bytes] = {}
    parts: list[str] = []

    def add(fig: Any, name: str, alt: str, heading: str) -> None:
        if fig is not None:
            files[name] = F.png_bytes(fig)
            parts.extend([f"<h3>{H.esc(heading)}</h3>", H.figure(name, alt)])

    add(F.fig_bands(entries), "fig_bands.png", "stacked band fractions per configuration", "Bands")
    series = [(e["name"], rows["r"].to_numpy(dtype=float)) for e in entries
              if (rows := active_rows(run.features, str(e.get("label")), str(e.get("hook") or ""))) is not None]
    if series:
        add(F.fig_r_distribution(series, o["survived_above"], o["damaged_below"]), "fig_r_distribution.png",
            "distribution of r per configuration", "Distribution of r")
    add(F.fig_survival_vs_ppl(entries, o["ppl_tolerance"], o["survival_target"]), "fig_survival_vs_perplexity.png",
        "survived fraction against perplexity change", "Survival against perplexity change")
    note = (f'<p class="note">Bands over active features: survived r &gt; {o["survived_above"]:g}, damaged r &lt; '
            f'{o["damaged_below"]:g}, blurred otherwise.</p>')
    return ReportSection("Figures", note + "\n".join(parts), files, order=20)


def _cell(c: str, v: Any) -> Any:
    from featsurv.report import html as H

    if c == "band":
        return H.Raw(f'<span class="b-{H.esc(v)}">{H.esc(v)}</span>')
    if c == "feature":
        return int(v)
    if c == "silenced":
        return "yes" if bool(v) else ""
    return H.num(v, ".4f" if c == "r" else ".4g")


def varies(values: Any, rtol: float = 1e-6) -> bool:
    """Whether a column holds at least two finite values that differ by more than float noise (a
    weight statistic that is the same for every feature, e.g. unit-norm decoder rows, tells nothing)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return v.size > 1 and float(v.max() - v.min()) > rtol * max(1.0, float(np.abs(v).max()))


def worst_features(run: Any, entries: list[dict[str, Any]], top: int) -> ReportSection | None:
    from featsurv.report import html as H

    parts = []
    for e in entries:
        rows = active_rows(run.features, str(e.get("label")), str(e.get("hook") or ""))
        if rows is None or not len(rows):
            continue
        worst = rows.sort_values(["r", "feature"], kind="mergesort").head(top)
        cols = [c for c in ("feature", "r", "band", "silenced", "firing_rate", "mean_act", "peak_act") if c in worst.columns]
        cols += [c for c in OPTIONAL_STATS if c in rows.columns and varies(rows[c])]
        body = [[_cell(c, rec[c]) for c in cols] for rec in worst[cols].to_dict("records")]
        flag = ' <span class="flag">⚠ perplexity misses damage</span>' if e["misses"] else ""
        parts += [f"<h3>{H.esc(e['name'])}{flag}</h3>", H.table(cols, body, left=(2,))]
    if not parts:
        return None
    return ReportSection(f"Most damaged features (lowest r, top {top} per configuration)", "\n".join(parts), order=40)


def report_sections(run: Any) -> list[ReportSection]:
    entries = _entries(run.summary or {})
    if not entries:
        return []
    o = _opts(run.summary or {})
    out = [banner(entries, o), figures(run, entries, o)]
    worst = worst_features(run, entries, int(run.extra.get("top", 10)) if hasattr(run, "extra") else 10)
    return out + ([worst] if worst else [])
