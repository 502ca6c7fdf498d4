"""`featsurv analyze RUN [RUN2]` and `featsurv stability COMPRESSOR`: the reference study's phases 4 and 5."""
from __future__ import annotations

from typing import Any

import click

from featsurv.cli.common import audit_options


@click.command("analyze")
@click.argument("run_dir", metavar="RUN")
@click.argument("run2_dir", metavar="[RUN2]", required=False)
@click.option("--a", "label_a", default=None, help="Configuration A of RUN (default: its comparison's A, else its first).")
@click.option("--b", "label_b", default=None, help="Configuration B of RUN (default: its comparison's B, else its second).")
@click.option("--a2", "label_a2", default=None, help="Configuration A of RUN2 (default as for RUN).")
@click.option("--b2", "label_b2", default=None, help="Configuration B of RUN2 (default as for RUN).")
@click.option("--hook", default=None, help="Hook point of RUN (needed when it has several).")
@click.option("--hook2", default=None, help="Hook point of RUN2 (needed when it has several).")
@click.option("--names", default=None, metavar="NAME1[,NAME2]", help="Names of the runs in tables and figures (default: folder names).")
@click.option("--top", default=20, show_default=True, type=click.IntRange(1, 100000), help="Most disrupted features listed per configuration.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 100), help="Cross-validation folds of the predictor.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Folder for tables and figures (default featsurv-runs/TIME-analysis).")
@click.option("--json", "as_json", is_flag=True, help="Print analysis.json instead of the text.")
def analyze_cmd(run_dir: str, run2_dir: str | None, label_a: str | None, label_b: str | None, label_a2: str | None,
                label_b2: str | None, hook: str | None, hook2: str | None, names: str | None, top: int, folds: int,
                out_dir: str | None, as_json: bool) -> None:
    """The reference study's phase 4 threshold grid and phase 5 analyses of finished runs.

    For configuration A of RUN: survived/degraded/damaged % on the threshold grid {0.80, 0.85,
    0.90, 0.95} x {0.3, ..., 0.7} (every configuration), survival by quartile of each FP statistic,
    standardized logistic coefficients with cross-validated AUC, and the most disrupted features;
    with B: the firing-rate-decile table, the non-survived / damaged / degraded (0.5 <= r <= 0.9)
    overlap counts and Jaccard indices, and the r-vs-r scatter. With RUN2 (e.g. another model):
    the same for it, and the coefficients' sign agreement across the two runs. Writes parquet
    tables, analysis.json and PNG figures to --out.
    """
    from pathlib import Path

    from featsurv import FeatsurvError
    from featsurv.results import RunResult, check_out_dir, dumps, write_folder
    from featsurv.runs import default_out_dir

    from . import phase_analysis as A
    from . import phase_output as O

    paths = [p for p in (run_dir, run2_dir) if p]
    shown = [n.strip() for n in names.split(",")] if names else [Path(p).resolve().name for p in paths]
    if len(shown) != len(paths) or not all(shown):
        raise FeatsurvError(f"Bad --names {names!r}: {len(paths)} run(s) need {len(paths)} non-empty name(s)",
                            hint="Pass e.g. --names Pythia-70M,Gemma-2-2B")
    if run2_dir is None and (label_a2 or label_b2 or hook2):
        raise FeatsurvError("--a2, --b2 and --hook2 name configurations of RUN2, but no RUN2 was given",
                            hint="Pass a second result folder, or drop those options")
    out = check_out_dir(out_dir or default_out_dir("analysis"))
    runs = [RunResult.load(p) for p in paths]
    labels = [(label_a, label_b, hook), (label_a2, label_b2, hook2)]
    results = [A.analyze_run(run, name, a, b, h, top, folds) for run, name, (a, b, h) in zip(runs, shown, labels)]
    cross = A.cross_run(*results) if len(results) == 2 else None
    prefixes = ["run1_", "run2_"] if len(results) == 2 else [""]
    record = O.record_of(results, cross)
    write_folder(out, lambda tmp: O.write_all(tmp, results, prefixes, cross, record))
    click.echo(dumps(record), nl=False) if as_json else click.echo(O.text(results, cross))
    click.echo(f"analysis: {out}", err=True)


def _ints(value: str, flag: str, minimum: int = 0) -> list[int]:
    from featsurv import FeatsurvError

    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or any(v < minimum for v in out):
        raise FeatsurvError(f"Bad {flag} {value!r}", allowed=f"a comma list of whole numbers of {minimum} or more",
                            hint=f"Pass e.g. {flag} " + ("50000,100000,200000" if minimum else "0,1,2"))
    return out


def _pool(value: str | None) -> int | str | None:
    """--pool-tokens: a whole number of 1 or more, or ``all``."""
    from featsurv import FeatsurvError

    if value is None or value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise FeatsurvError(f"Bad --pool-tokens {value!r}", allowed="a whole number of 1 or more, or all",
                            hint="Pass e.g. --pool-tokens 400000, or --pool-tokens all (the whole dataset)")
    return n


def stability_configuration(registry: Any, compressor: str, params: tuple[str, ...], preset: Any) -> dict[str, Any]:
    """The one configuration measured: -p, else the preset's compare A (same compressor), else its audit's."""
    from featsurv import FeatsurvError
    from featsurv.cli.common import parse_configurations

    preset_params = None
    if preset and not params:
        if preset.compare.get("a") == compressor:
            preset_params = preset.compare.get("a_params")
        elif preset.audit.get("compressor") == compressor:
            preset_params = preset.audit.get("params")
    configs = parse_configurations(registry, compressor, params, preset_params)
    if len(configs) != 1:
        raise FeatsurvError(f"stability measures one configuration; the parameters give {len(configs)}",
                            hint="Give each -p key one value, e.g. -p bits=6")
    return configs[0][1]


@click.command("stability")
@click.argument("compressor")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Compressor parameter (one value each).")
@click.option("--budgets", default="50000,100000,200000", show_default=True, help="Token budgets: the first N tokens of the pool each.")
@click.option("--subset-tokens", default=100000, show_default=True, type=int, help="Tokens of each random subset (and of the null test).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds of the random subsets.")
@click.option("--pool-tokens", default=None, metavar="N|all", help="Tokens read from the dataset, the budgets' "
              "prefixes and the subsets' draws come from them; all: the whole dataset, as the reference "
              "(default: twice the largest budget or subset).")
@click.option("--no-null", is_flag=True, help="Skip the FP-vs-FP null test.")
@click.option("--json", "as_json", is_flag=True, help="Print stability.json instead of the text.")
@audit_options
def stability_cmd(compressor: str, params: tuple[str, ...], budgets: str, subset_tokens: int, seeds: str,
                  pool_tokens: str | None, no_null: bool, as_json: bool, **kwargs: Any) -> None:
    """The reference study's phase 4 stability ablations of one configuration (default RTN INT6 with a reference preset).

    Measures the configuration on the first N tokens for each --budgets value, on random subsets
    of --subset-tokens tokens (one per --seeds value, contexts drawn from the pool as the
    reference draws them), and an identity configuration (FP vs FP: every active feature must
    have r = 1); then the survival/damage threshold grid on the largest budget. Writes
    stability.parquet, stability_features.parquet, threshold_grid.parquet, stability.json and
    fig_stability*.png to --out. Token counts come from --budgets, --subset-tokens and
    --pool-tokens (not --tokens).
    """
    from featsurv import FeatsurvError

    from .phase_stability_run import stability_main

    if kwargs.get("n_tokens") is not None:
        raise FeatsurvError(f"stability does not take --tokens ({kwargs['n_tokens']})",
                            hint="Set the token counts with --budgets, --subset-tokens and --pool-tokens")
    plan_values = (_ints(budgets, "--budgets", 1), subset_tokens, _ints(seeds, "--seeds"), _pool(pool_tokens),
                   not no_null)
    stability_main(compressor, params, plan_values, kwargs, as_json)
