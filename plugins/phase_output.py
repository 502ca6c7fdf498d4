"""Writing `featsurv analyze` results: tables (parquet), analysis.json, figures (PNG) and the text."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from . import phase_figures as F


def _num(v: Any, fmt: str = ".3f") -> str:
    return "n/a" if v is None or v != v else format(v, fmt)


def run_files(res: Any, prefix: str) -> dict[str, Any]:
    """Every table of one run as ``{file name: DataFrame}``."""
    return {f"{prefix}{name}.parquet": table for name, table in res.tables.items()}


def figures(runs: Sequence[Any], prefixes: Sequence[str]) -> dict[str, Any]:
    out = {"fig_survival_by_quartile.png": F.survival_by_quartile(runs), "fig_roc.png": F.roc_curves(runs),
           "fig_coefficients.png": F.coefficient_bars(runs)}
    for res, prefix in zip(runs, prefixes):
        s, d = res.summary["survived_above"], res.summary["damaged_below"]
        out[f"fig_{prefix}scatter.png"] = F.scatter(res, s, d)
        out[f"fig_{prefix}deciles.png"] = F.deciles(res)
    return {k: v for k, v in out.items() if v is not None}


def write_all(tmp: Path, runs: Sequence[Any], prefixes: Sequence[str], cross: Any, record: dict[str, Any]) -> None:
    """Render into the temporary folder (write_folder puts it in place with its manifest)."""
    from featsurv.report.figures import save_png
    from featsurv.results import write_json_atomic

    for res, prefix in zip(runs, prefixes):
        for name, table in run_files(res, prefix).items():
            table.to_parquet(tmp / name, index=False)
    if cross is not None:
        cross.to_parquet(tmp / "coefficient_comparison.parquet", index=False)
    from .phase_pages import analysis_page

    figs = figures(runs, prefixes)
    for name, fig in figs.items():
        save_png(fig, tmp / name)
    write_json_atomic(tmp / "analysis.json", record)
    (tmp / "report.html").write_text(analysis_page(runs, prefixes, cross, list(figs)), encoding="utf-8")


def record_of(runs: Sequence[Any], cross: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": [{"name": r.name, **r.summary} for r in runs]}
    if cross is not None:
        out["coefficient_comparison"] = cross.to_dict("records")
        out["sign_agreement"] = f"{int(cross['sign_agreement'].sum())}/{len(cross)}"
    return out


def _run_text(res: Any) -> list[str]:
    p, s = res.summary["predictor"], res.summary
    lines = [f"{res.name}: A = {res.a!r}" + (f", B = {res.b!r}" if res.b else "") + (f" @ {res.hook}" if res.hook else ""),
             f"  active features: {s['n_active']}"]
    if "skipped" in p:
        lines.append(f"  predictor: skipped ({p['skipped']})")
    else:
        cv = f"{_num(p.get('cv_auc_mean'))} ± {_num(p.get('cv_auc_std'))}" if "cv_auc_mean" in p else "n/a"
        lines.append(f"  predictor (4 FP statistics, logistic): CV AUC {cv}, {p['frac_survived']:.1%} survived")
        lines += [f"    {c['statistic']:22} {c['standardized_coef']:+.4f}" for c in p["coefficients"]]
    q = res.tables["quartiles"]
    for prop, part in q.groupby("statistic", sort=False):
        cells = ", ".join(f"{row.quartile} {row.survival_pct:.0f}% (n={row.n})" for row in part.itertuples())
        lines.append(f"  survival by {prop}: {cells}")
    if "overlap_counts" in res.tables:
        for row in res.tables["overlap_counts"].itertuples():
            lines.append(f"  {row.set_type:12} A {row.a_count}, B {row.b_count}, both {row.intersection_count}, "
                         f"either {row.union_count}; Jaccard {_num(row.jaccard)}")
        lines.append("  firing-rate decile: non-survived % A / B, damaged % A / B, mean damage A / B")
        for row in res.tables["deciles"].itertuples():
            lines.append(f"    {int(row.firing_decile):>2} (n={row.n_features}): {row.a_non_survived_pct:5.1f} / "
                         f"{row.b_non_survived_pct:5.1f}, {row.a_damaged_pct:5.1f} / {row.b_damaged_pct:5.1f}, "
                         f"{row.a_mean_damage:.3f} / {row.b_mean_damage:.3f}")
    top = res.tables["top_disrupted"]
    for lab, part in top.groupby("config", sort=False):
        feats = ", ".join(f"{int(r.feature)} (r={r.r:.3f})" for r in part.head(10).itertuples())
        lines.append(f"  most disrupted under {lab}: {feats}")
    return lines


def text(runs: Sequence[Any], cross: Any) -> str:
    lines: list[str] = []
    for res in runs:
        lines += _run_text(res)
    if cross is not None:
        lines.append(f"coefficient sign agreement across runs: {int(cross['sign_agreement'].sum())}/{len(cross)}")
        lines += [f"  {r.statistic:22} {r.coef_1:+.4f} {r.coef_2:+.4f} {'agree' if r.sign_agreement else 'differ'}"
                  for r in cross.itertuples()]
    return "\n".join(lines)
