"""The FP cache's CSR batches made dense in a reused buffer: exactly ``to_dense``, never overwriting a kept tensor."""
from __future__ import annotations

import torch

from featsurv.dense_fp import DenseFP, _use_count
from featsurv.fp_pass import sparse


def batches(sizes, d=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, d, generator=gen)
        x[torch.rand(n, d, generator=gen) < 0.85] = 0  # mostly zeros, as SAE features are
        x[0] = 0  # an empty row
        out.append(x)
    return out


def test_every_batch_is_exactly_to_dense_and_the_buffer_is_reused():
    assert _use_count(torch.zeros(2)) is not None  # this torch reports use counts: the reuse path runs
    rebuild, ptrs = DenseFP(), set()
    for x in batches([7, 7, 5, 7, 3, 7]):  # shorter batches fit the first buffer
        csr = sparse(x)
        got = rebuild.dense(csr, "cpu")
        assert got.dtype == csr.to_dense().dtype and torch.equal(got, csr.to_dense()) and torch.equal(got, x)
        ptrs.add(got.data_ptr())
        del got
    assert len(ptrs) == 1  # one buffer for all of them


def test_a_longer_batch_gets_a_larger_buffer():
    rebuild = DenseFP()
    for x in batches([3, 9, 9, 2], seed=1):
        assert torch.equal(rebuild.dense(sparse(x), "cpu"), x)


def test_a_kept_tensor_view_or_array_is_never_overwritten():
    xs = batches([6, 6, 6, 6], seed=2)
    rebuild = DenseFP()
    kept = rebuild.dense(sparse(xs[0]), "cpu")  # the caller keeps the tensor itself
    view = rebuild.dense(sparse(xs[1]), "cpu")[2:4]  # ... or a view of it
    array = rebuild.dense(sparse(xs[2]), "cpu").numpy()  # ... or a NumPy array over it
    last = rebuild.dense(sparse(xs[3]), "cpu")
    assert torch.equal(kept, xs[0]) and torch.equal(view, xs[1][2:4])
    assert (array == xs[2].numpy()).all() and torch.equal(last, xs[3])


def test_a_dense_cache_batch_passes_through():
    x = batches([4], seed=3)[0]
    assert DenseFP().dense(x, "cpu") is x
