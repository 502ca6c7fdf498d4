"""Running a whole audit (a sweep of configurations) and assembling its result directory."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

from .audit import AuditOptions, AuditSession, Outcome
from .results import RunResult, check_out_dir, write_run

Configuration = tuple[str, dict[str, Any]]


def default_out_dir(kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("featsurv-runs") / f"{stamp}-{kind}"


def assemble(session: AuditSession, outcomes: Sequence[Outcome], command: str,
             comparisons: list[dict[str, Any]] | None = None, extra_run: dict[str, Any] | None = None) -> RunResult:
    """Build the in-memory result of a run (summary, per-feature table, run record)."""
    import pandas as pd

    o = session.options
    results = [e for out in outcomes for e in session.summary_entries(out)]
    summary: dict[str, Any] = {
        "baseline": session.baseline,
        "options": {"ppl_tolerance": o.ppl_tolerance, "survival_target": o.survival_target,
                    "min_firing_rate": o.min_firing_rate, "survived_above": o.survived_above,
                    "damaged_below": o.damaged_below},
        "results": results,
    }
    if comparisons is not None:
        summary["comparisons"] = comparisons
    frames = [session.feature_frame(out) for out in outcomes if out.features]
    features = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    run = session.run_record(command, {"configurations": [
        {"label": out.label, "compressor": out.compressor, "params": out.params, "seconds": out.seconds}
        for out in outcomes], **(extra_run or {})})
    return RunResult(run, summary, features)


def finish(session: AuditSession, result: RunResult, out_dir: str | Path | None, kind: str,
           analyses: Sequence[str] = ()) -> RunResult:
    """Run post-hoc analyses, write the directory atomically, then the report."""
    options = session.options.metric_options()
    for name in analyses:
        metric = session.registry.get("metrics", name)
        session.progress(f"analysis: {name}")
        out = metric.analyze(result, options)
        if out is not None:
            result.summary[{"predictor": "predictors"}.get(name, name)] = out
    try:
        from .report import write_report
    except ImportError:  # report plugin not installed
        write_report = None

    def render(tmp: Path) -> None:  # the report is built with the data, before the folder is put in place
        if write_report is not None:
            session.progress("writing report")
            write_report(result, tmp)

    write_run(out_dir or default_out_dir(kind), result, render=render)
    return result


def run_audit(options: AuditOptions, configurations: Sequence[Configuration], *, out_dir: str | Path | None = None,
              command: str = "audit", analyses: Sequence[str] = (), session: AuditSession | None = None) -> RunResult:
    """Audit every configuration against the FP model; write and return the result."""
    session = session or AuditSession(options)
    if out_dir is not None:
        check_out_dir(out_dir)  # refuse a bad --out before any work
    session.prepare()
    outcomes = [session.run(name, params) for name, params in configurations]
    result = assemble(session, outcomes, command)
    return finish(session, result, out_dir, "audit", analyses)
