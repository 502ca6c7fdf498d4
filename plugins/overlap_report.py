"""The overlap metric's text and report section for `featsurv compare`'s comparisons."""
from __future__ import annotations

from typing import Any

from featsurv import FeatsurvError, ReportSection

KEYS = ("jaccard", "jaccard_damaged", "spearman", "pearson")


def jaccard_text(stats: dict[str, Any], key: str = "jaccard") -> str:
    """A Jaccard index with the counts behind it, ``0.780 (312/400)``; ``n/a (no damaged features)`` when
    neither configuration has a feature in the set (reads the ``n_<set>_both``/``_either`` counts)."""
    kind, what = ("damaged", "damaged") if key.endswith("damaged") else ("nonsurvived", "non-survived")
    both, either = stats.get(f"n_{kind}_both"), stats.get(f"n_{kind}_either")
    value = stats.get(key)
    value = value if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None
    if either == 0:
        return f"n/a (no {what} features)"
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" ({both}/{either})" if isinstance(both, int) and isinstance(either, int) else "")


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
            if key.startswith("jaccard"):
                lines.append(f"  {key:<16} {jaccard_text(c, key)}")
            elif c.get(key) is not None and c[key] == c[key]:
                lines.append(f"  {key:<16} {c[key]:.3f}")
            else:
                lines.append(f"  {key:<16} n/a")
    return lines


def _scatter(run: Any, c: dict[str, Any], i: int) -> tuple[str, bytes] | None:
    from featsurv.report import figures as F

    from .metric_overlap import aligned_r, thresholds

    try:
        table, _ = aligned_r(run, str(c.get("a")), str(c.get("b")), c.get("hook") or None)
    except FeatsurvError:  # a comparison whose rows are not in the table: no figure
        return None
    s_above, d_below = thresholds((run.summary or {}).get("metric_options"))
    spearman = c.get("spearman")
    subtitle = (f"Jaccard {jaccard_text(c, 'jaccard')}, damaged {jaccard_text(c, 'jaccard_damaged')}, Spearman "
                + (f"{spearman:.3f}" if isinstance(spearman, float) and spearman == spearman else "n/a"))
    fig = F.fig_damage_scatter(1.0 - table["r_a"].to_numpy(float), 1.0 - table["r_b"].to_numpy(float),
                               str(c.get("a")), str(c.get("b")), c, s_above, d_below, subtitle=subtitle)
    return None if fig is None else (f"fig_damage_{i}.png", F.png_bytes(fig))


def report_section(run: Any) -> ReportSection | None:
    from featsurv.report import html as H

    comps = [c for c in (run.summary or {}).get("comparisons") or [] if isinstance(c, dict) and "jaccard" in c]
    if not comps:
        return None
    rows = [[c.get("a", ""), c.get("b", ""), c.get("hook", ""), jaccard_text(c, "jaccard"),
             jaccard_text(c, "jaccard_damaged"), H.num(c.get("spearman")), H.num(c.get("pearson")),
             c.get("n_features", "n/a")] for c in comps]
    parts = ['<div class="wide wrapcells">' + H.table(
        ["A", "B", "hook point", "Jaccard non-survived (both/either)", "Jaccard damaged (both/either)",
         "Spearman d", "Pearson d", "active features"], rows, left=(0, 1, 2)) + "</div>"]
    files = {}
    for i, c in enumerate(comps, 1):
        fig = _scatter(run, c, i)
        if fig:
            files[fig[0]] = fig[1]
            parts += [f"<h3>{H.esc(c.get('a'))} vs {H.esc(c.get('b'))} at {H.esc(c.get('hook'))}</h3>",
                      H.figure(fig[0], f"damage score of {c.get('a')} against {c.get('b')}")]
    hooks = list(dict.fromkeys(str(c.get("hook") or "") for c in comps))
    where = f" (at {hooks[0]})" if len(hooks) == 1 and hooks[0] else ""
    note = ('<p class="note">Jaccard index of the sets of features each configuration did not keep '
            "(both / either, over the active features); d = 1 - r is the damage score.</p>")
    return ReportSection(f"Do they damage the same features?{where}", note + "\n".join(parts), files, order=50)
