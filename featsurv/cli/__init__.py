"""The `featsurv` command line. Built-in commands live one per module of this package (each module
names its click command ``command``) and are imported only when run or listed; plugins add more
through ``register_commands``."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Any

import click

#: modules of this package that hold helpers, not commands
HELPER_MODULES = {"common", "table"}


def builtin_commands() -> list[str]:
    """Names of the built-in commands (derived from this package's files; ``sweep_report`` -> ``sweep-report``)."""
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if m.name not in HELPER_MODULES)


def _use_plugins_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """--plugins-dir is eager: it takes effect before --help lists commands and before any command runs."""
    from .. import plugins

    if value or plugins._PLUGINS_DIR is not None:  # each invocation uses only its own --plugins-dir
        plugins.set_plugins_dir(value or None)


class LazyGroup(click.Group):
    """A click group whose built-in commands are imported on first use; plugins add their own."""

    _registry_seen: Any = None
    _plugin_names: set[str] = set()

    def _plugin_commands(self) -> None:
        """Ask every plugin for its commands once per plugin registry (a new one after --plugins-dir)."""
        from ..plugins import get_registry

        registry = get_registry()
        if registry is self._registry_seen:
            return
        for name in self._plugin_names:
            self.commands.pop(name, None)
        before = set(self.commands)
        for plugin in list(registry.plugins):
            added = set(self.commands)
            registry.call_plugin(plugin, "register_commands", cli=self)
            for name in set(self.commands) - added:
                if name in builtin_commands():
                    import warnings

                    warnings.warn(f"featsurv: plugin {plugin!r} replaces the built-in command {name!r}", stacklevel=1)
        self._plugin_names = set(self.commands) - before
        self._registry_seen = registry

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._plugin_commands()
        return sorted(set(builtin_commands()) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._plugin_commands()
        if name in self.commands:
            return self.commands[name]
        if name not in builtin_commands():
            return None
        try:
            module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
            command = module.command
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(f"command {name!r} is not available: {exc}") from None
        refresh = getattr(module, "refresh", None)  # e.g. metric flags of the plugins loaded now
        return refresh(command) if refresh else command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featsurv")
@click.option("--plugins-dir", type=click.Path(file_okay=False), default=None, is_eager=True, expose_value=False,
              callback=_use_plugins_dir, help="Also load every *.py in this folder as a plugin (one-off, unpackaged).")
@click.option("--debug", is_flag=True, envvar="FEATSURV_DEBUG",
              help="Show the full traceback of an unexpected error (also FEATSURV_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """featsurv: what compression does to a model's SAE features, not just its perplexity.

    Run `featsurv compare rtn pruning` on the embedded default model, or
    `featsurv audit rtn -p bits=8,6,4 --model DIR --sae DIR` on your own.
    """
    from ..results import release_all_reservations

    global _DEBUG
    _DEBUG = debug
    ctx.call_on_close(release_all_reservations)  # result folders this command reserved


_DEBUG = False


def main(argv: list[str] | None = None) -> Any:
    """The `featsurv` command. Exit 0: done; 1: a gate failed, or an unexpected error (a bug, named
    in one paragraph; the traceback with --debug or FEATSURV_DEBUG=1); 2: bad input, nothing written."""
    import os

    # PyTorch (c10's CPU allocator, read once, before torch is imported here): blocks of 2 MiB and
    # more on transparent huge pages, so each batch's [tokens, d_sae] tensors fault in 512x fewer
    # pages (docs/reliability.md, "Limits"); THP_MEM_ALLOC_ENABLE=0 keeps the 4 KiB pages
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    as_command = argv is None  # the console script: this process ends with the command
    if as_command:
        from ..collector import tune_for_command

        tune_for_command()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return cli.main(args=argv, prog_name="featsurv")
    except Exception as exc:  # click handled its own errors (exit 2) and Ctrl-C (exit 1) already
        if _DEBUG or os.environ.get("FEATSURV_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        from ..errors import describe_crash

        click.echo(describe_crash(exc), err=True)
        sys.exit(1)
    finally:
        if as_command:
            from ..collector import freeze_before_exit

            freeze_before_exit()
