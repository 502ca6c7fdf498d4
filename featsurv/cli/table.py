"""The readable table printed at the end of a run (rich), built from the metrics' declared columns;
and the JSON document of `--json`."""
from __future__ import annotations

import sys
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


def new_table(headers: list[tuple[str, str]]) -> Any:
    """A rich table without borders: a header, a rule under it, columns sized to their widest cell."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="", highlight=False)
    for header, justify in headers:
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    return table


def print_table(table: Any) -> None:
    """Print a rich table on stdout: in colour on a terminal, else plain, never wrapped or cut."""
    import io

    from rich.console import Console

    out = sys.stdout
    if out.isatty():
        Console(file=out, highlight=False, soft_wrap=True).print(table)
        return
    buf = io.StringIO()
    Console(file=buf, width=100_000, color_system=None, highlight=False).print(table)
    for line in buf.getvalue().splitlines():
        click.echo(line.rstrip())


def results_table(entries: list[dict[str, Any]], metrics: list[Any]) -> Any:
    from rich.text import Text

    columns = [c for m in metrics for c in m.columns()]
    table = new_table([("configuration", "left"), ("hook point", "left"), *[(c.header, "right") for c in columns],
                       ("", "left")])
    for e in entries:
        flags = [f for m in metrics for f in m.row_flags(e)]
        notes = [n for m in metrics for n in m.row_notes(e)]
        style = "bold red" if flags else ""
        cells = [str(e.get("label", "")), str(e.get("hook") or ""), *[fmt(e.get(c.key), c.format) for c in columns]]
        last = "; ".join((["<< " + "; ".join(flags)] if flags else []) + notes)
        table.add_row(*[Text(c, style=style) for c in cells], Text(last, style=style))
    return table


def print_summary(summary: dict[str, Any], path: Any, metrics: Any = None) -> None:
    metrics = _metrics(metrics)
    entries = [e for e in summary.get("results", []) if isinstance(e, dict)]
    print_baseline(summary)
    click.echo("")
    print_table(results_table(entries, metrics))
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


def print_json(result: Any) -> None:
    """One JSON document on stdout: where the run is, its id and schema, and its summary."""
    from ..results import dumps

    path = result.path
    click.echo(dumps({"path": None if path is None else str(path), "run_id": result.run.get("run_id"),
                      "schema_version": result.summary.get("schema_version"),
                      "files": sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) if path else [],
                      "summary": result.summary}), nl=False)


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
    from rich.text import Text

    in_compare = bool(summary.get("comparisons"))
    click.echo("")
    click.echo(f"Published figures ({published.get('source', 'reference')}) beside this run (run / published):")
    keys = ("survived", "blurred", "damaged", "perplexity_change")
    table = new_table([("configuration", "left"), *[(k, "right") for k in keys]])
    for e in summary.get("results", []):
        pub = next((p for p in rows if _matches(e, p, registry, in_compare)), None)
        if pub is not None:
            cells = [f"{fmt(e.get(k), 'pct')} / {fmt(pub.get(k), 'pct') if k in pub else 'n/a'}" for k in keys]
            table.add_row(*[Text(c) for c in (str(e["label"]), *cells)])
    print_table(table)
    for c in summary.get("comparisons", []):
        click.echo(f"overlap: Jaccard {fmt(c.get('jaccard'), 'float')} / {fmt(published.get('jaccard'), 'float')}, "
                   f"damage Spearman {fmt(c.get('spearman'), 'float')} / {fmt(published.get('spearman'), 'float')}")
