"""Executors: ``local`` runs the jobs in this process one after another; ``ray`` runs one Ray Core
task per job, or for a split job an FP-state task and then one task per configuration (a worker
that dies has its task retried; a task failing with a user error is reported, not retried).
Both write the same pieces into the sweep directory."""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import FeatsurvError
from .jobs import Job
from .runner import run_job
from .split import fp_state_task, merge, piece_task, run_split_local

EXECUTORS = ("local", "ray")
Echo = Callable[[str], None]


class StopFlag:
    """The first Ctrl-C asks the sweep to stop after the current piece; a second one stops at once."""

    def __init__(self, echo: Echo):
        self.set, self.echo, self._old = False, echo, None

    def __enter__(self) -> "StopFlag":
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C is not ours to handle
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        self.echo("sweep: stopping after the current piece (Ctrl-C again to stop now)")

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Progress:
    """Jobs done/total and an ETA, on stderr."""

    def __init__(self, total: int, echo: Echo):
        self.total, self.done, self.echo, self.t0 = total, 0, echo, time.monotonic()

    def job_done(self, report: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        self.echo(f"sweep: job {self.done}/{self.total} {report['job']} done ({len(report['computed'])} computed, "
                  f"{len(report['skipped'])} skipped); elapsed {elapsed:.1f}s, ETA {eta:.1f}s")


def run_local(jobs: list[Job], out: Path, echo: Echo, quiet: bool = True, **_: Any) -> list[dict[str, Any]]:
    """Every job in this process, in order; stops cleanly after the current piece on Ctrl-C."""
    progress, reports = Progress(len(jobs), echo), []
    with StopFlag(echo) as stop:
        for job in jobs:
            on_piece = (lambda label, s, j=job: echo(f"sweep: {j.id}: {label} saved ({s:.1f}s)"))
            try:
                if job.split:
                    report = run_split_local(job, out, lambda: stop.set, on_piece, quiet)
                else:
                    report = run_job(job.to_dict(), str(out), should_stop=lambda: stop.set, quiet=quiet,
                                     on_piece=on_piece)
            except FeatsurvError as exc:
                report = {"job": job.id, "computed": [], "skipped": [], "interrupted": False, "error": exc.message}
            reports.append(report)
            if report["interrupted"]:
                break
            progress.job_done(report)
    return reports


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FeatsurvError("--executor ray needs Ray, which is not installed",
                            hint="Install the extra: pip install 'featsurv[ray]' (or run with --executor local)") from None
    return ray


def job_task(job_dict: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """What one Ray task runs: the job; a user error comes back as a report, never retried."""
    try:
        return run_job(job_dict, out_dir)
    except FeatsurvError as exc:
        return {"job": job_dict["id"], "computed": [], "skipped": [], "interrupted": False, "error": exc.message}


def start_ray(ray: Any, address: str | None) -> None:
    """Join the cluster at ``address``, or start a local one on 127.0.0.1 with 2 CPUs."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=2, address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False)


class RayRun:
    """The Ray tasks of a sweep: one per unsplit job; per split job an FP-state task, then (once it
    is done) one task per piece left. A job's report is complete when its last task is."""

    def __init__(self, ray: Any, out: Path, max_retries: int):
        self.ray, self.out, self.max_retries = ray, str(out), max_retries
        self.fns = {"job": ray.remote(job_task), "fp": ray.remote(fp_state_task), "piece": ray.remote(piece_task)}
        self.refs: dict[Any, tuple[str, Job]] = {}
        self.parts: dict[str, list[dict[str, Any]]] = {}
        self.open: dict[str, int] = {}

    def submit(self, kind: str, job: Job, *args: Any) -> None:
        gpus = 1 if str(job.options.get("device", "")).startswith("cuda") else 0
        opts = self.fns[kind].options(max_retries=self.max_retries, retry_exceptions=False, num_cpus=1, num_gpus=gpus)
        self.refs[opts.remote(job.to_dict(), *args, self.out)] = (kind, job)
        self.open[job.id] = self.open.get(job.id, 0) + 1

    def start(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.parts[job.id] = []
            self.submit("fp" if job.split else "job", job)

    def finished(self, ref: Any) -> dict[str, Any] | None:
        """Record a finished task; the job's report when it was the job's last task."""
        kind, job = self.refs.pop(ref)
        report = _result(self.ray, ref, job)
        self.parts[job.id].append(report)
        self.open[job.id] -= 1
        if kind == "fp" and not report.get("error"):
            for key in report.get("todo", []):
                self.submit("piece", job, key)
        if self.open[job.id]:
            return None
        return merge(job.id, self.parts[job.id]) if job.split else report

    def wait(self, progress: Progress) -> list[dict[str, Any]]:
        reports = []
        while self.refs:
            done, _ = self.ray.wait(list(self.refs), num_returns=1)
            for ref in done:
                report = self.finished(ref)
                if report is not None:
                    reports.append(report)
                    progress.job_done(report)
        return reports


def run_ray(jobs: list[Job], out: Path, echo: Echo, address: str | None = None, max_retries: int = 2,
            **_: Any) -> list[dict[str, Any]]:
    """Ray tasks (see RayRun); the pieces are written by the workers into ``out`` (a shared filesystem)."""
    ray = import_ray()
    start_ray(ray, address)
    try:
        run = RayRun(ray, out, max_retries)
        run.start(jobs)
        reports = run.wait(Progress(len(jobs), echo))
    except KeyboardInterrupt:
        echo("sweep: interrupted; finished pieces are saved, re-run the same command to resume")
        raise
    finally:
        if not address:
            ray.shutdown()
    order = {job.id: i for i, job in enumerate(jobs)}
    return sorted(reports, key=lambda r: order[r["job"]])


def _result(ray: Any, ref: Any, job: Job) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # retries spent (worker died each time) or a bug in the job
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        return {"job": job.id, "computed": [], "skipped": [], "interrupted": False, "error": why, "crash": True}


def run(executor: str, jobs: list[Job], out: Path, echo: Echo, **kwargs: Any) -> list[dict[str, Any]]:
    if executor == "ray":
        return run_ray(jobs, out, echo, **kwargs)
    return run_local(jobs, out, echo, **kwargs)
