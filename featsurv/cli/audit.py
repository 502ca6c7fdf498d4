"""`featsurv audit COMPRESSOR -p KEY=VALUE ...`: one compressor, a sweep of configurations."""
from __future__ import annotations

import click

from .common import (add_metric_options, audit_options, build_options, parse_configurations, preset_notes, progress_for,
                     published_for)


@click.command(name="audit")
@click.argument("compressor")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE[,VALUE...]",
              help="Compressor parameter; commas sweep (-p bits=8,6,4). [default: each parameter's declared "
                   "default (`featsurv plugins`); with no -p, a preset's recipe for its own compressor]")
@audit_options
def audit_cmd(compressor: str, params: tuple[str, ...], **kwargs) -> None:
    """Audit COMPRESSOR against the full-precision model.

    Example: featsurv audit rtn -p bits=8,6,4 --model ./pythia --sae ./sae-dir
    """
    from ..audit import AuditSession
    from ..plugins import get_registry
    from ..runs import run_audit
    from .table import print_json, print_published, print_summary

    registry = get_registry()
    options, preset = build_options(kwargs)
    configurations, notes = parse_configurations(registry, compressor, params, preset)
    progress = progress_for(kwargs["quiet"])
    for note in preset_notes(kwargs, preset) + notes:
        progress(note)
    session = AuditSession(options, registry, progress)
    try:
        result = run_audit(options, configurations, out_dir=kwargs["out_dir"], session=session,
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
