"""The FP features of each batch as a dense tensor again, rebuilt in one reused buffer.

The FP pass keeps each batch's FP features as a CSR matrix (:func:`featsurv.fp_pass.sparse`);
every configuration's accumulators get them dense. ``to_dense`` allocates a fresh
``[tokens, d_sae]`` tensor per batch (64 MiB for 1024 tokens of a 16k-wide SAE), whose pages the
kernel zeroes every time. :class:`DenseFP` instead keeps one buffer, resets only the entries the
previous batch set and writes the new batch's: the same tensor values, O(stored values) work.

A buffer is reused only when nothing outside holds it: the tensor handed out is a view, and
if an accumulator kept it (or a view of it, or a NumPy array over it) the storage's use count
shows it and the next batch gets a fresh buffer, so a kept tensor is never overwritten.
"""
from __future__ import annotations

from typing import Any


def _use_count(t: Any) -> int | None:
    """How many tensors (views, NumPy arrays) share ``t``'s storage; None where torch does not say."""
    import torch

    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    try:
        return int(count(t.untyped_storage()._cdata))
    except (AttributeError, RuntimeError, TypeError):
        return None


class DenseFP:
    """One hook point's FP batches, dense, in a buffer reused while nobody else holds it."""

    def __init__(self) -> None:
        self._buf: Any = None
        self._alone: int | None = None  # the buffer's storage use count with no view outside
        self._set: tuple[Any, Any] | None = None  # (rows, cols) the last batch wrote

    def dense(self, fp: Any, device: Any) -> Any:
        """``fp.to(device).to_dense()`` (``fp``: a CSR batch of the FP cache, or a dense one)."""
        import torch

        fp = fp.to(device)
        if fp.layout != torch.sparse_csr:
            return fp.to_dense() if fp.is_sparse else fp
        n, d = fp.shape
        crow, values = fp.crow_indices(), fp.values()
        rows = torch.repeat_interleave(torch.arange(n, device=fp.device), (crow[1:] - crow[:-1]).long(),
                                       output_size=values.numel())  # known size: no wait for a device
        cols = fp.col_indices().long()
        buf = self._reusable(n, d, values.dtype, fp.device)
        if buf is None:
            buf = torch.zeros((n, d), dtype=values.dtype, device=fp.device)
            self._buf, self._alone, self._set = buf, _use_count(buf), None
        elif self._set is not None:
            buf[self._set] = 0  # only what the previous batch wrote
        buf[rows, cols] = values
        self._set = (rows, cols)
        return buf[:n]

    def _reusable(self, n: int, d: int, dtype: Any, device: Any) -> Any:
        buf = self._buf
        if (buf is None or self._alone is None or buf.shape[0] < n or buf.shape[1] != d or buf.dtype != dtype
                or buf.device != device or _use_count(buf) != self._alone):
            return None
        return buf
