"""`featsurv overlap RESULT_DIR A B`: do two configurations damage the same features?"""
from __future__ import annotations

import click


@click.command("overlap")
@click.argument("result_dir", metavar="RESULT_DIR")
@click.argument("label_a", metavar="LABEL_A")
@click.argument("label_b", metavar="LABEL_B")
@click.option("--hook", default=None, help="Hook point to compare at (needed when the run has several).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def overlap_cmd(result_dir: str, label_a: str, label_b: str, hook: str | None, as_json: bool) -> None:
    """Overlap of the features two configurations damage.

    Over the active features: Jaccard of the non-survived sets (r <= 0.9) and of the damaged
    sets (r < 0.5), and Spearman and Pearson correlation of the damage scores 1 - r, with the
    counts behind them. Labels are those of the run's configurations (quote them).
    """
    from featsurv.results import RunResult, dumps

    from .metric_overlap import format_overlap, overlap_between

    run = RunResult.load(result_dir)
    res = overlap_between(run, label_a, label_b, hook)
    click.echo(dumps(res), nl=False) if as_json else click.echo(format_overlap(res))
