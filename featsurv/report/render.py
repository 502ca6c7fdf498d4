"""report.html of a run: header, the results table from the metrics' columns, the comparisons,
each metric's own sections, and the run's facts. Reads only what the run stored, so it can be
re-rendered any time (`featsurv report DIR`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..results import write_bytes_atomic, write_text_atomic
from . import html as H
from .fit_table import fit_section

REPORT_FILE = "report.html"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _params(p: Any) -> str:
    if isinstance(p, dict):
        return ", ".join(f"{k}={v}" for k, v in p.items())
    return "" if p is None else str(p)


def cell(value: Any, fmt: str, ci: Any = None) -> str:
    """One table cell in a Column's format, with a [lo, hi] interval when given."""
    text = {"pct": lambda v: H.pct(v), "signed_pct": lambda v: H.pct(v, True),
            "num": lambda v: H.num(v, ".4g")}.get(fmt, lambda v: H.num(v))(value)
    if ci and len(ci) == 2 and all(_num(v) is not None for v in ci):
        text += f" [{ci[0]:.1%}, {ci[1]:.1%}]"
    return text


def cell_html(value: Any, fmt: str, ci: Any = None) -> H.Raw:
    """A cell with its interval on a second, smaller line (so intervals do not widen the table)."""
    text = cell(value, fmt)
    if ci and len(ci) == 2 and all(_num(v) is not None for v in ci):
        return H.Raw(f'{H.esc(text)}<span class="ci">[{ci[0]:.1%}, {ci[1]:.1%}]</span>')
    return H.Raw(H.esc(text))


def _run_facts(run: dict[str, Any], limit: int = 40) -> list[tuple[str, str]]:
    """Scalar facts of run.json, flattened one level (``a.b``), at most ``limit``."""
    facts: list[tuple[str, str]] = []
    for k, v in (run or {}).items():
        if isinstance(v, dict):
            facts += [(f"{k}.{k2}", str(v2)) for k2, v2 in v.items() if not isinstance(v2, (dict, list))]
        elif isinstance(v, list):
            if v and all(not isinstance(x, (dict, list)) for x in v):
                facts.append((k, ", ".join(map(str, v))))
        else:
            facts.append((k, str(v)))
    return facts[:limit]


def results_table(summary: dict[str, Any], metrics: list[Any]) -> str:
    """The metrics' columns per (configuration, hook point), then the flags; a hook point column
    only when the run has several (else it is named above the table). Parameters in a details list."""
    entries = [e for e in (summary.get("results") or []) if isinstance(e, dict)]
    if not entries:
        return "<p>No results in this run.</p>"
    hooks = list(dict.fromkeys(str(e.get("hook") or "") for e in entries))
    several = len(hooks) > 1
    columns = [c for m in metrics for c in m.columns()]
    rows, classes = [], []
    for e in entries:
        flags = [f for m in metrics for f in m.row_flags(e)]
        ci = e.get("ci") if isinstance(e.get("ci"), dict) else {}
        row: list[Any] = [str(e.get("label")), *([e.get("hook") or ""] if several else [])]
        row += [cell_html(e.get(c.key), c.format, ci.get(c.key)) for c in columns]
        row.append(H.Raw('<span class="flag">⚠ ' + H.esc("; ".join(flags).lower()) + "</span>") if flags else "")
        rows.append(row)
        classes.append("misses" if flags else "")
    headers = ["configuration", *(["hook point"] if several else []), *[c.header for c in columns], "flags"]
    has_ci = any(isinstance(e.get("ci"), dict) and e["ci"] for e in entries)
    out = [] if several else [f'<p class="note">Hook point: {H.esc(hooks[0]) or "none"}</p>']
    left = (0, 1, len(headers) - 1) if several else (0, len(headers) - 1)
    out.append('<div class="wide results">' + H.table(headers, rows, left=left, row_classes=classes) + "</div>")
    if has_ci:
        out.append('<p class="note">Second line: bootstrap 95% confidence interval over blocks of contexts.</p>')
        off = [str(e.get("label")) for e in entries
               if isinstance(e.get("ci"), dict) and e["ci"].get("excludes_estimate")]
        if off:
            out.append('<p class="note warn" id="ci-excludes-estimate">⚠ The interval excludes its own estimate for '
                       + H.esc(", ".join(off)) + ": per-feature r is unstable at this token budget (features fire "
                       "on few contexts), so resampling moves the fractions; read these intervals as a sign to "
                       "audit more tokens, not as the estimate's uncertainty.</p>")
    params = {str(e.get("label")): (e.get("compressor", ""), _params(e.get("params"))) for e in entries}
    prow = [[label, comp, text] for label, (comp, text) in params.items()]
    out.append('<details><summary>Parameters of each configuration</summary><div class="wide wrapcells">'
               + H.table(["configuration", "compressor", "parameters"], prow, left=(0, 1, 2)) + "</div></details>")
    return "\n".join(out)


