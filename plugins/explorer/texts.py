"""The explorer's JSON texts in bulk: numbers at 4 significant digits, digit strings, and rows
formatted by one C-level ``%`` or ``json.dumps`` per column instead of one call per value."""
from __future__ import annotations

import json
import math
from typing import Any

def _g(v: Any) -> Any:
    """A compact JSON number (4 significant digits), None for missing or non-finite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    if f == int(f) and abs(f) < 1e9:
        return int(f)
    return float(f"{f:.4g}")


def _g_list(values: Any) -> list[Any]:
    """``[_g(v) for v in values]``, formatted in one C-level pass for numeric columns."""
    import numpy as np

    try:
        x = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return [_g(v) for v in values]
    if x.size == 0:
        return []
    fin = np.isfinite(x)
    safe = np.where(fin, x, 0.0)
    out = list(map(float, ("%.4g," * x.size % tuple(safe.tolist()))[:-1].split(",")))
    whole = fin & (safe == np.trunc(safe)) & (np.abs(safe) < 1e9)
    for i, v in zip(np.flatnonzero(whole).tolist(), safe[whole].tolist()):
        out[i] = int(v)
    for i in np.flatnonzero(~fin).tolist():
        out[i] = None
    return out


def _rounded4(values: Any) -> Any:
    """4 significant digits, as a float64 array (non-finite values kept)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & (x != 0)
    mag = np.where(ok, 10.0 ** (3 - np.floor(np.log10(np.abs(np.where(ok, x, 1.0))))), 1.0)
    return np.where(ok, np.round(x * mag) / mag, x)


def _round4(values: Any) -> list[Any]:
    """4 significant digits, as a list (None for non-finite values)."""
    return _finite_list(_rounded4(values))


def _finite_list(r: Any) -> list[Any]:
    """The float array ``r`` as a list, None for its non-finite values."""
    import numpy as np

    out = r.tolist()
    for i in np.flatnonzero(~np.isfinite(r)).tolist():
        out[i] = None
    return out


def _json_items(values: list[Any]) -> list[str]:
    """Each item's JSON text (``json.dumps`` of the list, split: one C-level pass, not one call
    per item; a float's text is its ``repr``, as JSON writes it). Items must not contain commas."""
    return json.dumps(values, separators=(",", ":"), allow_nan=False)[1:-1].split(",") if values else []


def _json_numbers(values: Any) -> list[str]:
    """The JSON text of each value at 4 significant digits (``null``: not finite), formatted once
    per distinct value (rounded activations repeat a lot)."""
    import numpy as np

    r = _rounded4(values)
    if r.size == 0:
        return []
    # distinct bit patterns, not values: -0.0 keeps its sign, as repr writes it
    distinct, inverse = np.unique(np.ascontiguousarray(r, dtype=np.float64).view(np.int64), return_inverse=True)
    return np.asarray(_json_items(_finite_list(distinct.view(np.float64))), dtype=object)[inverse.reshape(-1)].tolist()


def _digit_strings(q: Any) -> list[str]:
    """Per row of the ``[rows, width]`` uint8 digit array ``q``: its digits as a quoted JSON string."""
    import numpy as np

    n, width = q.shape
    if n == 0:
        return []
    if width == 0:
        return ['""'] * n
    framed = np.empty((n, width + 3), dtype=np.uint8)
    framed[:, 0] = framed[:, width + 1] = ord('"')
    framed[:, 1:width + 1] = q + ord("0")
    framed[:, width + 2] = ord(",")
    return framed.tobytes()[:-1].decode("ascii").split(",")


def _format_rows(fmt: str, *columns: Any) -> list[str]:
    """``[fmt % row for row in zip(*columns)]`` in one C-level ``%`` over all rows (the results
    must not contain NUL, the separator)."""
    import numpy as np

    m = len(columns[0]) if columns else 0
    if m == 0:
        return []
    k = len(columns)
    args = np.empty(m * k, dtype=object)
    for j, col in enumerate(columns):
        args[j::k] = col.tolist() if isinstance(col, np.ndarray) else col
    return (((fmt + "\0") * m) % tuple(args.tolist()))[:-1].split("\0")


def _joined(fragments: list[str], group: Any, n_groups: int) -> list[str]:
    """Per group ``0..n_groups-1``: its fragments (``group`` ascending) joined by commas."""
    import numpy as np

    bounds = np.searchsorted(np.asarray(group), np.arange(n_groups + 1)).tolist()
    return [",".join(fragments[bounds[g]:bounds[g + 1]]) for g in range(n_groups)]


def _present(group: Any, n_groups: int) -> list[bool]:
    """Per group: whether any row belongs to it."""
    import numpy as np

    return (np.bincount(np.asarray(group, dtype=np.int64), minlength=n_groups) > 0).tolist()
