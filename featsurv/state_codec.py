"""A safe, exact codec for in-memory FP state: a JSON tree plus a dict of numpy arrays (an .npz).

It stores ``None``/bool/int/float/str, lists, tuples, dicts (any encodable keys, in order),
numpy arrays and scalars (dtype kept, bit for bit), torch tensors (dense or sparse CSR; bfloat16
kept through an int16 view), dataclass instances, and named references to live objects (the
loaded tokenizer) that are re-attached on decode. Decoding never unpickles: arrays are read with
``allow_pickle=False``, and a dataclass is rebuilt only when its class is already imported
(``sys.modules``) and is a dataclass, so the file cannot name code to run.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

from .errors import FeatsurvError


_PLAIN = (type(None), bool, int, float, str)


class Encoder:
    """``encode(obj)`` -> JSON-able tree; the arrays it refers to are in ``self.arrays``."""

    def __init__(self, refs: dict[str, Any] | None = None):
        self.arrays: dict[str, Any] = {}
        self.refs = {id(v): k for k, v in (refs or {}).items() if v is not None}

    def _array(self, arr: Any) -> str:
        import numpy as np

        arr = np.asarray(arr)
        if arr.dtype.hasobject:
            raise TypeError("an array of Python objects")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = np.array(arr, order="C", copy=True)  # (ascontiguousarray makes 0-d 1-d)
        return name

    def _tensor(self, t: Any) -> dict[str, Any]:
        import torch

        t = t.detach()
        device = t.device.type
        if t.layout == torch.sparse_csr:
            t = t.cpu()
            parts = [t.crow_indices(), t.col_indices(), t.values()]
            return {"__csr__": [self._tensor(p) for p in parts], "shape": list(t.shape), "device": device}
        t = t.cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return {"__tensor__": self._array(t.view(torch.int16).numpy()), "dtype": "bfloat16", "device": device}
        return {"__tensor__": self._array(t.numpy()), "device": device}

    def encode(self, obj: Any, where: str = "state") -> Any:
        import numpy as np

        if type(obj) in _PLAIN:  # exact types: a numpy float64 (a float subclass) keeps its dtype below
            return obj
        if id(obj) in self.refs:
            return {"__ref__": self.refs[id(obj)]}
        try:
            if isinstance(obj, np.ndarray):
                return {"__array__": self._array(obj)}
            if isinstance(obj, np.generic):
                return {"__scalar__": self._array(np.asarray(obj))}
            if type(obj).__module__.startswith("torch") and hasattr(obj, "layout"):
                return self._tensor(obj)
        except TypeError as exc:
            raise _unstorable(where, obj, str(exc)) from None
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            return {"__dict__": [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in obj.items()]}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            fields = {f.name: self.encode(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
            return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
        raise _unstorable(where, obj, "no way to store it without pickle")


def _unstorable(where: str, obj: Any, why: str) -> FeatsurvError:
    return FeatsurvError(f"Cannot store {where} (a {type(obj).__name__}: {why}) in the FP state",
                         hint="Run this model unsplit (drop split = \"configurations\" from the sweep file)")


class Decoder:
    """The inverse of :class:`Encoder`: ``decode(tree)`` with the arrays of the .npz and the refs."""

    def __init__(self, arrays: Any, refs: dict[str, Any] | None = None, device: str = "cpu"):
        self.arrays, self.refs, self.device = arrays, refs or {}, device

    def _get(self, name: str) -> Any:
        if name not in self.arrays:
            raise ValueError(f"array {name!r} is missing")
        return self.arrays[name]

    def _tensor(self, node: dict[str, Any]) -> Any:
        import torch

        if "__csr__" in node:
            crow, col, values = (self._tensor(p) for p in node["__csr__"])
            import warnings

            with warnings.catch_warnings():  # the invariants are checked: the file may have been tampered with
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                t = torch.sparse_csr_tensor(crow, col, values, size=tuple(node["shape"]), check_invariants=True)
        else:
            t = torch.from_numpy(self._get(node["__tensor__"]).copy())
            if node.get("dtype") == "bfloat16":
                t = t.view(torch.bfloat16)
        return t.to(self.device) if node.get("device", "cpu") != "cpu" else t

    def _dataclass(self, node: dict[str, Any]) -> Any:
        module, _, qualname = str(node["__dataclass__"]).partition(":")
        obj: Any = sys.modules.get(module)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
            raise ValueError(f"{node['__dataclass__']!r} is not an imported dataclass")
        values = {k: self.decode(v) for k, v in node["fields"].items()}
        init = {f.name for f in dataclasses.fields(obj) if f.init}
        inst = obj(**{k: v for k, v in values.items() if k in init})
        for k, v in values.items():
            if k not in init:
                object.__setattr__(inst, k, v)
        return inst

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            raise ValueError(f"unexpected node {node!r:.80}")
        if "__ref__" in node:
            if node["__ref__"] not in self.refs:
                raise ValueError(f"unknown reference {node['__ref__']!r}")
            return self.refs[node["__ref__"]]
        if "__array__" in node:
            return self._get(node["__array__"]).copy()
        if "__scalar__" in node:
            return self._get(node["__scalar__"])[()]
        if "__tensor__" in node or "__csr__" in node:
            return self._tensor(node)
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__dict__" in node:
            return {self.decode(k): self.decode(v) for k, v in node["__dict__"]}
        if "__dataclass__" in node:
            return self._dataclass(node)
        raise ValueError(f"unexpected node {node!r:.80}")
