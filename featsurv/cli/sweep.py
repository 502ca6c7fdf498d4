"""`featsurv sweep SWEEP.toml`: a grid of models x SAE sets x configurations, resumable."""
from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import FeatsurvError


def _finish(ctx: click.Context, reports: list[dict[str, Any]], out: Any, total: int) -> None:
    """Print what was done; exit 2 (user error in a job), 1 (a job crashed), 130 (interrupted)."""
    from ..sweep.table import write_table

    skipped = sum(len(r["skipped"]) for r in reports)
    computed = sum(len(r["computed"]) for r in reports)
    click.echo(f"sweep: {skipped} finished piece(s) skipped (verified), {computed} computed, of {total}")
    failed = [r for r in reports if r.get("error")]
    for r in failed:
        click.echo(f"sweep: job {r['job']} failed: {r['error']}", err=True)
    if failed:
        click.echo("sweep: sweep.parquet not written; fix the failing job(s) and re-run to finish", err=True)
        ctx.exit(1 if any(r.get("crash") for r in failed) else 2)
    if any(r["interrupted"] for r in reports) or len(reports) < len(_jobs(out)):
        click.echo(f"sweep: stopped; finished pieces are saved in {out}; re-run the same command to resume", err=True)
        ctx.exit(130)
    path = write_table(out)
    click.echo(f"sweep: done; results in {path}")


def _jobs(out: Any) -> list[Any]:
    from ..sweep.store import read_index

    return read_index(out)["jobs"]


@click.command("sweep")
@click.argument("sweep_file", metavar="SWEEP.toml")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Sweep directory (default featsurv-runs/sweep-NAME); re-running with it resumes.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: in this process, one job after another; ray: one Ray task per job "
                   "(per configuration for split jobs).")
@click.option("--address", default=None, help="Ray cluster to join (ray executor; default: a local 2-CPU cluster).")
@click.option("--plan", is_flag=True, help="Print the jobs, their count and a forward-pass estimate; run nothing.")
@click.option("--force", is_flag=True, help="Resume even though the sweep file changed (changed entries run anew).")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.pass_context
def sweep_cmd(ctx: click.Context, sweep_file: str, out_dir: str | None, executor: str, address: str | None,
              plan: bool, force: bool, quiet: bool) -> None:
    """Run every model x SAE set x configuration of SWEEP.toml (format: docs/sweeps.md).

    One job per model: one FP pass, then each configuration, each saved as soon as it finishes.
    Re-running the same command skips verified pieces. Exit 2: bad sweep file, nothing run.
    """
    from pathlib import Path

    from ..sweep import executors
    from ..sweep.jobs import plan_jobs, plan_text, slug
    from ..sweep.spec import load_spec
    from ..sweep.store import open_sweep

    if address and executor != "ray":
        raise FeatsurvError("--address is for --executor ray", hint="Add --executor ray, or drop --address")
    spec = load_spec(sweep_file)
    jobs = plan_jobs(spec)
    if plan:
        click.echo(plan_text(spec, jobs))
        return
    if executor == "ray":
        executors.import_ray()  # a clear exit 2 before any work
    out = open_sweep(out_dir or Path("featsurv-runs") / f"sweep-{slug(spec.name)}", spec, jobs, force)
    echo = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    reports = executors.run(executor, jobs, out, echo, address=address, max_retries=spec.max_retries)
    sys.stdout.flush()
    _finish(ctx, reports, out, sum(len(j.pieces) for j in jobs))


command = sweep_cmd
