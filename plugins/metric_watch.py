"""Metric ``watch``: the features a finding rests on (``--watch FILE`` on audit and compare).

The watch file (see featsurv.watch for the formats) is parsed before the model loads and checked
against the SAEs right after the FP pass (unknown hook points or ids stop the audit, exit 2,
before any configuration). After the run, summary.json gets a ``watched`` section: per
configuration, each watched feature's r, band and whether it survived, and the watched survival
fraction. The CLI prints it after the results table, and report.html shows it first.
"""
from __future__ import annotations

from typing import Any

from featsurv import Metric, Param, ReportSection, hookimpl

SURVIVAL = "survival"  # the metric whose per-feature r and survived_above the watch list reads


def _watch_list(options: dict[str, Any]) -> Any:
    from featsurv.watch import load_watch

    path = options.get("file")
    return load_watch(path) if path else None


def _readable_watch_file(path: Any) -> str | None:
    """Param check, run when the options are parsed (before anything loads)."""
    from featsurv import FeatsurvError
    from featsurv.watch import load_watch

    try:
        load_watch(path)
    except FeatsurvError as exc:
        return "a readable watch file (" + str(exc).rstrip(".") + ")"
    return None


def _all_features(hooks: dict[str, Any]) -> Any:
    """A features table naming every feature of every audited SAE (to check the list early)."""
    import numpy as np
    import pandas as pd

    parts = [pd.DataFrame({"hook": h, "feature": np.arange(s.sae.d_sae)}) for h, s in hooks.items()]
    return pd.concat(parts, ignore_index=True)


def _html(section: dict[str, Any]) -> str:
    from featsurv.report import html as H

    rows = []
    for c in section.get("configs") or []:
        lost = ", ".join(f"{f['feature']} @ {f['hook']}" + (f" ({f['name']})" if f.get("name") else "")
                         for f in c["not_survived"]) or "none"
        rows.append([c["config"], f"{c['n_survived']}/{c['n']}", H.pct(c["survived"]), lost])
    return (f"<p>{section['n']} watched feature(s); survived means r above {section['survived_above']:g}.</p>"
            + H.table(["configuration", "survived", "fraction", "not survived"], rows, left=(0, 3)))


class Watch(Metric):
    name = "watch"
    description = "whether the features of a watch list survived (--watch FILE); summary.json 'watched'"
    options = (Param("file", str, None, "watch list: hook,feature[,name[,note]] or feature ids, one per line",
                     flag="watch", check=_readable_watch_file),)
    summary_key = "watched"
    order = 5

    def baseline(self, fp: Any, options: dict[str, Any]) -> None:
        from featsurv.watch import resolve_watch

        items = _watch_list(options)
        if items is not None:  # unknown hook points or ids stop the audit before any configuration
            resolve_watch(_all_features(fp.hooks), items)

    def entry(self, entry: dict[str, Any], outcome: Any, baseline: dict[str, Any],
              options: dict[str, Any]) -> dict[str, Any] | None:
        """Per (configuration, hook point): how many of the watched features there survived."""
        items = _watch_list(options)
        hook = options.get("hook")
        survival = outcome.features.get(hook, {}).get(SURVIVAL)
        if items is None or survival is None:
            return None
        hooks = list((baseline.get("saes") or {}).keys()) or [hook]
        ids = sorted({i.feature for i in items if (i.hook or (hooks[0] if len(hooks) == 1 else None)) == hook})
        if not ids:
            return None
        above = (options.get("metric_options") or {}).get(SURVIVAL, {}).get("survived_above", 0.9)
        r = survival.per_feature["r"]
        n_surv = int(sum(1 for i in ids if r[i] == r[i] and r[i] > above))  # NaN (inactive): not survived
        return {"watched_n": len(ids), "watched_survived_n": n_surv, "watched_survived": n_surv / len(ids)}

    def row_notes(self, entry: dict[str, Any]) -> list[str]:
        if "watched_n" not in entry:
            return []
        return [f"watched: {entry['watched_survived_n']} of {entry['watched_n']} survived"]

    def analyze(self, run: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        from featsurv.watch import thresholds, watched_section

        items = _watch_list(options)
        if items is None or run.features is None or not len(run.features):
            return None
        return watched_section(run.features, items, thresholds(run.summary)["survived_above"])

    def text(self, summary: dict[str, Any]) -> list[str]:
        section = summary.get(self.summary_key)
        if not section:
            return []
        show_hook = len({f["hook"] for f in section.get("features", [])}) > 1
        out = [f"watched features ({section['n']}; survived: r > {section['survived_above']:g}):"]
        for c in section.get("configs") or []:
            lost = ", ".join(f"{f['feature']}" + (f" @ {f['hook']}" if show_hook else "")
                             + ("" if f["r"] is None else f" r={f['r']:.4f}") + f" {f['band']}"
                             for f in c["features"] if not f["survived"])
            out.append(f"  {c['config']}: {c['n_survived']} of {c['n']} survived ({c['survived']:.2%})"
                       + (f"; not survived: {lost}" if lost else ""))
        return out

    def report_sections(self, run: Any) -> list[ReportSection]:
        section = (run.summary or {}).get(self.summary_key)
        if not section:
            return []
        return [ReportSection("Watched features", "<h2>Watched features</h2>" + _html(section), order=1)]


@hookimpl
def register_metrics(register):
    register(Watch())
