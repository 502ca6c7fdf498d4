"""Regenerate docs/cli.md from the commands' own help: `python scripts/gen_cli_docs.py`.

`--check` exits 1 when docs/cli.md is out of date with the CLI (tests/test_docs.py runs it in a
fresh process, so commands invoked directly by other tests cannot change the help it sees).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

INTRO = """# The featsurv command line

Generated from `featsurv COMMAND --help` by `scripts/gen_cli_docs.py`; do not edit by hand.

Conventions: results go to files and stdout, progress to stderr. A user error (an unknown name,
a bad value, a model and SAE that do not fit) prints one paragraph naming the bad value, what is
allowed and what to run next, and exits with code 2 without writing anything. `featsurv gate`
exits 1 when a configuration falls short. Plugin commands (added through `register_commands`)
appear in `featsurv --help` too.

Options of `audit` and `compare` that are not given come from the preset (`--preset NAME`, or the
embedded default `featsurv-tiny` when `--model` is not given); see `featsurv presets`.
"""


def render() -> str:
    from featsurv.cli import cli

    parts = [INTRO]
    ctx = click.Context(cli, info_name="featsurv", terminal_width=100, max_content_width=100,
                        help_option_names=["-h", "--help"])
    parts.append("## featsurv\n\n```text\n" + cli.get_help(ctx).rstrip() + "\n```\n")
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        sub = click.Context(cmd, info_name=name, parent=ctx, terminal_width=100, max_content_width=100)
        parts.append(f"## featsurv {name}\n\n```text\n" + cmd.get_help(sub).rstrip() + "\n```\n")
    return "\n".join(parts)


def main() -> int:
    target = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    if "--check" in sys.argv[1:]:  # exit 1 when docs/cli.md differs from the CLI (tests/test_docs.py)
        if target.read_text(encoding="utf-8") != render():
            print(f"{target} is stale: run `python scripts/gen_cli_docs.py`", file=sys.stderr)
            return 1
        return 0
    target.write_text(render(), encoding="utf-8")
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
