"""sweep.parquet: one row per model x hook point x configuration, every summary field flattened."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from ..results import write_bytes_atomic
from .store import TABLE_FILE, TIMING, load_sweep_pieces

_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|h|layer)\.(\d+)\.")


def layer_of(hook: Any) -> int | None:
    m = _LAYER.search(str(hook or ""))
    return int(m.group(1)) if m else None


def _timing(key: str) -> bool:
    return any(word in key.split(".")[-1] for word in TIMING)


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become JSON text; timing fields are left out."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if _timing(name):
            continue
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, sort_keys=True, default=str)
        else:
            out[name] = value
    return out


def piece_rows(job: dict[str, Any], run: Any) -> list[dict[str, Any]]:
    rows = []
    for entry in run.summary.get("results") or []:
        rest = {k: v for k, v in entry.items() if k not in ("label", "compressor", "params", "hook")}
        row: dict[str, Any] = {"model": job["model"], "job": job["id"], "piece": run.path.name,
                               "hook": entry.get("hook"), "layer": layer_of(entry.get("hook")),
                               "config": entry.get("label"), "compressor": entry.get("compressor")}
        row.update({f"param.{k}": v for k, v in (entry.get("params") or {}).items()})
        row.update(flatten(rest))
        rows.append(row)
    return rows


def sweep_frame(out: Path) -> Any:
    """Every finished piece's summary entries as one DataFrame, in plan order."""
    import pandas as pd

    rows = [row for job, run in load_sweep_pieces(out) for row in piece_rows(job, run)]
    frame = pd.DataFrame(rows)
    for col in frame.columns:  # a column mixing text and numbers is stored as text
        kinds = {type(v) for v in frame[col] if v is not None and v == v}
        if len(kinds) > 1 and str in kinds:
            frame[col] = [None if v is None else str(v) for v in frame[col]]
    return frame


def write_table(out: Path) -> Path:
    """Write sweep.parquet atomically from the pieces (verified) and return its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..schema import META_VERSION, SCHEMA_VERSION

    buf = io.BytesIO()
    table = pa.Table.from_pandas(sweep_frame(out), preserve_index=False)
    # the results schema of the pieces; no run id: the table is the same for every executor and resume
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_VERSION: str(SCHEMA_VERSION).encode()})
    pq.write_table(table, buf)
    write_bytes_atomic(out / TABLE_FILE, buf.getvalue())
    return out / TABLE_FILE
