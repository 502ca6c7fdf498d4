"""`featsurv plan COMPRESSOR --values ... (--min-survival S | --budget AVG)`: a measured per-group plan."""
from __future__ import annotations

import click

from .common import add_metric_options, audit_options, build_options, progress_for


@click.command(name="plan")
@click.argument("compressor")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A fixed parameter shared by every group (one value each), e.g. -p granularity=group:32.")
@click.option("--knob", default=None, help="The parameter set per group (default: the one the compressor declares).")
@click.option("--values", default=None, metavar="V1,V2,...",
              help="The knob's allowed values (default: every whole number of the compressor's knob range).")
@click.option("--min-survival", type=float, default=None,
              help="Target: at every hook point at least this fraction of active features survives; "
                   "the plan has the lowest average knob (weighted by parameters) that meets it.")
@click.option("--budget", type=float, default=None,
              help="Target: an average knob (weighted by parameters) no more expensive than this, "
                   "keeping as many features as the search finds.")
@click.option("--max-ppl-change", type=float, default=None,
              help="Also keep the relative perplexity change at most this (0.05 = +5%).")
@click.option("--min-watched-survival", type=float, default=None,
              help="Also keep at least this fraction of the watch list's features surviving (needs --watch FILE).")
@click.option("--by", default="layer,type", show_default=True,
              help="Groups of weight matrices: layer, type (attn, mlp), matrix, or layer,type.")
@click.option("--max-steps", type=int, default=32, show_default=True,
              help="Most search trials (each one audit pass) after the uniform and attribution passes.")
@click.option("--plan-out", type=click.Path(dir_okay=False), default=None,
              help="Also write the plan file here (it is always written as plan.toml in the result folder).")
@audit_options
def plan_cmd(compressor: str, params: tuple[str, ...], knob: str | None, values: str | None,
             min_survival: float | None, budget: float | None, max_ppl_change: float | None,
             min_watched_survival: float | None, by: str,
             max_steps: int, plan_out: str | None, **kwargs) -> None:
    """Choose COMPRESSOR's knob per group of weights, verified by measurement.

    Measures every uniform value, attributes the damage at the next value down to each group,
    then moves one group at a time and keeps a move only when its measured audit meets the
    target. Writes plan.toml, which `featsurv audit COMPRESSOR --plan plan.toml` applies.
    Exit 1: no setting reaches the target (no plan written). See docs/attribution.md.
    Example: featsurv plan rtn --values 3,4,6,8 --min-survival 0.9
    """
    from ..audit import AuditSession
    from ..errors import FeatsurvError
    from ..params import expand_grid, parse_assignments
    from ..plan import Goal, run_plan
    from ..plugins import get_registry
    from .table import print_summary

    registry = get_registry()
    comp = registry.get("compressors", compressor)
    grid = expand_grid(comp.params, parse_assignments(params), compressor)
    if len(grid) != 1:
        raise FeatsurvError("plan takes one value of each fixed parameter, not a sweep", hint="Give each -p one value")
    options, _ = build_options(kwargs)
    goal = Goal(min_survival, budget, max_ppl_change, max_steps, min_watched_survival)
    session = AuditSession(options, registry, progress_for(kwargs["quiet"]))
    vals = [v.strip() for v in values.split(",") if v.strip()] if values else None
    result = run_plan(options, compressor, grid[0], goal, knob=knob, values=vals, by=by,
                      out_dir=kwargs["out_dir"], session=session, plan_out=plan_out)
    print_summary(result.summary, result.path, session.metrics)
    section = result.summary["plan"]
    click.echo("")
    click.echo(f"plan: {section['message']}.")
    for name, value in (section.get("setting") or {}).items():
        click.echo(f"  {name:<14} {section['knob']}={value}")
    for path in section.get("plan_files") or []:
        click.echo(f"plan file: {path}  (featsurv audit {section['compressor']} --plan {path})")
    if section["status"] == "unreachable":
        click.get_current_context().exit(1)


command = plan_cmd
refresh = add_metric_options
