"""featsurv-torchao: a third-party featsurv plugin wrapping torchao's weight-only quantization.

Installed with ``pip install ./distributions/featsurv-torchao``, it is found through the entry point
``torchao = "featsurv_torchao"`` in the ``featsurv`` group and registers one compressor,
``torchao`` (``featsurv plugins`` lists it with its parameters). Importing this module is cheap:
torchao and torch are imported only when the compressor runs.
"""
from __future__ import annotations

from featsurv import hookimpl

from .compressor import (ALGORITHMS, GRANULARITIES, MAPPINGS, TORCHAO_REQUIREMENT, TorchAOIntx, dequantized,
                         install_log_filters, quantize_weight, torchao_config)

__version__ = "0.1.0"

__all__ = ["ALGORITHMS", "GRANULARITIES", "MAPPINGS", "TORCHAO_REQUIREMENT", "TorchAOIntx", "dequantized",
           "install_log_filters", "quantize_weight", "register_compressors", "torchao_config", "__version__"]

# transformers imports torchao whenever it is installed; drop the two harmless lines that import
# prints on a CPU-only torch before anything imports it (see install_log_filters).
install_log_filters()


@hookimpl
def register_compressors(register):
    register(TorchAOIntx())
