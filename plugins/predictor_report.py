"""The predictor's section of report.html: ROC curves and the AUC table."""
from __future__ import annotations

from typing import Any

from featsurv import ReportSection


def _auc(res: dict[str, Any], model: str) -> str:
    from featsurv.report import html as H

    sub = res.get(model)
    if isinstance(sub, dict) and "auc_mean" in sub:
        return f"{H.num(sub['auc_mean'])} ± {H.num(sub['auc_std'])}"
    return "skipped" + (f": {sub['skipped']}" if isinstance(sub, dict) and sub.get("skipped") else "")


def report_section(predictors: Any) -> ReportSection | None:
    from featsurv.report import figures as F
    from featsurv.report import html as H

    if not isinstance(predictors, dict) or not predictors:
        return None
    parts, files = [], {}
    fig = F.fig_roc(predictors)
    if fig is not None:
        files["fig_roc.png"] = F.png_bytes(fig)
        parts.append(H.figure("fig_roc.png", "ROC curves of the survival predictors"))
    rows = []
    for key, res in predictors.items():
        marg = ", ".join(f"{m['statistic']} {H.num(m.get('auc'))}" for m in (res.get("marginal") or [])[:4])
        rows.append([key, res.get("n", ""), res.get("n_survived", ""), res.get("k", ""), _auc(res, "logistic"),
                     _auc(res, "lightgbm"), marg or (res.get("skipped") or "")])
    parts.append(H.table(["configuration", "active", "survived", "folds", "logistic AUC", "LightGBM AUC",
                          "marginal AUC (top 4, ranked by |AUC - 0.5|)"], rows, left=(0, 4, 5, 6)))
    parts.append('<p class="note">Stratified k-fold cross-validated ROC AUC (mean ± std over folds); the scaler '
                 "of the logistic model is fitted inside each fold. Curves: pooled out-of-fold scores. Marginal "
                 "AUC &gt; 0.5: higher values go with survival.</p>")
    return ReportSection("Predicting survival from FP statistics", "\n".join(parts), files, order=60)
