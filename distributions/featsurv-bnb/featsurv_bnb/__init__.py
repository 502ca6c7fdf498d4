"""featsurv-bnb: a featsurv plugin wrapping bitsandbytes' LLM.int8 and NF4/FP4 quantization.

Installed with ``pip install ./distributions/featsurv-bnb``, it is found through the entry point
``bnb = "featsurv_bnb"`` in the ``featsurv`` group and registers one compressor, ``bnb``.
Importing this module is cheap: bitsandbytes and torch are imported only when the compressor runs.
"""
from __future__ import annotations

from featsurv import hookimpl

from .compressor import (BLOCKSIZES, BNB_REQUIREMENT, MODES, BitsAndBytes, four_bit_dequantized, install_log_filters,
                         int8_dequantized, int8_linear, probe, quantize_4bit)

__version__ = "0.1.0"

__all__ = ["BLOCKSIZES", "BNB_REQUIREMENT", "MODES", "BitsAndBytes", "four_bit_dequantized", "install_log_filters",
           "int8_dequantized", "int8_linear", "probe", "quantize_4bit", "register_compressors", "__version__"]

# transformers imports bitsandbytes whenever it is installed; drop its harmless CPU notices first.
install_log_filters()


@hookimpl
def register_compressors(register):
    register(BitsAndBytes())
