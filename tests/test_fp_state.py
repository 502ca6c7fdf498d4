"""The FP-state codec (featsurv/state_codec.py): exact round trips, no pickle, refusals."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from featsurv.errors import FeatsurvError
from featsurv.state_codec import Decoder, Encoder


@dataclass
class Inner:
    values: np.ndarray
    payload: dict
    note: str = "x"
    cache: dict = field(default_factory=dict)
    tokenizer: object = None


def roundtrip(obj, refs=None, tmp_path=None):
    enc = Encoder(refs)
    tree = json.loads(json.dumps(enc.encode(obj)))  # through JSON text, as stored
    path = tmp_path / "a.npz"
    np.savez(path, **enc.arrays)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return Decoder(arrays, refs).decode(tree)


def test_round_trip_is_exact_for_every_kind(tmp_path):
    tok = object()
    dense = torch.tensor([[0.0, 1.5, 0.0], [2.25, 0.0, -3.0]])
    obj = {
        "f64": np.float64(0.1) + np.float64(0.2), "f32": np.float32(1 / 3), "i": 7, "f": float("nan"),
        "inf": float("inf"), "b": np.bool_(True), "s": "text", "none": None, "tuple": (1, 2.5, "a"),
        3: "int key", "arr": np.arange(6, dtype=np.int16).reshape(2, 3), "f16": np.array([1.1], np.float16),
        "csr": [dense.to_sparse_csr()], "bf16": torch.tensor([1.1, -2.3], dtype=torch.bfloat16),
        "dc": Inner(np.array([1.0, 2.0]), {"ids": np.array([[1, 2]], np.int32)}, tokenizer=tok),
    }
    back = roundtrip(obj, {"tokenizer": tok}, tmp_path)
    assert list(back) == list(obj)
    assert type(back["f64"]) is np.float64 and back["f64"] == obj["f64"]  # 0.30000000000000004, bit for bit
    assert type(back["f32"]) is np.float32 and back["f32"] == obj["f32"] and back["b"] is np.True_
    assert back["i"] == 7 and np.isnan(back["f"]) and back["inf"] == float("inf") and back["none"] is None
    assert back["tuple"] == (1, 2.5, "a") and back[3] == "int key"
    assert back["arr"].dtype == np.int16 and (back["arr"] == obj["arr"]).all() and back["f16"].dtype == np.float16
    csr = back["csr"][0]
    assert csr.layout == torch.sparse_csr and torch.equal(csr.to_dense(), dense)
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], obj["bf16"])
    dc = back["dc"]
    assert isinstance(dc, Inner) and dc.tokenizer is tok and dc.note == "x" and dc.cache == {}
    assert (dc.payload["ids"] == [[1, 2]]).all() and dc.payload["ids"].dtype == np.int32


def test_unstorable_values_are_refused_naming_where():
    with pytest.raises(FeatsurvError, match=r"state\['hooks'\]\[0\] \(a object"):
        Encoder().encode({"hooks": [object()]})
    with pytest.raises(FeatsurvError, match="array of Python objects"):
        Encoder().encode(np.array([{"a": 1}], dtype=object))


def test_decoder_builds_only_imported_dataclasses():
    tree = {"__dataclass__": "os:system", "fields": {"command": "true"}}
    with pytest.raises(ValueError, match="not an imported dataclass"):
        Decoder({}).decode(tree)
    tree = {"__dataclass__": "no_such_module_xyz:Thing", "fields": {}}
    with pytest.raises(ValueError, match="not an imported dataclass"):
        Decoder({}).decode(tree)
    with pytest.raises(ValueError, match="unknown reference"):
        Decoder({}).decode({"__ref__": "model"})
    with pytest.raises(ValueError, match="missing"):
        Decoder({}).decode({"__array__": "a9"})


def test_a_tampered_sparse_tensor_is_refused_not_built():
    enc = Encoder()
    tree = enc.encode(torch.tensor([[0.0, 1.0], [2.0, 0.0]]).to_sparse_csr())
    col = tree["__csr__"][1]["__tensor__"]
    enc.arrays[col] = np.array([0, 99], dtype=enc.arrays[col].dtype)  # a column index out of range
    with pytest.raises(RuntimeError):
        Decoder(enc.arrays).decode(tree)
