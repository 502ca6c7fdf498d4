"""The readable table printed at the end of a run, built from the metrics' declared columns."""
from __future__ import annotations

from typing import Any

import click


def fmt(value: Any, kind: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return "n/a"
    return {"pct": f"{100 * value:.1f}%", "signed_pct": f"{value:+.2%}", "num": f"{value:.4g}"}.get(kind, f"{value:.3f}")


def _metrics(metrics: Any) -> list[Any]:
    if metrics is not None:
        return list(metrics)
    from ..plugins import get_registry

    return sorted(get_registry().all("metrics"), key=lambda m: (m.order, m.name))


def print_baseline(summary: dict[str, Any]) -> None:
    base = summary.get("baseline", {})
    facts = [f"FP {k.replace('_', ' ')} {v:.4g}" for k, v in base.items()
             if isinstance(v, float) and k not in ("n_tokens", "n_contexts", "context")]
    click.echo(", ".join(facts + [f"{base.get('n_tokens')} tokens"]))
    for hook, info in base.get("saes", {}).items():
        active = f", {info['n_active']} active of {info['d_sae']} features" if "n_active" in info else ""
        click.echo(f"  SAE at {hook}: explained variance {info['explained_variance']:.3f}{active}")


def print_summary(summary: dict[str, Any], path: Any, metrics: Any = None) -> None:
    metrics = _metrics(metrics)
    entries = [e for e in summary.get("results", []) if isinstance(e, dict)]
    columns = [c for m in metrics for c in m.columns()]
    label_w = max([26, *(len(str(e.get("label", ""))) + 1 for e in entries)])
    hook_w = max([12, *(len(str(e.get("hook") or "")) + 1 for e in entries)])
    print_baseline(summary)
    header = f"{'configuration':<{label_w}} {'hook point':<{hook_w}}" + "".join(f" {c.header:>{c.width}}" for c in columns)
    click.echo("")
    click.echo(header)
    click.echo("-" * len(header))
    for e in entries:
        line = f"{str(e.get('label', '')):<{label_w}} {str(e.get('hook') or ''):<{hook_w}}"
        line += "".join(f" {fmt(e.get(c.key), c.format):>{c.width}}" for c in columns)
        flags = [f for m in metrics for f in m.row_flags(e)]
        if flags:
            line += "  << " + "; ".join(flags)
        click.echo(click.style(line, fg="red") if flags else line)
        for note in (n for m in metrics for n in m.row_notes(e)):
            click.echo(f"{'':<{label_w}} {note}")
    for m in metrics:
        lines = m.text(summary)
        if lines:
            click.echo("")
            for line in lines:
                click.echo(line)
    if path is not None:
        click.echo("")
        click.echo(f"results: {path}")
        for item in sorted(p.name for p in path.iterdir() if not p.name.startswith(".")):
            click.echo(f"  {path / item}")
        click.echo(f"next: featsurv report {path}  |  featsurv gate {path} --min-survival 0.9")


def _matches(entry: dict[str, Any], pub: dict[str, Any], registry: Any, in_compare: bool) -> bool:
    """A published row matches an entry of the same compressor whose declared parameters agree;
    a compare's searched knob need not agree (it was matched, as in the study)."""
    try:
        comp = registry.get("compressors", str(pub.get("compressor")))
    except click.ClickException:
        return False
    if entry.get("compressor") != comp.name:
        return False
    params = entry.get("params", {})
    for p in comp.params:
        if p.name in pub and not (in_compare and p.name == comp.search_knob(params)) and params.get(p.name) != pub[p.name]:
            return False
    return True


def print_published(summary: dict[str, Any], preset: Any, registry: Any = None) -> None:
    """Print the reference study's published figures beside this run's own numbers."""
    published = getattr(preset, "published", None) or {}
    rows = published.get("results") or []
    if not rows:
        return
    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    in_compare = bool(summary.get("comparisons"))
    click.echo("")
    click.echo(f"Published figures ({published.get('source', 'reference')}) beside this run (run / published):")
    keys = ("survived", "blurred", "damaged", "perplexity_change")
    click.echo(f"{'configuration':<26}" + "".join(f" {k:>20}" for k in keys))
    for e in summary.get("results", []):
        pub = next((p for p in rows if _matches(e, p, registry, in_compare)), None)
        if pub is None:
            continue
        cells = [f"{fmt(e.get(k), 'pct')} / {fmt(pub.get(k), 'pct') if k in pub else 'n/a'}" for k in keys]
        click.echo(f"{e['label']:<26}" + "".join(f" {c:>20}" for c in cells))
    for c in summary.get("comparisons", []):
        click.echo(f"overlap: Jaccard {fmt(c.get('jaccard'), 'float')} / {fmt(published.get('jaccard'), 'float')}, "
                   f"damage Spearman {fmt(c.get('spearman'), 'float')} / {fmt(published.get('spearman'), 'float')}")
