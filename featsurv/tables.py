"""Writing a metric's extra table (a pandas DataFrame) to Parquet."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_parquet(frame: Any, path: str | Path) -> None:
    """``frame`` to ``path`` as ``DataFrame.to_parquet(index=False)`` would, except that columns
    held in Arrow (``pd.ArrowDtype``: list and string columns built without a Python object per
    row) are recorded in the pandas metadata as the object / str columns they read back as, so
    that ``pd.read_parquet`` with either dtype backend reads the file; and NaN inside their float
    lists is stored as null, as pandas' conversion of an object column of arrays stores it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    float_lists, lists = [], []
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            lists.append(field.name)
            if pa.types.is_floating(field.type.value_type):
                float_lists.append(field.name)
                table = table.set_column(i, field.name, _nan_to_null(table.column(i)))
    meta = dict(table.schema.metadata or {})
    if b"pandas" in meta:
        pandas_meta = json.loads(meta[b"pandas"])
        for col in pandas_meta.get("columns", []):
            if str(col.get("numpy_type", "")).endswith("[pyarrow]"):
                col["numpy_type"] = "str" if col.get("pandas_type") in ("unicode", "string") else "object"
        meta[b"pandas"] = json.dumps(pandas_meta).encode()
        table = table.replace_schema_metadata(meta)
    # Float lists (activation windows: few repeats) skip the dictionary encoding, which the
    # writer would try and abandon at a cost; list columns skip min/max statistics, which no
    # reader filters on. Same values, about a third less time writing contexts.parquet.
    names = table.column_names
    pq.write_table(table, str(path), use_dictionary=[n for n in names if n not in float_lists] or False,
                   write_statistics=[n for n in names if n not in lists] or False)


def _nan_to_null(column: Any) -> Any:
    """A list<float> column with each NaN item replaced by null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks = []
    for chunk in column.chunks:
        values = chunk.values
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
        chunks.append(pa.ListArray.from_arrays(chunk.offsets, values, mask=chunk.is_null()))
    return pa.chunked_array(chunks, type=column.type)
