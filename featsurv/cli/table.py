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
    predictors = summary.get("predictors") or {}
    if predictors:
        click.echo("")
        click.echo("Survival predicted from FP statistics (stratified 5-fold CV ROC AUC):")
        for key, p in predictors.items():
            parts = [f"{m} {p[m]['auc_mean']:.3f}" for m in ("logistic", "lightgbm")
                     if isinstance(p.get(m), dict) and p[m].get("auc_mean") is not None]
            best = (p.get("marginal") or [{}])[0]
            if best.get("statistic"):
                parts.append(f"best single: {best['statistic']} {best['auc']:.3f}")
            click.echo(f"  {key:<44} " + ("; ".join(parts) if parts else str(p.get("skipped", "skipped"))))
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


def _published_match(entry: dict[str, Any], pub: dict[str, Any], in_compare: bool) -> bool:
    if entry.get("compressor") != pub.get("compressor"):
        return False
    params = entry.get("params", {})
    if "bits" in pub:
        return params.get("bits") == pub["bits"]
    return in_compare and pub.get("compressor") == "magnitude"  # the matched-perplexity pruning run


def print_published(summary: dict[str, Any], preset: Any) -> None:
    """Print the reference study's published figures beside this run's own numbers."""
    published = getattr(preset, "published", None) or {}
    rows = published.get("results") or []
    if not rows:
        return
    click.echo("")
    click.echo(f"Published figures ({published.get('source', 'reference')}) beside this run:")
    click.echo(f"{'configuration':<26} {'survived':>18} {'blurred':>18} {'damaged':>18} {'Δppl':>20}")
    click.echo(f"{'':<26} {'run / published':>18} {'run / published':>18} {'run / published':>18} {'run / published':>20}")
    for e in summary.get("results", []):
        pub = next((p for p in rows if _published_match(e, p, bool(summary.get("comparisons")))), None)
        if pub is None:
            continue

        def pair(key: str, fmt: Any = _pct) -> str:
            theirs = pub.get(key)
            return f"{fmt(e.get(key)).strip()} / {fmt(theirs).strip() if theirs is not None else 'n/a'}"

        click.echo(f"{e['label']:<26} {pair('survived'):>18} {pair('blurred'):>18} {pair('damaged'):>18} "
                   f"{pair('perplexity_change'):>20}")
    for c in summary.get("comparisons", []):
        click.echo(f"overlap: Jaccard {c.get('jaccard', float('nan')):.3f} / {published.get('jaccard', float('nan')):.3f}, "
                   f"damage Spearman {c.get('spearman', float('nan')):.3f} / {published.get('spearman', float('nan')):.3f}")
