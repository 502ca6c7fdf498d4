"""Metric tables built in Arrow are written as the object-column tables they replace."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from featsurv_plugins.metric_contexts import list_column

from featsurv.tables import write_parquet


def _frames():
    rng = np.random.default_rng(0)
    ids = rng.integers(-1, 50, size=(7, 5)).astype(np.int32)
    win = rng.normal(size=(7, 5)).astype(np.float32)
    win[0, 0] = np.nan
    words = np.array([f"t{i}" for i in range(50)] + [""], dtype=object)[ids]
    old = pd.DataFrame({"feature": np.arange(7, dtype=np.int32), "kind": ["fp_top"] * 7,
                        "window_ids": list(ids), "fp_window": list(win), "window_tokens": list(words),
                        "text": ["".join(r) for r in words.tolist()]})
    import pyarrow as pa

    new = old.assign(window_ids=list_column(ids), fp_window=list_column(win),
                     window_tokens=pd.arrays.ArrowExtensionArray(pa.array(words.tolist(), type=pa.list_(pa.string()))),
                     text=pd.arrays.ArrowExtensionArray(pa.array(old["text"].tolist(), type=pa.large_string())))
    return old, new


@pytest.mark.parametrize("backend", ["numpy_nullable", "pyarrow", None])
def test_arrow_list_columns_read_back_like_object_columns(tmp_path, backend):
    old, new = _frames()
    old.to_parquet(tmp_path / "old.parquet", index=False)
    write_parquet(new, tmp_path / "new.parquet")
    kw = {"dtype_backend": backend} if backend else {}
    a, b = pd.read_parquet(tmp_path / "old.parquet", **kw), pd.read_parquet(tmp_path / "new.parquet", **kw)
    assert list(a.columns) == list(b.columns) and a.dtypes.astype(str).tolist() == b.dtypes.astype(str).tolist()
    for col in a.columns:
        for u, v in zip(a[col], b[col]):
            if isinstance(u, (str, np.integer, int)):
                assert u == v
            else:
                np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert pq.read_schema(tmp_path / "old.parquet").remove_metadata().equals(
        pq.read_schema(tmp_path / "new.parquet").remove_metadata())
