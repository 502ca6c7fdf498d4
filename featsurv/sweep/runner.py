"""Running one job: skip its verified pieces, prepare once (one FP pass), write each piece as it finishes."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from .jobs import Job, Piece
from .store import discard_piece, piece_done, piece_path

#: test hook: "N:PATH" makes the process write its PID to PATH and wait after its N-th piece
#: (only when PATH does not exist yet, so a retried or resumed run goes on)
HOLD_VAR = "FEATSURV_SWEEP_HOLD"


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch threads (results do not depend on the machine's core count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _maybe_hold(done: int) -> None:
    spec = os.environ.get(HOLD_VAR, "")
    count, _, path = spec.partition(":")
    if not path or not count.isdigit() or int(count) != done:
        return
    try:  # exclusive: of several processes reaching the point, one holds
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    deadline = time.monotonic() + 600
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def pieces_to_do(job: Job, out: Path, report: dict[str, Any]) -> list[Piece]:
    """The job's pieces that are not finished and verified (a partial or corrupt one is discarded)."""
    todo = []
    for piece in job.pieces:
        path = piece_path(out, job, piece)
        if piece_done(path, piece.key):
            report["skipped"].append(piece.key)
        else:
            discard_piece(path)  # partial or corrupt: recomputed from scratch
            todo.append(piece)
    return todo


def write_piece(session: Any, outcome: Any, job: Job, piece: Piece, out: Path) -> Path:
    """One configuration's run folder (data, metric tables, manifest), written atomically."""
    from ..assembly import assemble
    from ..results import write_run
    from ..tables import write_parquet

    result = assemble(session, [outcome], f"sweep {job.model}",
                      extra_run={"sweep_job": job.id, "sweep_piece": piece.key, "sweep_model": job.model})
    session.metrics.analyze(result, session.progress)
    for name, table in (result.extra.get("tables") or {}).items():
        result.files[name] = lambda path, table=table: write_parquet(table, path)
    return write_run(piece_path(out, job, piece), result)


def run_job(job_dict: dict[str, Any], out_dir: str, *, should_stop: Callable[[], bool] = lambda: False,
            on_piece: Callable[[str, float], None] | None = None, quiet: bool = True) -> dict[str, Any]:
    """Run a job's unfinished pieces; returns {job, computed, skipped, interrupted}."""
    from ..audit import AuditSession
    from ..options import make_options
    from ..progress import Progress
    from ..runs import needs_calibration

    job, out = Job.from_dict(job_dict), Path(out_dir)
    report: dict[str, Any] = {"job": job.id, "computed": [], "skipped": [], "interrupted": False}
    todo = pieces_to_do(job, out, report)
    if not todo or should_stop():
        report["interrupted"] = bool(todo)
        return report
    with torch_threads(job.threads):
        session = AuditSession(make_options(**job.options).validate(), progress=Progress(quiet=quiet))
        session.prepare(needs_calibration(session, [(p.compressor, p.params) for p in todo]))
        for piece in todo:
            if should_stop():
                report["interrupted"] = True
                break
            t0 = time.perf_counter()
            write_piece(session, session.run(piece.compressor, piece.params), job, piece, out)
            report["computed"].append(piece.key)
            if on_piece:
                on_piece(piece.label, time.perf_counter() - t0)
            _maybe_hold(len(report["computed"]))
    return report
