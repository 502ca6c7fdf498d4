"""The HTML report of a run: one self-contained ``report.html`` plus PNG figures beside it.

``write_report(result)`` reads only what the run stored (``summary`` and ``features``): it can
be re-run at any time (`featsurv report DIR`), e.g. after `featsurv predict` added predictors.
Every file is written atomically; the figures first, then the HTML that references them, so an
interrupted render never leaves a report pointing at a missing image.

Contents: a red banner naming every configuration whose perplexity misses damage (and those
rows highlighted), baseline and run facts, the per-configuration table (with bootstrap CIs when
present), figures (band bars, r distribution, survival vs perplexity change, predictor ROC
curves, damage scatter per comparison), predictor and comparison tables, and the most damaged
features of each configuration with their FP statistics.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..results import write_text_atomic
from . import html as H

REPORT_FILE = "report.html"
OPTIONAL_STATS = ("decoder_norm", "encoder_norm", "encoder_bias", "threshold")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _entries(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The results with a display ``name`` (label, plus ``@ hook`` when a run has several hooks)."""
    results = [r for r in (summary.get("results") or []) if isinstance(r, dict)]
    hooks = {str(r.get("hook") or "") for r in results}
    out = []
    for r in results:
        label, hook = str(r.get("label", "?")), str(r.get("hook") or "")
        out.append({**r, "name": f"{label} @ {hook}" if len(hooks) > 1 and hook else label,
                    "misses": bool(r.get("perplexity_misses_damage"))})
    return out


def _rows_of(features: Any, label: str, hook: str) -> Any:
    if features is None or len(features) == 0:
        return None
    sel = features["config"].astype(str) == label
    if hook and "hook" in features.columns:
        sel &= features["hook"].astype(str) == hook
    rows = features[sel]
    if "active" in rows.columns:
        rows = rows[rows["active"].astype(bool)]
    return rows


def _thresholds(summary: dict[str, Any]) -> dict[str, float]:
    opts = summary.get("options") or {}
    return {"survived_above": float(opts.get("survived_above", 0.9)),
            "damaged_below": float(opts.get("damaged_below", 0.5)),
            "ppl_tolerance": float(opts.get("ppl_tolerance", 0.01)),
            "survival_target": float(opts.get("survival_target", 0.9))}


def _band_cell(entry: dict[str, Any], band: str) -> str:
    text = H.pct(entry.get(band))
    ci = entry.get("ci") or {}
    lohi = ci.get(band) if isinstance(ci, dict) else None
    if lohi and len(lohi) == 2 and all(_num(v) is not None for v in lohi):
        text += f" [{lohi[0]:.1%}, {lohi[1]:.1%}]"
    return text


def _params(p: Any) -> str:
    if isinstance(p, dict):
        return ", ".join(f"{k}={v}" for k, v in p.items())
    return "" if p is None else str(p)


def _run_facts(run: dict[str, Any], limit: int = 40) -> list[tuple[str, str]]:
    """Scalar facts of run.json, flattened one level (``a.b``), at most ``limit``."""
    facts: list[tuple[str, str]] = []
    for k, v in (run or {}).items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if not isinstance(v2, (dict, list)):
                    facts.append((f"{k}.{k2}", str(v2)))
        elif isinstance(v, list):
            if v and all(not isinstance(x, (dict, list)) for x in v):
                facts.append((k, ", ".join(map(str, v))))
        else:
            facts.append((k, str(v)))
    return facts[:limit]


