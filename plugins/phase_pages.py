"""report.html of `featsurv analyze` and `featsurv stability` folders: every table and figure, offline."""
from __future__ import annotations

from typing import Any, Sequence


def frame_table(df: Any, digits: int = 4) -> str:
    """A DataFrame as an HTML table (floats rounded, text columns left-aligned)."""
    from featsurv.report import html as H

    def cell(v: Any) -> Any:
        if isinstance(v, float):
            return H.num(v, f".{digits}f")
        return v

    cols = list(df.columns)
    left = [i for i, c in enumerate(cols) if df[c].dtype == object or str(df[c].dtype).startswith("str")]
    return H.table(cols, ([cell(v) for v in row] for row in df.itertuples(index=False, name=None)), left=left or (0,))


def analysis_page(runs: Sequence[Any], prefixes: Sequence[str], cross: Any, figures: Sequence[str]) -> str:
    from featsurv.report import html as H

    body = ["<h1>Reference analyses (phases 4 and 5)</h1>"]
    for res, prefix in zip(runs, prefixes):
        p = res.summary["predictor"]
        body.append(f"<h2>{H.esc(res.name)}: A = {H.esc(res.a)}" + (f", B = {H.esc(res.b)}" if res.b else "")
                    + (f" @ {H.esc(res.hook)}" if res.hook else "") + "</h2>")
        body.append(f"<p>{res.summary['n_active']} active features; predictor: "
                    + (H.esc(p["skipped"]) if "skipped" in p else
                       f"CV AUC {H.num(p.get('cv_auc_mean'))} ± {H.num(p.get('cv_auc_std'))}") + "</p>")
        if p.get("coefficients"):
            import pandas as pd

            body += ["<h3>Standardized coefficients</h3>", frame_table(pd.DataFrame(p["coefficients"]))]
        for name, title in (("quartiles", "Survival by quartile of each FP statistic"),
                            ("overlap_counts", "Non-survived, damaged and degraded sets of A and B"),
                            ("deciles", "By FP firing-rate decile"), ("top_disrupted", "Most disrupted features"),
                            ("threshold_grid", "Threshold grid")):
            if name in res.tables:
                body += [f"<h3>{title}</h3>", '<div class="wide">', frame_table(res.tables[name]), "</div>"]
        body += [H.figure(f, f) for f in figures if f.startswith(f"fig_{prefix}") and prefix]
    if cross is not None:
        body += ["<h2>Coefficients across the two runs</h2>", frame_table(cross)]
    body += [H.figure(f, f) for f in figures if not any(f.startswith(f"fig_{p}") for p in prefixes if p)]
    return H.page("featsurv analyze", body)


def stability_page(rows: Any, summary: dict[str, Any], grid: Any, figures: Sequence[str], label: str) -> str:
    from featsurv.report import html as H

    body = [f"<h1>Stability ablations: {H.esc(label)}</h1>", '<div class="wide">', frame_table(rows), "</div>"]
    for hook, entry in summary.items():
        null = entry.get("null")
        facts = [f"{k}: {H.num(v)}" for k, v in entry.items() if k != "null"]
        if null:
            facts.append(f"null test: mean r {H.num(null['mean_r'], '.6f')}, min r {H.num(null['min_r'], '.6f')}, "
                         + ("passed" if null["passed"] else "FAILED"))
        body.append(f"<h2>{H.esc(hook)}</h2><ul>" + "".join(f"<li>{H.esc(f)}</li>" for f in facts) + "</ul>")
    if len(grid):
        body += ["<h2>Threshold grid (largest budget)</h2>", frame_table(grid)]
    body += [H.figure(f, f) for f in figures]
    return H.page("featsurv stability", body)
