"""Running a whole audit (a sweep of configurations) and writing its result directory."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

from .assembly import assemble
from .audit import AuditOptions, AuditSession
from .results import RunResult, check_out_dir, write_run
from .tables import write_parquet

Configuration = tuple[str, dict[str, Any]]


def default_out_dir(kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("featsurv-runs") / f"{stamp}-{kind}"


def needs_calibration(session: AuditSession, configurations: Sequence[Configuration]) -> bool:
    return any(session.compressor(name).needs_calibration_for(params) for name, params in configurations)


def finish(session: AuditSession, result: RunResult, out_dir: str | Path | None, kind: str) -> RunResult:
    """Run the metrics' analyses, then write the directory (tables, report, manifest) in one step."""
    session.metrics.analyze(result, session.progress)
    if out_dir is False:
        return result
    for name, table in (result.extra.get("tables") or {}).items():  # written with the data, listed in the manifest
        result.files[name] = lambda path, table=table: write_parquet(table, path)
    from .report import write_report

    def render(tmp: Path) -> None:  # the report is built with the data, before the folder is put in place
        session.progress("writing report")
        write_report(result, tmp, metrics=session.metrics)

    write_run(out_dir or default_out_dir(kind), result, render=render)
    return result


def run_audit(options: AuditOptions, configurations: Sequence[Configuration], *, out_dir: str | Path | None = None,
              command: str = "audit", session: AuditSession | None = None) -> RunResult:
    """Audit every configuration against the FP model; write and return the result."""
    session = session or AuditSession(options)
    if out_dir not in (None, False):
        check_out_dir(out_dir)  # refuse a bad --out before any work
    session.progress.plan(len(configurations))
    session.prepare(needs_calibration(session, configurations))
    outcomes = [session.run(name, params) for name, params in configurations]
    result = assemble(session, outcomes, command)
    return finish(session, result, out_dir, "audit")