def write_report(result: Any, out_dir: str | Path | None = None, top_n: int = 10) -> Path:
    """Render ``report.html`` and its figures for a RunResult; return the path of report.html.

    ``out_dir`` defaults to the run's own directory (``result.path``).
    """
    from . import figures as F

    out = Path(out_dir) if out_dir is not None else result.path
    if out is None:
        raise ValueError("write_report needs out_dir when the RunResult has no path")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary or {}
    features = result.features
    th = _thresholds(summary)
    entries = _entries(summary)
    misses = [e for e in entries if e["misses"]]
    body: list[str] = []

    # ------------------------------------------------------------------ header + banner
    title = "featsurv report"
    body.append(f"<h1>{H.esc(title)}</h1>")
    base = summary.get("baseline") or {}
    subtitle = []
    if _num(base.get("perplexity")) is not None:
        subtitle.append(f"FP perplexity {H.num(base['perplexity'], '.3f')}")
    if base.get("n_tokens") is not None:
        subtitle.append(f"{base['n_tokens']} audit tokens")
    subtitle.append(f"{len(entries)} configuration(s)")
    body.append(f'<p class="sub">{H.esc(" · ".join(subtitle))}</p>')
    if misses:
        items = "".join(
            f"<li><strong>{H.esc(e['name'])}</strong>: perplexity {H.esc(H.pct(e.get('perplexity_change'), True))}"
            f", only {H.esc(H.pct(e.get('survived')))} of active features survived "
            f"({H.esc(H.pct(e.get('damaged')))} damaged)</li>" for e in misses)
        body.append(
            f'<div class="banner" id="misses-damage"><strong>⚠ Perplexity misses damage in {len(misses)} '
            f"configuration(s)</strong><br>Perplexity is at most {th['ppl_tolerance']:.1%} worse than FP "
            f"(or better), yet no more than {th['survival_target']:.0%} of active SAE features survive:"
            f"<ul>{items}</ul></div>")
    elif entries:
        body.append('<p class="ok">No configuration hides feature damage behind an unchanged perplexity '
                    f"(tolerance {th['ppl_tolerance']:.1%}, survival target {th['survival_target']:.0%}).</p>")

    # ------------------------------------------------------------------ results table
    body.append("<h2>Results</h2>")
    if entries:
        rows, classes = [], []
        for e in entries:
            rows.append([
                e["name"], e.get("compressor", ""), _params(e.get("params")),
                H.num(e.get("perplexity"), ".3f"), H.pct(e.get("perplexity_change"), True),
                f"{e.get('n_active', 'n/a')} / {e.get('n_features', 'n/a')}",
                H.Raw(f'<span class="b-survived">{H.esc(_band_cell(e, "survived"))}</span>'),
                H.Raw(f'<span class="b-blurred">{H.esc(_band_cell(e, "blurred"))}</span>'),
                H.Raw(f'<span class="b-damaged">{H.esc(_band_cell(e, "damaged"))}</span>'),
                H.num(e.get("mean_r")), H.num(e.get("median_r")), e.get("n_silenced", ""),
                H.Raw('<span class="flag">⚠ yes</span>') if e["misses"] else "no",
            ])
            classes.append("misses" if e["misses"] else "")
        body.append(H.table(["configuration", "compressor", "params", "perplexity", "Δ perplexity",
                             "active / features", "survived", "blurred", "damaged", "mean r", "median r",
                             "silenced", "perplexity misses damage"], rows, left=(0, 1, 2), row_classes=classes))
        has_ci = any(e.get("ci") for e in entries)
        body.append(f'<p class="note">Bands over active features: survived r &gt; {th["survived_above"]:g}, '
                    f'damaged r &lt; {th["damaged_below"]:g}, blurred otherwise.'
                    + (" Brackets: bootstrap confidence intervals over blocks of contexts." if has_ci else "")
                    + "</p>")
    else:
        body.append("<p>No results in this run.</p>")

    # ------------------------------------------------------------------ figures
    figs: list[tuple[str, str, str]] = []  # (file, alt, heading)

    def add(fig: Any, name: str, alt: str, heading: str) -> None:
        if fig is None:
            return
        F.save_png(fig, out / name)
        figs.append((name, alt, heading))

    if entries:
        add(F.fig_bands(entries), "fig_bands.png", "stacked band fractions per configuration", "Bands")
        series = []
        for e in entries:
            rows_e = _rows_of(features, str(e.get("label")), str(e.get("hook") or ""))
            if rows_e is not None and "r" in rows_e.columns:
                series.append((e["name"], rows_e["r"].to_numpy(dtype=float)))
        if series:
            add(F.fig_r_distribution(series, th["survived_above"], th["damaged_below"]),
                "fig_r_distribution.png", "distribution of r per configuration", "Distribution of r")
        add(F.fig_survival_vs_ppl(entries, th["ppl_tolerance"], th["survival_target"]),
            "fig_survival_vs_perplexity.png", "survived fraction against perplexity change",
            "Survival against perplexity change")
    body.append("<h2>Figures</h2>")
    for name, alt, heading in figs:
        body.append(f"<h3>{H.esc(heading)}</h3>")
        body.append(H.figure(name, alt))

    # ------------------------------------------------------------------ predictors
    predictors = summary.get("predictors")
    if isinstance(predictors, dict) and predictors:
        body.append("<h2>Predicting survival from FP statistics</h2>")
        fig = F.fig_roc(predictors)
        if fig is not None:
            F.save_png(fig, out / "fig_roc.png")
            body.append(H.figure("fig_roc.png", "ROC curves of the survival predictors"))
        rows = []
        for key, res in predictors.items():
            def auc(m: str) -> str:
                sub = res.get(m)
                if isinstance(sub, dict) and "auc_mean" in sub:
                    return f"{H.num(sub['auc_mean'])} ± {H.num(sub['auc_std'])}"
                return "skipped" + (f": {sub['skipped']}" if isinstance(sub, dict) and sub.get("skipped") else "")
            marg = ", ".join(f"{m['statistic']} {H.num(m.get('auc'))}" for m in (res.get("marginal") or [])[:4])
            rows.append([key, res.get("n", ""), res.get("n_survived", ""), res.get("k", ""), auc("logistic"),
                         auc("lightgbm"), marg or (res.get("skipped") or "")])
        body.append(H.table(["configuration", "active", "survived", "folds", "logistic AUC",
                             "LightGBM AUC", "marginal AUC (top 4, ranked by |AUC - 0.5|)"], rows,
                            left=(0, 4, 5, 6)))
        body.append('<p class="note">Stratified k-fold cross-validated ROC AUC (mean ± std over folds); '
                    "the scaler of the logistic model is fitted inside each fold. Curves: pooled out-of-fold "
                    "scores. Marginal AUC &gt; 0.5: higher values go with survival.</p>")

    # ------------------------------------------------------------------ comparisons
    comparisons = [c for c in (summary.get("comparisons") or []) if isinstance(c, dict)]
    if comparisons:
        body.append("<h2>Comparisons at matched perplexity</h2>")
        rows = []
        for i, c in enumerate(comparisons, 1):
            rows.append([c.get("a", ""), c.get("b", ""), _params(c.get("matched_params")),
                         H.num(c.get("perplexity_a")), H.num(c.get("perplexity_b")), H.num(c.get("jaccard")),
                         H.num(c.get("jaccard_damaged")), H.num(c.get("spearman")), H.num(c.get("pearson")),
                         f"{c.get('n_nonsurvived_both', 'n/a')} / {c.get('n_nonsurvived_either', 'n/a')}",
                         f"{c.get('n_damaged_both', 'n/a')} / {c.get('n_damaged_either', 'n/a')}"])
        body.append(H.table(["A", "B", "B matched at", "perplexity A", "perplexity B", "Jaccard (non-survived)",
                             "Jaccard (damaged)", "Spearman d", "Pearson d", "non-survived both / either",
                             "damaged both / either"], rows, left=(0, 1, 2)))
        for i, c in enumerate(comparisons, 1):
            a, b, hook = str(c.get("a", "")), str(c.get("b", "")), str(c.get("hook") or "")
            ra, rb = _rows_of(features, a, hook), _rows_of(features, b, hook)
            if ra is not None and rb is not None and len(ra) and len(rb) and "r" in ra.columns:
                m = ra[["feature", "r"]].merge(rb[["feature", "r"]], on="feature", suffixes=("_a", "_b"))
                fig = F.fig_damage_scatter(1.0 - m["r_a"].to_numpy(float), 1.0 - m["r_b"].to_numpy(float), a, b,
                                           c, th["survived_above"], th["damaged_below"])
                if fig is not None:
                    name = f"fig_damage_{i}.png"
                    F.save_png(fig, out / name)
                    body.append(f"<h3>{H.esc(a)} vs {H.esc(b)}</h3>")
                    body.append(H.figure(name, f"damage score of {a} against {b}"))
            path = c.get("path")
            if path:
                prow = [[j, _params(s.get("params")), H.num(s.get("perplexity"))]
                        for j, s in enumerate(path, 1) if isinstance(s, dict)]
                body.append(f"<details><summary>Bisection path of {H.esc(b)} ({len(prow)} steps)</summary>"
                            + H.table(["step", "params", "perplexity"], prow, left=(1,)) + "</details>")

    # ------------------------------------------------------------------ top damaged features
    if entries and features is not None and len(features):
        body.append(f"<h2>Most damaged features (lowest r, top {top_n} per configuration)</h2>")
        for e in entries:
            rows_e = _rows_of(features, str(e.get("label")), str(e.get("hook") or ""))
            if rows_e is None or not len(rows_e) or "r" not in rows_e.columns:
                continue
            worst = rows_e.sort_values(["r", "feature"], kind="mergesort").head(top_n)
            cols = [c for c in ("feature", "r", "band", "silenced", "firing_rate", "mean_act", "peak_act")
                    if c in worst.columns]
            cols += [c for c in OPTIONAL_STATS if c in worst.columns and worst[c].notna().any()]
            fmt = {"r": ".4f", "firing_rate": ".4g", "mean_act": ".4g", "peak_act": ".4g"}
            rows = []
            for rec in worst[cols].to_dict("records"):
                row: list[Any] = []
                for c in cols:
                    v = rec[c]
                    if c == "band":
                        row.append(H.Raw(f'<span class="b-{H.esc(v)}">{H.esc(v)}</span>'))
                    elif c in ("feature",):
                        row.append(int(v))
                    elif c == "silenced":
                        row.append("yes" if bool(v) else "")
                    else:
                        row.append(H.num(v, fmt.get(c, ".4g")))
                rows.append(row)
            flag = ' <span class="flag">⚠ perplexity misses damage</span>' if e["misses"] else ""
            body.append(f"<h3>{H.esc(e['name'])}{flag}</h3>")
            body.append(H.table(cols, rows, left=(2,)))

    # ------------------------------------------------------------------ run facts
    body.append("<h2>Run</h2>")
    facts = _run_facts(result.run or {})
    if facts:
        body.append(H.table(["key", "value"], facts, left=(0, 1)))
    body.append("<details><summary>run.json</summary>" + H.pre_json(result.run or {}) + "</details>")
    if base:
        body.append("<details><summary>baseline</summary>" + H.pre_json(base) + "</details>")
    from .. import __version__
    body.append(f'<p class="note">Written by featsurv {H.esc(__version__)}. Self-contained: open it offline; '
                "the figures are the PNG files beside it.</p>")

    path = out / REPORT_FILE
    write_text_atomic(path, H.page(title, body))
    return path


__all__ = ["write_report", "REPORT_FILE"]
