"""featsurv: audit what model compression does to the SAE features of a language model."""
from __future__ import annotations

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

__all__ = [
    "Batch", "Column", "Compressor", "FPAccumulator", "ReportSection", "DatasetSource", "FeatureAccumulator", "FeatureResult", "FeatsurvError",
    "LoadedModel", "LoadedSAE", "Metric", "ModelAccumulator", "ModelAdapter", "Param",
    "SAESource", "WeightTarget", "hookimpl", "__version__",
]
