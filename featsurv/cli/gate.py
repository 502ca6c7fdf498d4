"""`featsurv gate RESULT_DIR`: exit 1 when a configuration damages too many features (for CI)."""
from __future__ import annotations

import click


@click.command("gate")
@click.argument("result_dir", metavar="RESULT_DIR")
@click.option("--min-survival", type=click.FloatRange(0.0, 1.0), default=0.9, show_default=True,
              help="Smallest allowed survived fraction of active features.")
@click.option("--max-ppl-change", type=float, default=None,
              help="Largest allowed relative perplexity change (0.01 = +1%). [default: not checked]")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document on stdout (verdict and one item per configuration) instead of "
                   "lines; the exit code is the same. [default: off]")
@click.pass_context
def gate_cmd(ctx: click.Context, result_dir: str, min_survival: float, max_ppl_change: float | None,
             as_json: bool) -> None:
    """Pass or fail a finished audit: exit 0 when every configuration passes, 1 when any fails.

    A configuration fails when its survived fraction is below --min-survival, or (when given)
    its perplexity change is above --max-ppl-change. One line per configuration says why.
    Exit 2: RESULT_DIR is not a featsurv result.
    """
    from ..gate import run_gate

    ok, lines = run_gate(result_dir, min_survival, max_ppl_change)
    if as_json:
        from dataclasses import asdict

        from ..results import dumps

        click.echo(dumps({"passed": ok, "result_dir": str(result_dir), "min_survival": min_survival,
                          "max_ppl_change": max_ppl_change, "n_configurations": len(lines),
                          "n_passed": sum(line.passed for line in lines),
                          "configurations": [asdict(line) for line in lines]}), nl=False)
        ctx.exit(0 if ok else 1)
    show_hook = len({line.hook for line in lines}) > 1
    for line in lines:
        click.echo(line.text(show_hook))
    failed = sum(not line.passed for line in lines)
    click.echo(f"gate: {'PASS' if ok else 'FAIL'} ({len(lines) - failed} of {len(lines)} configurations pass)")
    ctx.exit(0 if ok else 1)


command = gate_cmd
