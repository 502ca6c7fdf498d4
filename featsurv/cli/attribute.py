"""`featsurv attribute COMPRESSOR -p KEY=VALUE [--by ...]`: which groups of weights cause the damage."""
from __future__ import annotations

import click

from .common import add_metric_options, audit_options, build_options, progress_for


def one_configuration(registry, compressor: str, params: tuple[str, ...]) -> dict:
    """The single configuration of ``-p`` (default: the compressor's compare default, e.g. rtn bits=6)."""
    from ..errors import FeatsurvError

    from ..defaults import as_raw, audit_configurations
    from ..params import parse_assignments

    comp = registry.get("compressors", compressor)
    raw = parse_assignments(params) if params else as_raw(comp.compare_default)
    configurations, _ = audit_configurations(registry, compressor, raw)
    if len(configurations) != 1:
        raise FeatsurvError(f"attribute takes one configuration, not a sweep of {len(configurations)}",
                            hint="Give each -p key one value, e.g. -p bits=4")
    return configurations[0][1]


@click.command(name="attribute")
@click.argument("compressor")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Compressor parameter (one value each). [default: the compressor's compare default]")
@click.option("--by", default="layer,type", show_default=True,
              help="Groups of weight matrices: layer, type (attn, mlp), matrix, or layer,type.")
@click.option("--complements/--no-complements", default=True, show_default=True,
              help="Also compress everything but each group, and everything (shows interactions).")
@audit_options
def attribute_cmd(compressor: str, params: tuple[str, ...], by: str, complements: bool, **kwargs) -> None:
    """Attribute COMPRESSOR's feature damage to groups of weight matrices.

    One FP pass; then each group compressed alone (everything else full precision), and with
    --complements everything but the group, and everything: one pass each. Example:
    featsurv attribute rtn -p bits=4 --by layer,type
    """
    from ..attribution import parse_by, run_attribution
    from ..audit import AuditSession
    from ..plugins import get_registry
    from .table import print_json, print_summary

    registry = get_registry()
    by = parse_by(by)
    options, _ = build_options(kwargs)
    config = one_configuration(registry, compressor, params)
    progress = progress_for(kwargs["quiet"])
    session = AuditSession(options, registry, progress)
    try:
        result = run_attribution(options, compressor, config, by=by, complements=complements,
                                 out_dir=kwargs["out_dir"], session=session)
    finally:
        progress.close()
    if kwargs["as_json"]:
        print_json(result)
        return
    print_summary(result.summary, result.path, session.metrics)


command = attribute_cmd
refresh = add_metric_options
