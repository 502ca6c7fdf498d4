"""Running `featsurv stability`: options, one loaded model, every variant, the result folder."""
from __future__ import annotations

import dataclasses
from typing import Any

import click


def plan_from(values: tuple[Any, ...], context: int | None) -> Any:
    from featsurv import FeatsurvError

    from .phase_stability import Plan, check_plan

    budgets, subset_tokens, seeds, pool_tokens, null = values
    if subset_tokens < 1:
        raise FeatsurvError(f"Bad --subset-tokens {subset_tokens}", allowed="a whole number of 1 or more",
                            hint="Pass e.g. --subset-tokens 100000")
    pool = pool_tokens if pool_tokens is not None else 2 * max(max(budgets), subset_tokens)
    if pool < 1:
        raise FeatsurvError(f"Bad --pool-tokens {pool_tokens}", allowed="a whole number of 1 or more",
                            hint="Pass e.g. --pool-tokens 400000")
    plan = Plan(sorted(dict.fromkeys(budgets)), subset_tokens, list(dict.fromkeys(seeds)), pool, null)
    if context is not None:
        check_plan(plan, context)
    return plan


def load(options: Any, session: Any, needs_calibration: bool) -> None:
    """Load model, SAEs and the token pool (no FP pass: each variant runs its own)."""
    from featsurv.workbench import load_workbench

    session.bench = load_workbench(options, session.registry, session.progress, needs_calibration)
    session.derived = {"device": session.bench.device, "metrics": session.metrics.setup(session.loaded, session.tokens)}


def stability_main(compressor: str, params: tuple[str, ...], plan_values: tuple[Any, ...], kwargs: dict[str, Any],
                   as_json: bool) -> None:
    from featsurv.audit import AuditSession
    from featsurv.cli.common import build_options, progress_for
    from featsurv.plugins import get_registry
    from featsurv.results import check_out_dir, dumps, write_folder
    from featsurv.runs import default_out_dir

    from . import phase_stability as S
    from .metric_overlap import thresholds

    registry = get_registry()
    options, preset = build_options(kwargs)
    from .phase_commands import stability_configuration

    cfg = stability_configuration(registry, compressor, params, preset)
    out = check_out_dir(kwargs.get("out_dir") or default_out_dir("stability"))
    session = AuditSession(options, registry, progress_for(kwargs["quiet"]))
    plan = plan_from(plan_values, options.context)
    session.options = dataclasses.replace(options, n_tokens=plan.pool_tokens)
    load(session.options, session, registry.get("compressors", compressor).needs_calibration_for(cfg))
    plan = plan_from((plan.budgets, plan.subset_tokens, plan.seeds, plan.pool_tokens, plan.null),
                     session.tokens.context)  # the context the SAE set, now known
    s, d = thresholds(options.metric_options)
    rows, feats = S.run_stability(session, compressor, cfg, plan, s, d, session.progress)
    summary, grid = S.summarize(rows, feats, plan)
    label = session.compressor(compressor).label(cfg)
    record = {"configuration": {"compressor": compressor, "params": cfg, "label": label},
              "plan": dataclasses.asdict(plan), "survived_above": s, "damaged_below": d,
              "options": {"model": options.model, "saes": options.saes, "dataset": options.dataset,
                          "context": session.tokens.context, "seed": options.seed},
              "hooks": summary, "rows": rows.to_dict("records"), "threshold_grid": grid.to_dict("records")}
    write_folder(out, lambda tmp: _render(tmp, rows, feats, grid, record, label))
    click.echo(dumps(record), nl=False) if as_json else click.echo(S.format_text(rows, summary))
    click.echo(f"stability: {out}", err=True)


def _render(tmp: Any, rows: Any, feats: Any, grid: Any, record: dict[str, Any], label: str) -> None:
    from featsurv.report.figures import save_png
    from featsurv.results import write_json_atomic

    from . import phase_figures as F

    rows.to_parquet(tmp / "stability.parquet", index=False)
    feats.to_parquet(tmp / "stability_features.parquet", index=False)
    grid.to_parquet(tmp / "threshold_grid.parquet", index=False)
    write_json_atomic(tmp / "stability.json", record)
    for i, (hook, part) in enumerate(rows.groupby("hook", sort=False)):
        null = record["hooks"].get(str(hook), {}).get("null")
        fig = F.stability(part[part["ablation"] == "budget"], part[part["ablation"] == "subset"], null,
                          f"{label} @ {hook}")
        save_png(fig, tmp / (f"fig_stability_{i + 1}.png" if rows["hook"].nunique() > 1 else "fig_stability.png"))
