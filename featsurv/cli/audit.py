"""`featsurv audit COMPRESSOR -p KEY=VALUE ...`: one compressor, a sweep of configurations."""
from __future__ import annotations

import click

from .common import (add_metric_options, audit_options, build_options, parse_configurations, preset_notes, progress_for,
                     published_for)


def grouped_scope(registry, compressor: str, params: tuple[str, ...], plan_file: str | None, groups: str | None,
                  by: str):
    """The --plan or --groups scope (None: the whole scope with -p), checked before any work."""
    from ..attribution import parse_by
    from ..errors import FeatsurvError
    from ..plan_file import Scope, read_plan

    if plan_file and (params or groups):
        raise FeatsurvError("--plan sets every parameter and group itself", hint="Drop -p and --groups with --plan")
    if plan_file:
        plan = read_plan(plan_file, registry, compressor)
        return Scope(plan.by, plan=plan)
    if groups is not None:
        names = [g.strip() for g in groups.split(",") if g.strip()]
        if not names:
            raise FeatsurvError(f"Bad --groups {groups!r}: no group named", hint="Pass e.g. --groups L0.attn,L1.mlp")
        return Scope(parse_by(by), names=names)
    return None


@click.command(name="audit")
@click.argument("compressor")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE[,VALUE...]",
              help="Compressor parameter; commas sweep (-p bits=8,6,4). [default: each parameter's declared "
                   "default (`featsurv plugins`); with no -p, a preset's recipe for its own compressor]")
@click.option("--plan", "plan_file", default=None, type=click.Path(dir_okay=False),
              help="Apply a per-group plan file (written by `featsurv plan`) instead of -p. [default: none]")
@click.option("--groups", default=None, metavar="G1,G2,...",
              help="Compress only these groups of weight matrices (see --by); the rest stays full precision. "
                   "[default: every weight matrix in --scope]")
@click.option("--by", default="layer,type", show_default=True,
              help="How --groups names groups: layer, type (attn, mlp), matrix, or layer,type.")
@audit_options
def audit_cmd(compressor: str, params: tuple[str, ...], plan_file: str | None, groups: str | None, by: str,
              **kwargs) -> None:
    """Audit COMPRESSOR against the full-precision model.

    Example: featsurv audit rtn -p bits=8,6,4 --model ./pythia --sae ./sae-dir
    """
    from ..audit import AuditSession
    from ..plugins import get_registry
    from ..runs import run_audit
    from .table import print_json, print_published, print_summary

    registry = get_registry()
    options, preset = build_options(kwargs)
    scope = grouped_scope(registry, compressor, params, plan_file, groups, by)
    if scope is not None and scope.plan is not None:
        configurations, notes = [(compressor, scope.plan.params)], []
    else:
        configurations, notes = parse_configurations(registry, compressor, params, preset)
    progress = progress_for(kwargs["quiet"])
    for note in preset_notes(kwargs, preset) + notes:
        progress(note)
    session = AuditSession(options, registry, progress)
    try:
        if scope is None:
            result = run_audit(options, configurations, out_dir=kwargs["out_dir"], session=session,
                               command="audit " + compressor)
        else:
            from ..plan_file import grouped_audit

            result = grouped_audit(options, configurations, scope, out_dir=kwargs["out_dir"], session=session,
                                   command="audit " + compressor)
    finally:
        progress.close()
    if kwargs["as_json"]:
        print_json(result)
        return
    print_summary(result.summary, result.path, session.metrics)
    print_published(result.summary, published_for(options, preset), registry)


command = audit_cmd
refresh = add_metric_options