def comparisons_table(summary: dict[str, Any]) -> str:
    comps = [c for c in (summary.get("comparisons") or []) if isinstance(c, dict)]
    if not comps:
        return ""
    label = comps[0].get("matched_on") or "target"
    hooks = list(dict.fromkeys(str(c.get("hook") or "") for c in comps))
    where = f" at {hooks[0]}" if len(hooks) == 1 and hooks[0] else ""
    rows = [[c.get("a", ""), c.get("b", ""), c.get("hook", ""), _params(c.get("matched_params")),
             H.num(c.get(f"{label}_a"), ".4g"), H.num(c.get(f"{label}_b"), ".4g")] for c in comps]
    out = [f"<h2>Comparisons at matched {H.esc(label)}{H.esc(where)}</h2>",
           '<div class="wide wrapcells">' + H.table(["A", "B", "hook point", "B matched at", f"{label} A",
                                                     f"{label} B"], rows, left=(0, 1, 2, 3)) + "</div>"]
    path = comps[0].get("path") or []
    if path:
        prow = [[j, _params(s.get("params")), H.num(s.get(label), ".4g")] for j, s in enumerate(path, 1) if isinstance(s, dict)]
        out.append(f"<details><summary>Bisection path of {H.esc(comps[0].get('b'))} ({len(prow)} steps)</summary>"
                   + H.table(["step", "params", label], prow, left=(1,)) + "</details>")
    return "\n".join(out)


def header(summary: dict[str, Any]) -> list[str]:
    base = summary.get("baseline") or {}
    sub = []
    for key, value in base.items():
        if _num(value) is not None and key not in ("n_tokens", "n_contexts", "context"):
            sub.append(f"FP {key.replace('_', ' ')} {H.num(value, '.4g')}")
    if base.get("n_tokens") is not None:
        sub.append(f"{base['n_tokens']} audit tokens")
    sub.append(f"{len(summary.get('results') or [])} result(s)")
    return ["<h1>featsurv report</h1>", f'<p class="sub">{H.esc(" · ".join(sub))}</p>']


def write_report(result: Any, out_dir: str | Path | None = None, top_n: int = 10, metrics: Any = None) -> Path:
    """Render ``report.html`` and the files of every metric section; return the path of report.html."""
    out = Path(out_dir) if out_dir is not None else result.path
    if out is None:
        raise ValueError("write_report needs out_dir when the RunResult has no path")
    out.mkdir(parents=True, exist_ok=True)
    if metrics is None:
        from ..plugins import get_registry

        metrics = sorted(get_registry().all("metrics"), key=lambda m: (m.order, m.name))
    metrics = list(metrics)
    result.extra["top"] = top_n
    summary = result.summary or {}
    sections = sorted((s for m in metrics for s in m.report_sections(result)), key=lambda s: s.order)
    for section in sections:
        for name, data in section.files.items():
            write_bytes_atomic(out / name, data)
    body = header(summary)
    body += [f'<section id="s-{i}">{s.html}</section>' for i, s in enumerate(sections) if s.order < 10]
    body += ["<h2>Results</h2>", results_table(summary, metrics), comparisons_table(summary)]
    for i, s in enumerate(sections):
        if s.order >= 10:
            body += [f'<section id="s-{i}"><h2>{H.esc(s.title)}</h2>', s.html, "</section>"]
    body.append(fit_section(summary))
    body += ["<h2>Run</h2>", '<div class="facts">' + H.table(["key", "value"], _run_facts(result.run or {}),
                                                              left=(0, 1)) + "</div>",
             "<details><summary>run.json</summary>" + H.pre_json(result.run or {}) + "</details>",
             "<details><summary>baseline</summary>" + H.pre_json(summary.get("baseline") or {}) + "</details>"]
    from .. import __version__

    body.append(f'<p class="note">Written by featsurv {H.esc(__version__)}. Self-contained: open it offline; '
                "the figures are the files beside it.</p>")
    path = out / REPORT_FILE
    write_text_atomic(path, H.page("featsurv report", body))
    return path
