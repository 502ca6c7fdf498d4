"""`featsurv plugins`: every plugin, its distribution and version, and what it registered."""
from __future__ import annotations

import json

import click


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of text.")
def plugins_cmd(as_json: bool) -> None:
    """List installed plugins and the names each registered."""
    from ..params import describe
    from ..plugins import get_registry

    registry = get_registry()
    infos = [p.as_json() for p in registry.plugins.values()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        click.echo(f"{info['name']}  ({info['distribution']} {info['version']})")
        for kind, names in info["provides"].items():
            for name in names:
                item = registry.get(kind, name)
                aliases = getattr(item, "aliases", ())
                also = f" (also: {', '.join(aliases)})" if aliases else ""
                click.echo(f"    {kind[:-1].replace('_', ' ')} {name}{also}: {item.description}")
                for p in describe(getattr(item, "params", ())):
                    click.echo(f"        -p {p['name']}=...  {p['allowed']} (default {p['default']}) {p['help']}")


command = plugins_cmd
