"""How the attribution metric shows itself: the table after the CLI results, the report's heatmap."""
from __future__ import annotations

from typing import Any

from featsurv import ReportSection


def _rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    record = (summary or {}).get("attribution")
    rows = record.get("rows") if isinstance(record, dict) else None
    return [r for r in rows or [] if isinstance(r, dict)]


def _pct(v: Any, signed: bool = False) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return "n/a"
    return f"{v:+.1%}" if signed else f"{v:.1%}"


def _f(v: Any) -> str:
    return "n/a" if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v else f"{v:.3f}"


def text(summary: dict[str, Any]) -> list[str]:
    rows = _rows(summary)
    if not rows:
        return []
    record = summary["attribution"]
    complements = any("marginal_lost" in r for r in rows)
    lines = [f"Attribution by {record.get('by')} ({len(record.get('groups') or [])} groups; each compressed alone"
             + (", its complement, and everything" if complements else "") + "):"]
    head = f"  {'group':<14} {'params':>7} {'survived':>9} {'lost':>7} {'mean r':>7} {'damaged':>8} {'Δppl':>8}"
    head += f" {'marginal':>9} {'interact':>9}" if complements else ""
    for hook, order in (record.get("ranking") or {}).items():
        lines += ["", f"at {hook} (most damaging first):", head]
        by_group = {r["group"]: r for r in rows if r["hook"] == hook}
        for g in order:
            r = by_group[g]
            line = (f"  {g:<14} {_pct(r.get('param_share')):>7} {_pct(r.get('survived')):>9} {_pct(r.get('lost')):>7} "
                    f"{_f(r.get('mean_r')):>7} {_pct(r.get('damaged')):>8} {_pct(r.get('perplexity_change'), True):>8}")
            if complements:
                line += f" {_pct(r.get('marginal_lost')):>9} {_pct(r.get('interaction'), True):>9}"
            lines.append(line)
        tot = (record.get("totals") or {}).get(hook) or {}
        if tot.get("lost_all") is not None:
            lines.append(f"  survived fraction lost: {_pct(tot.get('sum_lost_alone'))} summed over groups alone, "
                         f"{_pct(tot.get('lost_all'))} with everything compressed")
    return lines


def heatmap(rows: list[dict[str, Any]], key: str, title: str) -> Any:
    """Group x hook point heatmap of ``key`` (a fraction), annotated."""
    import numpy as np
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys(r["group"] for r in rows))
    hooks = list(dict.fromkeys(r["hook"] for r in rows))
    grid = np.full((len(groups), len(hooks)), np.nan)
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            grid[groups.index(r["group"]), hooks.index(r["hook"])] = v
    fig = Figure(figsize=(2.2 + 1.6 * len(hooks), 1.2 + 0.32 * len(groups)), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    vmax = max(float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0, 0.01)
    im = ax.imshow(grid, cmap="Reds", vmin=0.0, vmax=vmax, aspect="auto")
    for i in range(len(groups)):
        for j in range(len(hooks)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1%}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] > 0.6 * vmax else "black")
    ax.set_xticks(range(len(hooks)), hooks, fontsize=8)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.set_title(title, fontsize=10)
    from matplotlib.ticker import PercentFormatter

    fig.colorbar(im, ax=ax, shrink=0.8, format=PercentFormatter(1.0))
    return fig


def report_sections(run: Any) -> list[ReportSection]:
    plan = plan_section(run)
    attribution = attribution_section(run)
    return [s for s in (plan, attribution) if s is not None]


def attribution_section(run: Any) -> ReportSection | None:
    from featsurv.report import figures as F
    from featsurv.report import html as H

    rows = _rows(run.summary)
    if not rows:
        return None
    record = run.summary["attribution"]
    files = {"fig_attribution.png": F.png_bytes(heatmap(rows, "lost", "survived fraction lost, group compressed alone"))}
    parts = [f"<p>Groups by {H.esc(record.get('by'))}; {H.esc(record.get('compressor'))} "
             f"{H.esc(record.get('params'))}. Each cell: the fraction of active features that stop surviving when "
             "only that group is compressed (everything else full precision).</p>",
             H.figure("fig_attribution.png", "attribution heatmap")]
    if any("marginal_lost" in r for r in rows):
        files["fig_attribution_marginal.png"] = F.png_bytes(
            heatmap(rows, "marginal_lost", "survived fraction lost by adding the group last"))
        parts += ["<p>Marginal: survived(everything but the group) - survived(everything). Larger than the "
                  "group alone: the group hurts more in company; smaller: its damage overlaps others'.</p>",
                  H.figure("fig_attribution_marginal.png", "marginal attribution heatmap")]
    table = [[r["group"], r["hook"], H.pct(r.get("param_share")), H.pct(r.get("survived")), H.pct(r.get("lost")),
              H.num(r.get("mean_r")), H.pct(r.get("damaged")), H.pct(r.get("perplexity_change"), True),
              H.pct(r.get("marginal_lost")), H.pct(r.get("interaction"), True)] for r in rows]
    parts.append(H.table(["group", "hook point", "params", "survived", "lost", "mean r", "damaged", "Δppl",
                          "marginal lost", "interaction"], table, left=(0, 1)))
    return ReportSection("Where the damage comes from (attribution)", "\n".join(parts), files, order=20)


def plan_section(run: Any) -> ReportSection | None:
    """`featsurv plan`'s outcome: the verdict, the chosen setting, the final comparison and the search path."""
    from featsurv.report import html as H

    plan = (run.summary or {}).get("plan")
    if not isinstance(plan, dict) or "path" not in plan:
        return None
    knob = plan.get("knob")
    parts = [f"<p>{H.esc(plan.get('message'))}.</p>"]
    setting = plan.get("setting") or {}
    if setting:
        parts.append(H.table(["group", str(knob)], [[g, v] for g, v in setting.items()], left=(0,)))
    final = plan.get("final") or {}
    if final:
        hooks = list((final.get("plan") or {}).get("survived") or {})
        rows = [[name, s.get("label"), H.num(s.get("average"), ".3f"), *[H.pct((s.get("survived") or {}).get(h)) for h in hooks],
                 H.pct(s.get("perplexity_change"), True)] for name, s in final.items()]
        parts += ["<h3>Final audit: the plan against the uniform setting nearest its average</h3>",
                  H.table(["", "configuration", f"average {knob}", *[f"survived @ {h}" for h in hooks], "Δppl"], rows,
                          left=(0, 1))]
    path = [s for s in plan.get("path") or [] if isinstance(s, dict)]
    rows = [[i, s.get("kind"), s.get("action"), H.num(s.get("average"), ".3f"),
             H.pct(min((v for v in (s.get("survived") or {}).values() if v is not None), default=None)),
             {True: "yes", False: "no"}.get(s.get("feasible"), ""), {True: "kept", False: "undone"}.get(s.get("accepted"), "")]
            for i, s in enumerate(path, 1)]
    parts.append(f"<details><summary>Search path ({len(rows)} audit passes after the FP pass)</summary>"
                 + H.table(["step", "kind", "action", f"average {knob}", "worst survived", "meets target", "move"],
                           rows, left=(1, 2)) + "</details>")
    return ReportSection("Mixed-precision plan", "\n".join(parts), order=15)
