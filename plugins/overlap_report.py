"""The overlap metric's text and report section for `featsurv compare`'s comparisons."""
from __future__ import annotations

from typing import Any

from featsurv import FeatsurvError, ReportSection

KEYS = ("jaccard", "jaccard_damaged", "spearman", "pearson")


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for c in comparisons:
        if not isinstance(c, dict) or "jaccard" not in c:
            continue
        label = c.get("matched_on") or "target"
        va, vb = c.get(f"{label}_a"), c.get(f"{label}_b")
        matched = f" ({label} {va:.4g} vs {vb:.4g})" if isinstance(va, float) and isinstance(vb, float) else ""
        lines.append("")
        lines.append(f"{c.get('a')} vs {c.get('b')} at {c.get('hook')}{matched}:")
        for key in KEYS:
            if c.get(key) is not None:
                lines.append(f"  {key:<16} {c[key]:.3f}")
    return lines


def _scatter(run: Any, c: dict[str, Any], i: int) -> tuple[str, bytes] | None:
    from featsurv.report import figures as F

    from .metric_overlap import aligned_r, thresholds

    try:
        table, _ = aligned_r(run, str(c.get("a")), str(c.get("b")), c.get("hook") or None)
    except FeatsurvError:  # a comparison whose rows are not in the table: no figure
        return None
    s_above, d_below = thresholds((run.summary or {}).get("metric_options"))
    fig = F.fig_damage_scatter(1.0 - table["r_a"].to_numpy(float), 1.0 - table["r_b"].to_numpy(float),
                               str(c.get("a")), str(c.get("b")), c, s_above, d_below)
    return None if fig is None else (f"fig_damage_{i}.png", F.png_bytes(fig))


def report_section(run: Any) -> ReportSection | None:
    from featsurv.report import html as H

    comps = [c for c in (run.summary or {}).get("comparisons") or [] if isinstance(c, dict) and "jaccard" in c]
    if not comps:
        return None
    rows = [[c.get("a", ""), c.get("b", ""), c.get("hook", ""), H.num(c.get("jaccard")), H.num(c.get("jaccard_damaged")),
             H.num(c.get("spearman")), H.num(c.get("pearson")),
             f"{c.get('n_nonsurvived_both', 'n/a')} / {c.get('n_nonsurvived_either', 'n/a')}",
             f"{c.get('n_damaged_both', 'n/a')} / {c.get('n_damaged_either', 'n/a')}"] for c in comps]
    parts = [H.table(["A", "B", "hook point", "Jaccard (non-survived)", "Jaccard (damaged)", "Spearman d", "Pearson d",
                      "non-survived both / either", "damaged both / either"], rows, left=(0, 1, 2))]
    files = {}
    for i, c in enumerate(comps, 1):
        fig = _scatter(run, c, i)
        if fig:
            files[fig[0]] = fig[1]
            parts += [f"<h3>{H.esc(c.get('a'))} vs {H.esc(c.get('b'))} at {H.esc(c.get('hook'))}</h3>",
                      H.figure(fig[0], f"damage score of {c.get('a')} against {c.get('b')}")]
    return ReportSection("Do they damage the same features?", "\n".join(parts), files, order=50)
