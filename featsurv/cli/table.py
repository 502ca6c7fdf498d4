"""The readable table printed at the end of a run."""
from __future__ import annotations

from typing import Any

import click


def _pct(x: Any) -> str:
    return "   n/a" if x is None or x != x else f"{100 * x:5.1f}%"


def print_summary(summary: dict[str, Any], path: Any) -> None:
    base = summary.get("baseline", {})
    ppl = base.get("perplexity")
    click.echo(f"FP perplexity {ppl:.4g} on {base.get('n_tokens')} tokens" if ppl else "FP baseline")
    for hook, info in base.get("saes", {}).items():
        click.echo(f"  SAE at {hook}: explained variance {info['explained_variance']:.3f}, "
                   f"{info['n_active']} active of {info['d_sae']} features")
    header = f"{'configuration':<26} {'hook':<26} {'ppl':>9} {'Δppl':>8} {'survived':>9} {'blurred':>8} {'damaged':>8} {'mean r':>7}"
    click.echo("")
    click.echo(header)
    click.echo("-" * len(header))
    flagged = []
    for e in summary.get("results", []):
        ci = e.get("ci", {})
        line = (f"{e['label']:<26} {e['hook']:<26} {e['perplexity']:>9.4g} {e['perplexity_change']:>+8.2%} "
                f"{_pct(e.get('survived')):>9} {_pct(e.get('blurred')):>8} {_pct(e.get('damaged')):>8} "
                f"{e.get('mean_r', float('nan')):>7.3f}")
        if e.get("perplexity_misses_damage"):
            line += "  << PERPLEXITY MISSES DAMAGE"
            flagged.append(e)
        click.echo(click.style(line, fg="red") if e.get("perplexity_misses_damage") else line)
        if ci.get("survived"):
            click.echo(f"{'':<26} {'95% CI survived':<26} {'':>9} {'':>8} "
                       f"{_pct(ci['survived'][0])}-{_pct(ci['survived'][1]).strip()}")
    for c in summary.get("comparisons", []):
        click.echo("")
        click.echo(f"{c['a']} vs {c['b']} at {c['hook']} (perplexity {c['perplexity_a']:.4g} vs {c['perplexity_b']:.4g}):")
        for key in ("jaccard", "jaccard_damaged", "spearman", "pearson"):
            if key in c and c[key] is not None:
                click.echo(f"  {key:<16} {c[key]:.3f}")
    if flagged:
        click.echo("")
        click.echo(click.style(
            f"{len(flagged)} configuration(s) keep perplexity within tolerance of FP while "
            f"{summary['options']['survival_target']:.0%} or fewer of active features survive.", fg="red", bold=True))
    if path is not None:
        click.echo("")
        click.echo(f"results: {path}")
        for name in ("summary.json", "features.parquet", "run.json", "report.html"):
            if (path / name).exists():
                click.echo(f"  {path / name}")
