"""`featsurv compare A B`: B's knob matched to A's perplexity, then feature overlap."""
from __future__ import annotations

import click

from ..errors import FeatsurvError
from .common import add_metric_options, audit_options, build_options, preset_notes, progress_for, published_for


def _range(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise FeatsurvError(f"Bad --range {value!r}", allowed="LO,HI (e.g. 0,0.8)") from None
    return lo, hi


def _preset_recipe() -> str:
    """The default preset's [compare] reference, for the help of -p."""
    from ..defaults import _params_text
    from ..presets import get_preset

    try:
        preset = get_preset(None)
    except FeatsurvError:
        return ""
    spec = preset.compare or {}
    return f", e.g. {preset.name}: {spec['a']} {_params_text(spec.get('a_params') or {})}" if spec.get("a") else ""


@click.command(name="compare")
@click.argument("a")
@click.argument("b")
@click.option("-p", "--param", "a_params", multiple=True, metavar="KEY=VALUE",
              help="Parameter of A (the reference), e.g. -p bits=6. [default: A's own compare default (`featsurv "
                   f"plugins`); a preset's [compare] recipe when it names A{_preset_recipe()}]")
@click.option("--param-b", "b_params", multiple=True, metavar="KEY=VALUE",
              help="Fixed parameter of B (the knob is searched). [default: B's declared defaults]")
@click.option("--knob", default=None, help="B's parameter to search. [default: the one B declares]")
@click.option("--range", "search_range", default=None, metavar="LO,HI",
              help="Search range of the knob. [default: the range B declares, or the preset's]")
@click.option("--steps", type=int, default=None,
              help="Bisection step budget, 1 or more. [default: 8, or the preset's]")
@click.option("--rtol", type=float, default=None,
              help="Stop when the matched value is within this relative gap (0: run every step). "
                   "[default: 0.005, or the preset's]")
@click.option("--search-tokens", type=int, default=None,
              help="Bisect on the first N audit tokens (target measured on the same subset), then measure the "
                   "chosen setting on all tokens. [default: all tokens, or the preset's]")
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
    from ..defaults import compare_setup
    from ..params import parse_assignments
    from ..plugins import get_registry
    from .table import print_json, print_published, print_summary

    registry = get_registry()
    options, preset = build_options(kwargs)
    setup = compare_setup(registry, a, b, parse_assignments(a_params), parse_assignments(b_params), preset,
                          knob=knob, knob_range=_range(search_range), steps=steps, rtol=rtol,
                          search_tokens=search_tokens)
    progress = progress_for(kwargs["quiet"])
    for note in preset_notes(kwargs, preset) + setup.notes:
        progress(note)
    session = AuditSession(options, registry, progress)
    try:
        result = run_compare(options, setup.a, setup.b, out_dir=kwargs["out_dir"], session=session,
                             **setup.run_kwargs())
    finally:
        progress.close()
    if kwargs["as_json"]:
        print_json(result)
        return
    print_summary(result.summary, result.path, session.metrics)
    print_published(result.summary, published_for(options, preset), registry)

command = compare_cmd
refresh = add_metric_options
