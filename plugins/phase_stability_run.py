"""Running `featsurv stability`: options, one loaded model, every variant, the result folder."""
from __future__ import annotations

import dataclasses
from typing import Any

import click

#: --pool-tokens all: every whole context of the dataset
ALL = -1


def plan_from(values: tuple[Any, ...], context: int | None) -> Any:
    """The plan of the ablations; checked against ``context`` when it is known."""
    from featsurv import FeatsurvError

    from .phase_stability import Plan, check_plan

    budgets, subset_tokens, seeds, pool_tokens, null = values
    if subset_tokens < 1:
        raise FeatsurvError(f"Bad --subset-tokens {subset_tokens}", allowed="a whole number of 1 or more",
                            hint="Pass e.g. --subset-tokens 100000")
    if pool_tokens == "all":
        pool = ALL
    else:
        pool = pool_tokens if pool_tokens is not None else 2 * max(max(budgets), subset_tokens)
    plan = Plan(sorted(dict.fromkeys(budgets)), subset_tokens, list(dict.fromkeys(seeds)), pool, null)
    if context is not None and pool != ALL:
        check_plan(plan, context)
    return plan


def load(options: Any, session: Any, needs_calibration: bool, whole: bool) -> None:
    """Load model, SAEs and the token pool (no FP pass: each variant runs its own); ``whole``:
    the pool is every whole context of the dataset."""
    from featsurv.workbench import load_workbench

    from featsurv import FeatsurvError

    try:
        session.bench = load_workbench(options, session.registry, session.progress, needs_calibration)
    except FeatsurvError as exc:
        if "is too short" not in exc.message:
            raise
        first = exc.message.split(". Pass ")[0]  # the dataset's size, without the audit's --tokens hint
        raise FeatsurvError(f"{first} (the stability pool)",
                            hint="Pass a smaller --pool-tokens, or --pool-tokens all, with --budgets and "
                                 "--subset-tokens no larger than it") from None
    if whole:
        session.bench.tokens = whole_dataset(session.bench)
    session.derived = {"device": session.bench.device, "metrics": session.metrics.setup(session.loaded, session.tokens)}


def whole_dataset(bench: Any) -> Any:
    """Every whole context of the dataset, cut as the audit cuts its tokens."""
    import sys

    from featsurv.loading import dataset_source
    from featsurv.tokens import _token_stream, build_tokens

    o, t = bench.options, bench.tokens
    docs = lambda: dataset_source(bench.registry, o.dataset).documents(o.dataset)  # noqa: E731
    n = len(_token_stream(bench.loaded.tokenizer, docs(), sys.maxsize, o.join))
    per_ctx = t.context - 1 if t.prepend_bos else t.context
    bench.progress(f"pool: the whole dataset, {n} tokens, {n // per_ctx} contexts")
    return build_tokens(bench.loaded.tokenizer, docs(), dataset=o.dataset, n_tokens=n // per_ctx * t.context,
                        context=t.context, prepend_bos=t.prepend_bos, exclude_special=o.exclude_special, join=o.join)


def stability_main(compressor: str, params: tuple[str, ...], plan_values: tuple[Any, ...], kwargs: dict[str, Any],
                   as_json: bool) -> None:
    from featsurv import FeatsurvError
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
    whole = plan.pool_tokens == ALL
    needs_calibration = registry.get("compressors", compressor).needs_calibration_for(cfg)
    if whole and needs_calibration:
        raise FeatsurvError("--pool-tokens all leaves no tokens for calibrating " + repr(compressor),
                            hint="Pass --pool-tokens N, a number of tokens")
    first = max(max(plan.budgets), plan.subset_tokens) if whole else plan.pool_tokens
    session.options = dataclasses.replace(options, n_tokens=first)
    load(session.options, session, needs_calibration, whole)
    pool = session.tokens.n_contexts * session.tokens.context if whole else plan.pool_tokens
    plan = plan_from((plan.budgets, plan.subset_tokens, plan.seeds, pool, plan.null),
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
    names = []
    for i, (hook, part) in enumerate(rows.groupby("hook", sort=False)):
        null = record["hooks"].get(str(hook), {}).get("null")
        fig = F.stability(part[part["ablation"] == "budget"], part[part["ablation"] == "subset"], null,
                          f"{label} @ {hook}")
        names.append(f"fig_stability_{i + 1}.png" if rows["hook"].nunique() > 1 else "fig_stability.png")
        save_png(fig, tmp / names[-1])
    from .phase_pages import stability_page

    (tmp / "report.html").write_text(stability_page(rows, record["hooks"], grid, names, label), encoding="utf-8")
