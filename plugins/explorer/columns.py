"""The explorer's reads of the contexts table: list columns as 2-D arrays and string columns
as codes, from the Arrow buffers where the columns are Arrow-backed (no per-row Python objects)."""
from __future__ import annotations

from typing import Any

def _stack(column: Any, width: int, fill: Any, dtype: Any, rows: Any = None) -> Any:
    """A list column (Arrow-backed, or one array per row) as a 2-D array ``[rows, width]``.

    ``rows``: the row indexes to keep (default: all), taken from the flat values, not the lists.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if isinstance(getattr(column, "dtype", None), pd.ArrowDtype):
        import pyarrow.compute as pc

        arr = pa.chunked_array(column.array._pa_array).combine_chunks() if len(column) else None
        if arr is not None and arr.null_count == 0 and (pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type)):
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if (lengths == width).all():
                values = arr.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
                return (values if rows is None else values[rows]).astype(dtype, copy=False)
        column = column.to_numpy()
    else:
        column = column.to_numpy() if hasattr(column, "to_numpy") else column
    if rows is not None:
        column = np.asarray(column, dtype=object)[rows]
    try:
        out = np.stack(column).astype(dtype) if len(column) else np.full((0, width), fill, dtype=dtype)
        if out.shape == (len(column), width):
            return out
    except (ValueError, TypeError):
        pass
    out = np.full((len(column), width), fill, dtype=dtype)
    for i, v in enumerate(column):
        if v is not None and len(v):
            out[i, :len(v)] = v
    return out


def _regular_chunks(column: Any, width: int) -> list[tuple[Any, int]] | None:
    """Per chunk of an Arrow-backed list column: (its flat child values, as Arrow, and its row
    count), when no list is null and every one holds ``width`` items; else None. Nothing is copied."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if not isinstance(getattr(column, "dtype", None), pd.ArrowDtype):
        return None
    out = []
    for chunk in pa.chunked_array(column.array._pa_array).chunks:
        if not (pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type)) or chunk.null_count:
            return None
        offsets = chunk.offsets.to_numpy()
        if len(chunk) and not (np.diff(offsets) == width).all():
            return None
        out.append((chunk.values.slice(int(offsets[0]), len(chunk) * width), len(chunk)))
    return out


def _by_chunk(chunks: list[tuple[Any, int]], rows: Any) -> list[tuple[Any, Any]]:
    """(flat values, the chunk's local row indexes) for the ascending global ``rows``, chunk by chunk."""
    import numpy as np

    starts = np.cumsum([0] + [n for _, n in chunks])
    cut = np.searchsorted(rows, starts)
    return [(values, rows[cut[i]:cut[i + 1]] - starts[i]) for i, (values, _) in enumerate(chunks)
            if cut[i + 1] > cut[i]]


def _take_lists(column: Any, width: int, fill: Any, dtype: Any, rows: Any) -> Any:
    """``_stack(column, width, fill, dtype, rows)`` for ascending ``rows``, read chunk by chunk from
    an Arrow list column's flat buffers (no combined copy of the column) when it is regular."""
    import numpy as np

    chunks = _regular_chunks(column, width)
    if chunks is None:
        return _stack(column, width, fill, dtype, rows)
    parts = [values.to_numpy(zero_copy_only=False).reshape(-1, width)[local].astype(dtype, copy=False)
             for values, local in _by_chunk(chunks, np.asarray(rows, dtype=np.int64))]
    return np.concatenate(parts) if parts else np.full((0, width), fill, dtype=dtype)


def _list_items(column: Any, width: int, rows: Any, at: Any) -> list[str]:
    """``str(list(column[rows[i]])[at[i]])`` for each i (ascending ``rows``), from the flat buffers when regular."""
    import numpy as np
    import pyarrow as pa

    rows, at = np.asarray(rows, dtype=np.int64), np.asarray(at, dtype=np.int64)
    chunks = _regular_chunks(column, width) if len(rows) else None
    if chunks is None:
        sub = column.iloc[rows] if len(rows) else column.iloc[:0]
        return [str(list(t)[j]) for t, j in zip(sub.tolist(), at.tolist())]
    out: list[str] = []
    done = 0
    for values, local in _by_chunk(chunks, rows):
        flat = local * width + at[done:done + len(local)]
        out.extend(str(v) for v in values.take(pa.array(flat)).to_pylist())
        done += len(local)
    return out


def _codes(column: Any, values: list[str]) -> Any:
    """The column as indexes into ``values`` (-1: not among them), through its few distinct values:
    an Arrow column by its dictionary encoding, an object column by its runs of one value (a
    concatenation of per-configuration tables has a few long runs)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    index = pd.Index(values)
    if isinstance(getattr(column, "dtype", None), pd.ArrowDtype):
        enc = pa.chunked_array(column.array._pa_array).combine_chunks().dictionary_encode()
        at = np.r_[index.get_indexer([str(v) for v in enc.dictionary.to_pylist()]), -1].astype(np.int64)
        return at[enc.indices.fill_null(len(at) - 1).to_numpy(zero_copy_only=False).astype(np.int64)]  # null: -1
    arr = np.asarray(column, dtype=object)
    try:
        starts = np.flatnonzero(np.r_[True, arr[1:] != arr[:-1]]) if len(arr) else np.zeros(0, np.int64)
    except (TypeError, ValueError):  # values that do not compare (pd.NA): every row its own run
        starts = np.arange(len(arr))
    seen, distinct = pd.factorize(arr[starts], use_na_sentinel=False)
    at = index.get_indexer([str(v) for v in distinct]).astype(np.int64)
    return np.repeat(at[np.asarray(seen, dtype=np.int64)], np.diff(np.r_[starts, len(arr)]))


def _row_peak(w: Any, peak: Any = None) -> Any:
    """Per row of ``w`` ``[rows, width]``: the largest positive value (NaN ignored; 0 if none),
    at least ``peak`` (a reduce along the short rows is slow: done on cache-sized transposed blocks)."""
    import numpy as np

    out = np.zeros(w.shape[0], dtype=w.dtype) if peak is None else peak.astype(w.dtype, copy=True)
    step = 8192  # rows per cache-sized block, reduced along its transposed (contiguous) copy
    for i in range(0, w.shape[0], step):
        np.fmax.reduce(np.ascontiguousarray(w[i:i + step].T), axis=0, initial=0.0, out=out[i:i + step])
        np.fmax(out[i:i + step], 0 if peak is None else peak[i:i + step], out=out[i:i + step])
    return out
