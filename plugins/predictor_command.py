"""`featsurv predict RESULT_DIR`: cross-validated survival predictors on a finished audit."""
from __future__ import annotations

import click


@click.command("predict")
@click.argument("result_dir", metavar="RESULT_DIR")
@click.option("--folds", "-k", default=5, show_default=True, type=click.IntRange(min=2, max=100),
              help="Stratified cross-validation folds (lowered automatically for a tiny class).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the fold shuffle and LightGBM.")
@click.option("--statistics", type=click.Choice(["all", "core"]), default="all", show_default=True,
              help="all: every FP statistic the SAE gives; core: the reference study's four.")
@click.option("--no-report", is_flag=True, help="Do not re-render report.html.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored JSON instead of the table.")
def predict_cmd(result_dir: str, folds: int, seed: int, statistics: str, no_report: bool, as_json: bool) -> None:
    """Predict which features survive from FP statistics alone.

    For every configuration (and hook point) of a finished audit in RESULT_DIR, fits a logistic
    regression and LightGBM on the active features' FP statistics (rarity, log mean and peak
    activation, concentration, SAE weight norms when present) and reports stratified k-fold ROC
    AUC, plus the AUC of each statistic alone. Stores the result in summary.json under
    "predictors" and re-renders report.html.
    """
    from featsurv import FeatsurvError
    from featsurv.results import RunResult, dumps

    from .metric_predictor import Predictor, format_table, predict_run

    run = RunResult.load(result_dir)
    if run.features is None or len(run.features) == 0:
        raise FeatsurvError(f"{result_dir!r} holds no per-feature results (features.parquet is empty)",
                            hint="Run `featsurv audit` with at least one configuration first")
    progress = lambda msg: click.echo(msg, err=True)  # noqa: E731
    predictors = predict_run(run, k=folds, seed=seed, progress=progress, statistics=statistics)
    run.summary[Predictor.summary_key] = predictors
    render = None
    if not no_report:
        from featsurv.report import write_report

        render = lambda tmp: write_report(run, tmp)  # noqa: E731 - rendered into the folder before it is put in place
    run.save(render=render)  # summary, report and manifest replaced in one step
    click.echo(f"predictor: stored in {run.path / 'summary.json'}", err=True)
    click.echo(dumps(predictors), nl=False) if as_json else click.echo(format_table(predictors))
    if render is not None:
        click.echo(f"report: {run.path / 'report.html'}", err=True)
