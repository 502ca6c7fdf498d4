"""`featsurv predict RESULT_DIR`: cross-validated survival predictors on a finished audit."""
from __future__ import annotations

import click

from ..errors import FeatsurvError


def metric_module(name: str):
    """The module of the metric plugin registered as ``name``, found through the plugin registry."""
    import sys

    from ..plugins import get_registry

    metric = get_registry().get("metrics", name)  # unknown or disabled: a clear error
    return sys.modules[type(metric).__module__]


@click.command("predict")
@click.argument("result_dir", metavar="RESULT_DIR")
@click.option("--folds", "-k", default=5, show_default=True, type=click.IntRange(min=2),
              help="Stratified cross-validation folds (lowered automatically for a tiny class).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fold shuffle and LightGBM.")
@click.option("--no-report", is_flag=True, help="Do not re-render report.html.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored JSON instead of the table.")
def predict_cmd(result_dir: str, folds: int, seed: int, no_report: bool, as_json: bool) -> None:
    """Predict which features survive from FP statistics alone.

    For every configuration (and hook) of a finished audit in RESULT_DIR, fits a logistic
    regression and LightGBM on the active features' FP statistics (rarity, log mean and peak
    activation, concentration, SAE weight norms when present) and reports stratified k-fold ROC
    AUC, plus the AUC of each statistic alone. Stores the result in summary.json under
    "predictors" and re-renders report.html.
    """
    from ..results import RunResult, dumps

    run = RunResult.load(result_dir)
    if run.features is None or len(run.features) == 0:
        raise FeatsurvError(f"{result_dir!r} holds no per-feature results (features.parquet is empty)",
                            hint="Run `featsurv audit` with at least one configuration first")
    mod = metric_module("predictor")
    progress = lambda msg: click.echo(msg, err=True)  # noqa: E731
    predictors = mod.predict_run(run, k=folds, seed=seed, progress=progress)
    run.summary["predictors"] = predictors
    render = None
    if not no_report:
        from ..report import write_report

        render = lambda tmp: write_report(run, tmp)  # noqa: E731 - rendered into the folder before it is put in place
    run.save(render=render)  # summary, report and manifest replaced in one step
    click.echo(f"predictor: stored in {run.path / 'summary.json'}", err=True)
    if as_json:
        click.echo(dumps(predictors), nl=False)
    else:
        click.echo(mod.format_table(predictors))
    if render is not None:
        click.echo(f"report: {run.path / 'report.html'}", err=True)
