"""`featsurv compare A B`: B's knob matched to A's perplexity, then feature overlap."""
from __future__ import annotations

import click

from ..errors import FeatsurvError
from .common import add_metric_options, audit_options, build_options, progress_for, published_for


def _range(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise FeatsurvError(f"Bad --range {value!r}", allowed="LO,HI (e.g. 0,0.8)") from None
    return lo, hi


@click.command(name="compare")
@click.argument("a")
@click.argument("b")
@click.option("-p", "--param", "a_params", multiple=True, metavar="KEY=VALUE",
              help="Parameter of A (the reference), e.g. -p bits=6.")
@click.option("--param-b", "b_params", multiple=True, metavar="KEY=VALUE",
              help="Fixed parameter of B (the knob is searched).")
@click.option("--knob", default=None, help="B's parameter to search (default: the one B declares).")
@click.option("--range", "search_range", default=None, metavar="LO,HI", help="Search range of the knob.")
@click.option("--steps", type=int, default=None, help="Bisection step budget, 1 or more (default 8).")
@click.option("--rtol", type=float, default=None, help="Stop when the matched value is within this relative gap (default 0.005).")
@click.option("--search-tokens", type=int, default=None,
              help="Bisect on the first N audit tokens (target measured on the same subset), then measure the "
                   "chosen setting on all tokens (default: all tokens).")
@audit_options
def compare_cmd(a: str, b: str, a_params: tuple[str, ...], b_params: tuple[str, ...], knob: str | None,
                search_range: str | None, steps: int | None, rtol: float | None, search_tokens: int | None,
                **kwargs) -> None:
    """Compare compressors A and B at matched perplexity.

    A runs at the given strength (default: its own compare default, e.g. rtn bits=6); B's knob
    (e.g. magnitude sparsity) is bisected until B's perplexity matches A's; then the sets of
    features each damages are compared (Jaccard, Spearman of damage scores).
    """
    from ..audit import AuditSession
    from ..compare import run_compare
    from ..params import expand_grid, parse_assignments
    from ..plugins import get_registry
    from .table import print_published, print_summary

    registry = get_registry()
    options, preset = build_options(kwargs)
    comp_a, comp_b = registry.get("compressors", a), registry.get("compressors", b)
    spec = (preset.compare if preset else {}) or {}
    same = lambda key, comp: bool(spec.get(key)) and registry.get("compressors", spec[key]).name == comp.name  # noqa: E731
    raw_a = parse_assignments(a_params)
    if not raw_a:
        defaults = spec.get("a_params") if same("a", comp_a) else comp_a.compare_default
        raw_a = {k: [str(v)] for k, v in (defaults or {}).items()}
    grid_a = expand_grid(comp_a.params, raw_a, a)
    if len(grid_a) != 1:
        raise FeatsurvError("compare takes one configuration of A, not a sweep", hint="Give each -p one value")
    raw_b = parse_assignments(b_params)
    if not raw_b and same("b", comp_b):
        raw_b = {k: [str(v)] for k, v in (spec.get("b_params") or {}).items()}
    grid_b = expand_grid(comp_b.params, raw_b, b)
    if len(grid_b) != 1:
        raise FeatsurvError("compare takes fixed values for B's other parameters", hint="Give each --param-b one value")
    same_b = same("b", comp_b)
    knob_range = _range(search_range) or (tuple(spec["range"]) if same_b and "range" in spec else None)
    steps = steps if steps is not None else ((spec.get("steps") if same_b else None) or 8)
    rtol = rtol if rtol is not None else (spec.get("rtol") if same_b and "rtol" in spec else 0.005)
    if search_tokens is None and same_b:
        search_tokens = spec.get("search_tokens")
    session = AuditSession(options, registry, progress_for(kwargs["quiet"]))
    result = run_compare(options, (a, grid_a[0]), (b, grid_b[0]), knob=knob, knob_range=knob_range, steps=steps,
                         rtol=rtol, search_tokens=search_tokens, out_dir=kwargs["out_dir"], session=session)
    print_summary(result.summary, result.path, session.metrics)
    print_published(result.summary, published_for(options, preset), registry)


command = compare_cmd
refresh = add_metric_options
