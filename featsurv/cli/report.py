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
    from ..report import write_report
    from ..results import RunResult

    run = RunResult.load(result_dir)
    click.echo(str(write_report(run, out_dir, top_n=top)))


command = report_cmd
