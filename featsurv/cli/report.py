"""`featsurv report RESULT_DIR`: (re)write report.html and its figures."""
from __future__ import annotations

import click


@click.command("report")
@click.argument("result_dir", metavar="RESULT_DIR")
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="Write the report here instead of into RESULT_DIR.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
              help="Most damaged features listed per configuration.")
def report_cmd(result_dir: str, out_dir: str | None, top: int) -> None:
    """Render the offline HTML report of a finished run and print its path."""
    from pathlib import Path

    from ..report import REPORT_FILE, write_report
    from ..results import RunResult, write_folder

    run = RunResult.load(result_dir)
    render = lambda tmp: write_report(run, tmp, top_n=top)  # noqa: E731 - built before the folder is put in place
    if out_dir is None or Path(out_dir).expanduser().resolve() == run.path.resolve():
        folder = run.save(render=render)  # the run's folder, rewritten in one step with its manifest
    else:
        folder = write_folder(out_dir, render)
    click.echo(str(folder / REPORT_FILE))


command = report_cmd
