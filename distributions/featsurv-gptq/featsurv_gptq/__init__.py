"""featsurv-gptq: a featsurv plugin wrapping GPTQ (gptqmodel's per-layer ``GPTQ``).

Installed with ``pip install ./distributions/featsurv-gptq``, it is found through the entry point
``gptq = "featsurv_gptq"`` in the ``featsurv`` group and registers one compressor, ``gptq``, which
needs calibration. Importing this module is cheap: gptqmodel and torch load only when it runs.
"""
from __future__ import annotations

from featsurv import hookimpl

from .compressor import GPTQ, GPTQMODEL_REQUIREMENT, collect_inputs, gptq_quantize

__version__ = "0.1.0"

__all__ = ["GPTQ", "GPTQMODEL_REQUIREMENT", "collect_inputs", "gptq_quantize", "register_compressors", "__version__"]


@hookimpl
def register_compressors(register):
    register(GPTQ())
