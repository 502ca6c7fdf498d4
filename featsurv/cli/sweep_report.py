"""`featsurv sweep-report SWEEP_DIR`: figures across a finished sweep's grid."""
from __future__ import annotations

import click


@click.command("sweep-report")
@click.argument("sweep_dir", metavar="SWEEP_DIR")
@click.option("--out", "out_dir", default=None, metavar="DIR", help="Report folder (default SWEEP_DIR/report).")
@click.option("--value", default="survived", show_default=True, help="Column of sweep.parquet to draw.")
def sweep_report_cmd(sweep_dir: str, out_dir: str | None, value: str) -> None:
    """Heatmap hook point x configuration per model and the value vs each compressor's knob."""
    from pathlib import Path

    from ..errors import FeatsurvError
    from ..plugins import get_registry
    from ..results import write_folder
    from ..sweep.report import render_report
    from ..sweep.store import read_index
    from ..sweep.table import sweep_frame

    out = Path(sweep_dir).expanduser().resolve()
    index = read_index(out)
    df = sweep_frame(out)  # from the verified pieces, not a possibly stale sweep.parquet
    if value not in df.columns:
        raise FeatsurvError(f"sweep.parquet has no column {value!r}", allowed=[c for c in df.columns if c != "piece"],
                            hint="Pass --value with one of them")
    folder = write_folder(out_dir or out / "report",
                          lambda tmp: render_report(df, tmp, get_registry(), value, f"featsurv sweep {index['name']}"))
    click.echo(str(folder / "report.html"))


command = sweep_report_cmd
