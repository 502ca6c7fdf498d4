"""featsurv-hqq: a featsurv plugin wrapping HQQ (Half-Quadratic Quantization, the ``hqq`` package).

Installed with ``pip install ./distributions/featsurv-hqq``, it is found through the entry point
``hqq = "featsurv_hqq"`` in the ``featsurv`` group and registers one compressor, ``hqq``.
Importing this module is cheap: hqq and torch are imported only when the compressor runs.
"""
from __future__ import annotations

from featsurv import hookimpl

from .compressor import BITS, HQQ, HQQ_REQUIREMENT, dequantized, quant_config, quantize_weight

__version__ = "0.1.0"

__all__ = ["BITS", "HQQ", "HQQ_REQUIREMENT", "dequantized", "quant_config", "quantize_weight",
           "register_compressors", "__version__"]


@hookimpl
def register_compressors(register):
    register(HQQ())
