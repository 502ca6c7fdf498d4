"""Split jobs (``split = "configurations"``): the FP pass runs once and its state is saved in
DIR/fp/JOB; then each configuration runs as its own task (local: one after another; ray: in
parallel) that loads the model and that state instead of running the FP pass again.

The FP state is a verified folder like a piece (manifest written last): a missing or corrupt one
is recomputed by the next FP-state task, and a piece task that finds none usable runs the FP
pass itself, so a piece's result never depends on where its FP state came from.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ..errors import FeatsurvError
from .jobs import Job
from .runner import _maybe_hold, pieces_to_do, torch_threads, write_piece
from .store import discard_piece, fp_state_path, piece_done, piece_path


def _session(job: Job, quiet: bool) -> Any:
    from ..audit import AuditSession
    from ..options import make_options
    from ..progress import Progress

    return AuditSession(make_options(**job.options).validate(), progress=Progress(quiet=quiet))


def _calibration(session: Any, job: Job) -> bool:
    """Whether calibration tokens are cut: decided on all the job's pieces, so every task has the same tokens."""
    from ..runs import needs_calibration

    return needs_calibration(session, [(p.compressor, p.params) for p in job.pieces])


def _report(job: Job) -> dict[str, Any]:
    return {"job": job.id, "computed": [], "skipped": [], "interrupted": False}


def state_verified(folder: Path, job_id: str) -> bool:
    """True when ``folder`` holds a complete FP state of this job (manifest and checksums)."""
    from .. import manifest as M
    from ..fp_state import ARRAYS_FILE, KIND, STATE_FILE

    try:
        manifest = M.read(folder, str(folder))
        M.verify(folder, manifest, str(folder), [STATE_FILE, ARRAYS_FILE])
        import json

        tree = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (FeatsurvError, OSError, ValueError):
        return False
    return manifest.get("kind") == KIND and isinstance(tree, dict) and tree.get("job") == job_id


def run_fp_state(job_dict: dict[str, Any], out_dir: str, quiet: bool = True) -> dict[str, Any]:
    """The first task of a split job: the pieces left (``todo``) and the FP state they load
    (computed and saved unless a verified one is there; ``fp_state``: computed, verified, not needed)."""
    from ..fp_state import save_state

    job, out = Job.from_dict(job_dict), Path(out_dir)
    report = {**_report(job), "fp_state": "not needed"}
    report["todo"] = [p.key for p in pieces_to_do(job, out, report)]
    if not report["todo"]:
        return report
    path = fp_state_path(out, job)
    if state_verified(path, job.id):
        report["fp_state"] = "verified"
        return report
    with torch_threads(job.threads):
        session = _session(job, quiet)
        session.prepare(_calibration(session, job))
        save_state(session, path, {"job": job.id})
    report["fp_state"] = "computed"
    return report


def run_piece(job_dict: dict[str, Any], key: str, out_dir: str, quiet: bool = True, held: int = 1) -> dict[str, Any]:
    """One configuration of a split job as its own task: load the model and the FP state, measure, save.
    ``held``: the piece's number for the test hold (runner.HOLD_VAR)."""
    from ..fp_state import prepare_from_state

    job, out = Job.from_dict(job_dict), Path(out_dir)
    piece = next(p for p in job.pieces if p.key == key)
    report, path = _report(job), piece_path(out, job, piece)
    if piece_done(path, key):
        report["skipped"].append(key)
        return report
    discard_piece(path)
    with torch_threads(job.threads):
        session = _session(job, quiet)
        report["fp_state_loaded"] = prepare_from_state(session, fp_state_path(out, job), _calibration(session, job))
        write_piece(session, session.run(piece.compressor, piece.params), job, piece, out)
    report["computed"].append(key)
    _maybe_hold(held)
    return report


def merge(job_id: str, reports: list[dict[str, Any]], interrupted: bool = False) -> dict[str, Any]:
    """One job report from its FP-state task and piece tasks."""
    out: dict[str, Any] = {"job": job_id, "computed": [], "skipped": [], "interrupted": interrupted}
    for r in reports:
        out["computed"] += r.get("computed", [])
        out["skipped"] += r.get("skipped", [])
        out["interrupted"] = out["interrupted"] or bool(r.get("interrupted"))
        if r.get("error") and not out.get("error"):
            out["error"] = r["error"]
        if r.get("crash"):
            out["crash"] = True
        if "fp_state" in r:
            out["fp_state"] = r["fp_state"]
    out["fp_state_loaded"] = sum(1 for r in reports if r.get("fp_state_loaded"))
    return out


def run_split_local(job: Job, out: Path, should_stop: Callable[[], bool],
                    on_piece: Callable[[str, float], None] | None, quiet: bool = True) -> dict[str, Any]:
    """A split job in this process: the FP-state task, then each piece task in turn."""
    first = run_fp_state(job.to_dict(), str(out), quiet)
    reports, labels = [first], {p.key: p.label for p in job.pieces}
    for n, key in enumerate(first["todo"], 1):
        if should_stop():
            return merge(job.id, reports, interrupted=True)
        t0 = time.perf_counter()
        reports.append(run_piece(job.to_dict(), key, str(out), quiet, held=n))
        if on_piece:
            on_piece(labels[key], time.perf_counter() - t0)
    return merge(job.id, reports)


def _guard(job_dict: dict[str, Any], call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return call()
    except FeatsurvError as exc:  # a user error: reported, never retried
        return {"job": job_dict["id"], "computed": [], "skipped": [], "interrupted": False, "error": exc.message}


def fp_state_task(job_dict: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """What a Ray task runs for a split job's FP state."""
    return _guard(job_dict, lambda: run_fp_state(job_dict, out_dir))


def piece_task(job_dict: dict[str, Any], key: str, out_dir: str) -> dict[str, Any]:
    """What a Ray task runs for one piece of a split job."""
    return _guard(job_dict, lambda: run_piece(job_dict, key, out_dir))
