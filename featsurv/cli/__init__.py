"""The `featsurv` command line. Commands live one per module and are imported only when run."""
from __future__ import annotations

import importlib
import sys
from typing import Any

import click

#: command name -> "module:attribute"; modules import heavy packages only inside their functions
COMMANDS = {
    "audit": "featsurv.cli.audit:audit_cmd",
    "compare": "featsurv.cli.compare:compare_cmd",
    "plugins": "featsurv.cli.plugins:plugins_cmd",
    "presets": "featsurv.cli.presets:presets_cmd",
    "predict": "featsurv.cli.predict:predict_cmd",
    "overlap": "featsurv.cli.overlap:overlap_cmd",
    "gate": "featsurv.cli.gate:gate_cmd",
    "report": "featsurv.cli.report:report_cmd",
}
HELP = {
    "audit": "Audit one compressor (a sweep of configurations) against the FP model.",
    "compare": "Compare two compressors at matched perplexity (feature overlap).",
    "plugins": "List installed plugins and what each registers.",
    "presets": "List the presets (known model/SAE pairings and recipes).",
    "predict": "Predict feature survival from FP statistics on a finished run.",
    "overlap": "Overlap statistics between two configurations of a finished run.",
    "gate": "Exit 1 when any configuration of a run falls short (for CI).",
    "report": "Write report.html for a finished run.",
}


class LazyGroup(click.Group):
    """A click group whose built-in commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(f"command {name!r} is not available: {exc}") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, HELP.get(name) or (self.commands[name].get_short_help_str(60) if name in self.commands else ""))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featsurv")
@click.option("--plugins-dir", type=click.Path(file_okay=False), default=None,
              help="Also load every *.py in this folder as a plugin (one-off, unpackaged).")
@click.option("--debug", is_flag=True, envvar="FEATSURV_DEBUG",
              help="Show the full traceback of an unexpected error (also FEATSURV_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, plugins_dir: str | None, debug: bool) -> None:
    """featsurv: what compression does to a model's SAE features, not just its perplexity.

    Run `featsurv compare rtn magnitude` on the embedded default model, or
    `featsurv audit rtn -p bits=8,6,4 --model DIR --sae DIR` on your own.
    """
    from .. import plugins
    from ..results import release_all_reservations

    global _DEBUG
    _DEBUG = debug
    ctx.call_on_close(release_all_reservations)  # result folders this command reserved
    if plugins_dir and plugins_dir != plugins._PLUGINS_DIR:  # invoked without main(), e.g. CliRunner
        plugins.set_plugins_dir(plugins_dir)


_DEBUG = False


def _plugin_commands(argv: list[str]) -> None:
    """Let plugins add commands (register_commands). Reads --plugins-dir early from argv."""
    from ..plugins import get_registry, set_plugins_dir

    for i, arg in enumerate(argv):
        if arg == "--plugins-dir" and i + 1 < len(argv):
            set_plugins_dir(argv[i + 1])
        elif arg.startswith("--plugins-dir="):
            set_plugins_dir(arg.split("=", 1)[1])
    registry = get_registry()
    from ..plugins import _plugin_failed

    for impl in registry.pm.hook.register_commands.get_hookimpls():
        before = set(cli.commands)
        try:
            impl.function(cli=cli)
            for name in set(cli.commands) - before:
                if name in COMMANDS:
                    import warnings

                    warnings.warn(f"featsurv: plugin {impl.plugin_name!r} replaces the built-in command {name!r}",
                                  stacklevel=1)
        except Exception as exc:  # one plugin's broken command must not hide the others
            info = registry.plugins.get(impl.plugin_name)
            _plugin_failed(impl.plugin_name, info.distribution if info else "?", exc)


def main(argv: list[str] | None = None) -> Any:
    """The `featsurv` command. Exit 0: done; 1: a gate failed, or an unexpected error (a bug, named
    in one paragraph; the traceback with --debug or FEATSURV_DEBUG=1); 2: bad input, nothing written."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _plugin_commands(argv)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    try:
        return cli.main(args=argv, prog_name="featsurv")
    except Exception as exc:  # click handled its own errors (exit 2) and Ctrl-C (exit 1) already
        if _DEBUG or os.environ.get("FEATSURV_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        from ..errors import describe_crash

        click.echo(describe_crash(exc), err=True)
        sys.exit(1)
