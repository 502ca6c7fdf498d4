"""featsurv: audit what model compression does to the SAE features of a language model."""
from __future__ import annotations

import sys
import types
from typing import Any

from .base import (
    Batch,
    Column,
    Compressor,
    DatasetSource,
    FeatureAccumulator,
    FeatureResult,
    FPAccumulator,
    LoadedModel,
    LoadedSAE,
    Metric,
    ModelAccumulator,
    ModelAdapter,
    ReportSection,
    SAESource,
    WeightTarget,
)
from .errors import FeatsurvError
from .hookspecs import hookimpl
from .params import Param

__version__ = "0.1.0"

#: the Python API (featsurv/api.py), imported on first use so that `import featsurv` stays light
_LAZY = {"audit": "api", "compare": "api", "load_run": "api", "Run": "api",
         "Progress": "progress", "ProgressEvent": "progress"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """``featsurv.audit`` and ``featsurv.compare`` are API functions, although modules of the same
    names exist (featsurv/audit.py, featsurv/compare.py): importing those modules must not replace
    the functions on the package (``from featsurv.audit import AuditSession`` still works)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if _LAZY.get(name) == "api" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Batch", "Column", "Compressor", "FPAccumulator", "ReportSection", "DatasetSource", "FeatureAccumulator", "FeatureResult", "FeatsurvError",
    "LoadedModel", "LoadedSAE", "Metric", "ModelAccumulator", "ModelAdapter", "Param",
    "SAESource", "WeightTarget", "hookimpl", "__version__",
    "audit", "compare", "load_run", "Run", "Progress", "ProgressEvent",
]
