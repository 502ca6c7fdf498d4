"""`featsurv presets`: every preset with a one-line description."""
from __future__ import annotations

import click


@click.command(name="presets")
@click.option("-v", "--verbose", is_flag=True, help="Also show each preset's model, SAEs and tokens.")
def presets_cmd(verbose: bool) -> None:
    """List the presets shipped in registry/ (use one with --preset NAME)."""
    from ..presets import load_presets

    for name, p in load_presets().items():
        mark = " (default)" if p.default else ""
        click.echo(f"{name}{mark}: {p.description}")
        if verbose:
            o = p.options
            click.echo(f"    model {o['model']}; SAEs {', '.join(o['saes'])}")
            click.echo(f"    dataset {o.get('dataset')}; {o.get('n_tokens')} tokens; context {o.get('context')}")


command = presets_cmd
