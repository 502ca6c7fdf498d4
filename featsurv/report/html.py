"""HTML building blocks of the report: escaped, self-contained (inline CSS, no script, no network)."""
from __future__ import annotations

import html
import json
import math
from typing import Any, Iterable, Sequence

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1em 2em 3em; color: #1d1d1f; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
.sub { color: #666; margin-top: 0; }
.banner { background: #c0392b; color: #fff; padding: 0.9em 1.2em; border-radius: 6px; margin: 1em 0;
          font-size: 1.05em; }
.banner strong { font-size: 1.15em; } .banner ul { margin: 0.4em 0 0 1.2em; padding: 0; }
.ok { background: #e8f5e9; border: 1px solid #a5d6a7; padding: 0.6em 1em; border-radius: 6px; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; } td.l, th.l { text-align: left; }
tr.misses td { background: #fdecea; } tr.misses td:first-child { border-left: 4px solid #c0392b; }
.flag { color: #c0392b; font-weight: bold; }
.b-survived { color: #2e8b57; } .b-blurred { color: #b7791f; } .b-damaged { color: #c0392b; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
details { margin: 0.4em 0 1em; } summary { cursor: pointer; font-weight: 600; }
pre { background: #f7f7f9; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
.wide { overflow-x: auto; max-width: 100%; }
.ci { display: block; color: #666; font-size: 0.8em; }
.results td:first-child { white-space: normal; min-width: 8em; max-width: 16em; }
.results td:last-child { white-space: normal; min-width: 8em; max-width: 12em; }
.wrapcells th, .wrapcells td { white-space: normal; max-width: 16em; }
.facts td { white-space: normal; overflow-wrap: anywhere; }
details td { white-space: normal; }
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def num(v: Any, fmt: str = ".3f") -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return format(v, fmt)


def pct(v: Any, signed: bool = False) -> str:
    return num(v, "+.2%" if signed else ".2%")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: Sequence[int] = (0,),
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped unless given as ``Raw``."""
    def attr(i: int) -> str:
        return ' class="l"' if i in left else ""

    out = ["<table>", "<tr>" + "".join(f"<th{attr(i)}>{esc(h)}</th>" for i, h in enumerate(headers)) + "</tr>"]
    for k, row in enumerate(rows):
        cls = row_classes[k] if row_classes and k < len(row_classes) and row_classes[k] else ""
        cells = "".join(f"<td{attr(i)}>{c if isinstance(c, Raw) else esc(c)}</td>" for i, c in enumerate(row))
        out.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


class Raw(str):
    """Already-escaped HTML that :func:`table` inserts as is."""


def figure(src: str, alt: str) -> str:
    return f'<p><img src="{esc(src)}" alt="{esc(alt)}"></p>'


def pre_json(obj: Any) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=2, default=str))}</pre>"


def page(title: str, body: Sequence[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        *body,
        "</body>",
        "</html>",
        "",
    ])
