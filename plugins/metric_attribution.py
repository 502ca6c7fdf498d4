"""Metric ``attribution``: per-group numbers of a `featsurv attribute` run, computed on the finished run.

`featsurv attribute` records in ``summary["attribution"]`` which configuration compressed which
group (alone, its complement, everything). ``analyze`` reads the summary entries of those
configurations and adds, per (group, hook point): the survived fraction and its loss, mean r,
mean damage ``1 - mean r``, the damaged fraction, the perplexity change; with complements, the
marginal loss (``survived(all but g) - survived(all)``) and the interaction (marginal - alone).
Per feature (features.parquet, ``attribution.*``): the group whose compression alone gives the
lowest r (none when no group damages it), that damage, its share of the feature's summed single-group damage, and whether the
feature is damaged when everything is compressed. Runs without an attribution record are untouched.
"""
from __future__ import annotations

from typing import Any

from featsurv import Metric, hookimpl

from . import attribution_report as presentation

FIELDS = ("survived", "mean_r", "damaged", "perplexity_change")


def _num(v: Any) -> float | None:
    import math

    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def group_row(group: dict[str, Any], hook: str, alone: dict[str, Any], total: int,
              complement: dict[str, Any] | None, everything: dict[str, Any] | None) -> dict[str, Any]:
    """One (group, hook point) row of the attribution table."""
    row: dict[str, Any] = {"group": group["name"], "hook": hook, "n_params": group["n_params"],
                           "param_share": group["n_params"] / total if total else None,
                           **{k: _num(alone.get(k)) for k in FIELDS}}
    row["lost"] = _sub(1.0, row["survived"])
    row["mean_damage"] = _sub(1.0, row["mean_r"])
    if complement is not None and everything is not None:
        for k in FIELDS:
            row[f"complement_{k}"] = _num(complement.get(k))
        row["marginal_lost"] = _sub(row["complement_survived"], _num(everything.get("survived")))
        row["interaction"] = _sub(row["marginal_lost"], row["lost"])
    return row


def ranking(rows: list[dict[str, Any]]) -> list[str]:
    """Groups from most to least damaging alone: survived fraction lost, then mean damage."""
    key = lambda r: (-(r["lost"] if r["lost"] is not None else -1.0),  # noqa: E731
                     -(r["mean_damage"] if r["mean_damage"] is not None else -1.0))
    return [r["group"] for r in sorted(rows, key=key)]


def attribution_table(summary: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Rows per (group, hook point), rankings per hook point and over all of them, totals."""
    entries = {(e.get("label"), e.get("hook")): e for e in summary.get("results") or [] if isinstance(e, dict)}
    configs = record.get("configurations") or []
    label = {(c["kind"], c.get("group")): c["label"] for c in configs}
    hooks = list(dict.fromkeys(e.get("hook") for e in summary.get("results") or [] if e.get("hook")))
    total = sum(g["n_params"] for g in record.get("groups") or [])
    rows, rank, totals = [], {}, {}
    for hook in hooks:
        everything = entries.get((label.get(("all", None)), hook))
        per_hook = [group_row(g, hook, entries.get((label.get(("group", g["name"])), hook), {}), total,
                              entries.get((label.get(("complement", g["name"])), hook)), everything)
                    for g in record.get("groups") or []]
        rows += per_hook
        rank[hook] = ranking(per_hook)
        totals[hook] = {"sum_lost_alone": sum(r["lost"] or 0.0 for r in per_hook),
                        "lost_all": _sub(1.0, _num((everything or {}).get("survived")))}
    overall: dict[str, float] = {}
    for r in rows:
        overall[r["group"]] = max(overall.get(r["group"], -1.0), r["lost"] if r["lost"] is not None else -1.0)
    return {"rows": rows, "ranking": rank, "totals": totals,
            "overall_ranking": sorted(overall, key=lambda g: -overall[g])}


def feature_attribution(features: Any, record: dict[str, Any]) -> Any:
    """features.parquet with ``attribution.group``, ``.damage``, ``.share``, ``.damaged_all`` per (hook, feature)."""
    import numpy as np
    import pandas as pd

    if features is None or len(features) == 0 or not {"r", "active", "config", "hook"} <= set(features.columns):
        return features
    configs = record.get("configurations") or []
    alone = {c["label"]: c["group"] for c in configs if c["kind"] == "group"}
    everything = next((c["label"] for c in configs if c["kind"] == "all"), None)
    parts = []
    for hook, rows in features[features.config.isin(alone)].groupby("hook", sort=False):
        r = rows.pivot(index="feature", columns="config", values="r")[list(alone)]
        damage = (1.0 - r.to_numpy(float)).clip(min=0.0)
        active = rows.groupby("feature")["active"].first().reindex(r.index).to_numpy(bool)
        damage = np.where(np.isnan(damage), 0.0, damage)
        worst = damage.argmax(axis=1)
        top = damage[np.arange(len(r)), worst]
        share = np.divide(top, damage.sum(axis=1), out=np.zeros_like(top), where=damage.sum(axis=1) > 0)
        named = active & (top > 0)  # an undamaged feature has no group to blame
        part = pd.DataFrame({"hook": hook, "feature": r.index.to_numpy(),
                             "attribution.group": np.where(named, np.array(list(alone.values()), dtype=object)[worst], None),
                             "attribution.damage": np.where(active, top, np.nan),
                             "attribution.share": np.where(active, share, np.nan)})
        if everything is not None and "band" in features.columns:
            band = features[(features.config == everything) & (features.hook == hook)].set_index("feature")["band"]
            part["attribution.damaged_all"] = (band.reindex(part.feature).to_numpy() == "damaged") & active
        parts.append(part)
    if not parts:
        return features
    cols = [c for c in features.columns if not c.startswith("attribution.")]
    return features[cols].merge(pd.concat(parts, ignore_index=True), on=["hook", "feature"], how="left")


class Attribution(Metric):
    name = "attribution"
    description = "Per-group damage of a `featsurv attribute` run (table, heatmap, per-feature worst group)"
    order = 80

    def analyze(self, run: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        record = (run.summary or {}).get("attribution")
        if not isinstance(record, dict) or "configurations" not in record:
            return None
        run.features = feature_attribution(run.features, record)
        return {**record, **attribution_table(run.summary, record)}

    def text(self, summary):
        return presentation.text(summary)

    def report_sections(self, run):
        return presentation.report_sections(run)


@hookimpl
def register_metrics(register):
    register(Attribution())
