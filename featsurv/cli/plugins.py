"""`featsurv plugins`: every plugin, its distribution and version, what it registered, and conflicts."""
from __future__ import annotations

import json

import click


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of text.")
def plugins_cmd(as_json: bool) -> None:
    """List installed plugins and the names each registered.

    Two plugins registering the same name (or two plugins of one name) are listed too, with the
    conflict: using that name fails until one of them is disabled (FEATSURV_DISABLE_PLUGINS).
    """
    from ..params import describe
    from ..plugins import get_registry

    registry = get_registry()
    if as_json:
        click.echo(json.dumps([p.as_json() for p in registry.plugins.values()], indent=2))
        return
    for plugin in registry.plugins.values():
        info = plugin.as_json()
        click.echo(f"{info['name']}  ({info['distribution']} {info['version']})")
        for kind, names in info["provides"].items():
            for name in names:
                item = plugin.registered.get(kind, {}).get(name)
                clash = "  [CONFLICT]" if name in registry.conflicts[kind] or plugin.name in registry.blocked else ""
                aliases = getattr(item, "aliases", ())
                also = f" (also: {', '.join(aliases)})" if aliases else ""
                click.echo(f"    {kind[:-1].replace('_', ' ')} {name}{also}: {getattr(item, 'description', '')}{clash}")
                for p in describe(getattr(item, "params", ())):
                    click.echo(f"        -p {p['name']}=...  {p['allowed']} (default {p['default']}) {p['help']}")
                for p in describe(getattr(item, "options", ()) if kind == "model_adapters" else ()):
                    click.echo(f"        --adapter-option {p['name']}=...  {p['allowed']} (default {p['default']}) {p['help']}")
    conflicts = registry.conflict_messages()
    if conflicts:
        click.echo("\nConflicts (a name in conflict cannot be used until one plugin is disabled with "
                   "FEATSURV_DISABLE_PLUGINS=NAME or uninstalled):")
        for line in conflicts:
            click.echo(f"    {line}")


command = plugins_cmd
