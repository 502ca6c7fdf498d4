"""`featsurv gate RESULT_DIR`: exit 1 when a configuration damages too many features (for CI)."""
from __future__ import annotations

import click


@click.command("gate")
@click.argument("result_dir", metavar="RESULT_DIR")
@click.option("--min-survival", type=click.FloatRange(0.0, 1.0), default=None,
              help="Smallest allowed survived fraction of active features. [default: 0.9; not checked "
                   "with --watch unless given]")
@click.option("--max-ppl-change", type=float, default=None,
              help="Largest allowed relative perplexity change (0.01 = +1%). [default: not checked]")
@click.option("--watch", "watch", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Watch list (hook,feature or feature ids per line): also gate the watched features. "
                   "[default: none]")
@click.option("--min-watched-survival", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="With --watch: smallest allowed survived fraction of the watched features.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document on stdout (verdict and one item per configuration) instead of "
                   "lines; the exit code is the same. [default: off]")
@click.pass_context
def gate_cmd(ctx: click.Context, result_dir: str, min_survival: float | None, max_ppl_change: float | None,
             watch: str | None, min_watched_survival: float, as_json: bool) -> None:
    """Pass or fail a finished audit: exit 0 when every configuration passes, 1 when any fails.

    A configuration fails when its survived fraction is below --min-survival, or (when given)
    its perplexity change is above --max-ppl-change. One line per configuration says why.
    With --watch FILE, a configuration also fails when fewer than --min-watched-survival of the
    watched features survived; the line names every one that did not.
    Exit 2: RESULT_DIR is not a featsurv result, or the watch file names unknown hooks or ids.
    """
    from ..gate import run_gate

    if min_survival is None and watch is None:
        min_survival = 0.9
    ok, lines = run_gate(result_dir, min_survival, max_ppl_change, watch, min_watched_survival)
    if as_json:
        from dataclasses import asdict

        from ..results import dumps

        click.echo(dumps({"passed": ok, "result_dir": str(result_dir), "min_survival": min_survival,
                          "max_ppl_change": max_ppl_change, "watch": watch,
                          "min_watched_survival": min_watched_survival if watch else None,
                          "n_configurations": len(lines), "n_passed": sum(line.passed for line in lines),
                          "configurations": [asdict(line) for line in lines]}), nl=False)
        ctx.exit(0 if ok else 1)
    show_hook = len({line.hook for line in lines}) > 1
    for line in lines:
        click.echo(line.text(show_hook))
    failed = sum(not line.passed for line in lines)
    click.echo(f"gate: {'PASS' if ok else 'FAIL'} ({len(lines) - failed} of {len(lines)} configurations pass)")
    ctx.exit(0 if ok else 1)


command = gate_cmd
