"""Compressor ``torchao``: torchao's ``IntxWeightOnlyConfig`` weight quantization, read back dequantized.

For each target weight matrix the compressor builds a throw-away ``torch.nn.Linear`` holding a copy
of the weight, quantizes it with ``torchao.quantization.quantize_`` exactly as a deployment would,
then calls ``dequantize()`` on torchao's quantized weight tensor and copies the result into the
original weight. The audit therefore measures the values torchao itself computes (its choice of
scales, zero points, rounding and clamping), not a re-implementation of them.

torchao is imported only inside the methods, so registering the plugin stays cheap.
"""
from __future__ import annotations

import logging
from typing import Any

from featsurv import Compressor, FeatsurvError, Param, WeightTarget

#: torchao release line this plugin is written and tested against (``IntxWeightOnlyConfig`` v2).
TORCHAO_REQUIREMENT = "torchao~=0.18.0"

GRANULARITIES = "axis (one scale per output row) or group:G (G consecutive input weights per scale)"
MAPPINGS = ("symmetric", "asymmetric", "symmetric_no_clipping_err")
ALGORITHMS = ("affine", "hqq_scale_only")


def check_granularity(value: str) -> str | None:
    """Validator of the ``granularity`` parameter: ``axis`` or ``group:G`` with G > 0."""
    if value == "axis":
        return None
    if value.startswith("group:"):
        size = value.split(":", 1)[1]
        if size.isdigit() and int(size) > 0:
            return None
    return f"granularity must be {GRANULARITIES}"


# --------------------------------------------------------------------------- quiet import
class _DropKnownNoise(logging.Filter):
    """Drop the log lines that importing torchao prints on a CPU-only torch (harmless)."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(f in text for f in self.fragments)


_FILTERS_INSTALLED = False


def install_log_filters() -> None:
    """Silence two known, harmless messages that ``import torchao`` logs on a CPU-only torch.

    - torchao: ``Failed to load .../_C_mxfp8...so`` / ``_C_cutlass_90a...so``: CUDA-only kernels
      that cannot load without CUDA; weight-only quantization does not use them.
    - torch: ``<enum ...> is an Enum subclass and is now natively supported by torch.compile``:
      a deprecation notice about torchao's own enums.

    Only these messages are dropped; every other torchao or torch log line still shows. Note that
    once torchao is installed, ``transformers`` imports it too (its torchao quantizer), so these
    lines would otherwise appear on every featsurv run, not only on runs of this plugin.
    """
    global _FILTERS_INSTALLED
    if _FILTERS_INSTALLED:
        return
    logging.getLogger("torchao").addFilter(_DropKnownNoise("Failed to load", "Skipping import of cpp extensions"))
    logging.getLogger("torch.utils._pytree").addFilter(
        _DropKnownNoise("is an Enum subclass and is now natively supported"))
    _FILTERS_INSTALLED = True


def _import_torchao() -> Any:
    install_log_filters()
    try:
        import torchao
        from torchao.quantization import IntxWeightOnlyConfig, MappingType, quantize_  # noqa: F401
        from torchao.quantization.granularity import PerAxis, PerGroup  # noqa: F401
    except Exception as exc:  # not installed, or a release with another API
        raise FeatsurvError(
            f"The torchao compressor cannot import torchao: {type(exc).__name__}: {exc}",
            hint=f"Install a supported release: pip install '{TORCHAO_REQUIREMENT}' "
                 "(it needs no other torch than the one installed)") from None
    return torchao


# --------------------------------------------------------------------------- torchao calls
def torchao_config(bits: int, granularity: str = "axis", mapping: str = "symmetric",
                   algorithm: str = "affine") -> Any:
    """The ``IntxWeightOnlyConfig`` for one featsurv configuration."""
    _import_torchao()
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, MappingType
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quantize_.workflows import IntxChooseQParamsAlgorithm

    if not 1 <= int(bits) <= 8:
        raise FeatsurvError(f"torchao IntxWeightOnlyConfig supports 1 to 8 bits, not {bits}", allowed="bits in [2, 8]")
    if check_granularity(granularity):
        raise FeatsurvError(f"Bad granularity {granularity!r}", allowed=GRANULARITIES)
    if mapping not in MAPPINGS:
        raise FeatsurvError(f"Bad mapping {mapping!r}", allowed=MAPPINGS)
    if algorithm not in ALGORITHMS:
        raise FeatsurvError(f"Bad algorithm {algorithm!r}", allowed=ALGORITHMS)
    if algorithm == "hqq_scale_only" and mapping != "symmetric":
        raise FeatsurvError(
            f"algorithm hqq_scale_only chooses symmetric scales only; mapping {mapping!r} would be ignored",
            hint="Use -p mapping=symmetric with algorithm=hqq_scale_only, or algorithm=affine")
    gran = PerAxis(0) if granularity == "axis" else PerGroup(int(granularity.split(":", 1)[1]))
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{int(bits)}"),
        granularity=gran,
        mapping_type=getattr(MappingType, mapping.upper()),
        intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm(algorithm),
    )


def quantize_weight(weight: Any, config: Any, name: str = "weight") -> Any:
    """torchao's quantized tensor for a copy of the 2-D ``weight`` ``[out, in]`` (``weight`` is untouched).

    The copy sits in a fresh ``torch.nn.Linear`` (built on the meta device, so nothing is
    allocated twice) and goes through ``torchao.quantization.quantize_`` like any deployed
    Linear. The result is torchao's weight tensor subclass (``IntxUnpackedToInt8Tensor``: integer
    ``qdata``, ``scale``, ``zero_point``, ``block_size``); call ``.dequantize()`` for the values.
    """
    _import_torchao()
    import torch
    from torchao.quantization import quantize_

    if weight.ndim != 2:
        raise FeatsurvError(f"The torchao compressor quantizes 2-D weight matrices; {name} has shape "
                            f"{tuple(weight.shape)}", hint="Leave this module out of --scope")
    granularity = getattr(config, "granularity", None)
    group = getattr(granularity, "group_size", None)
    if group is not None and weight.shape[1] % group:
        raise FeatsurvError(
            f"granularity group:{group} does not divide the input size {weight.shape[1]} of {name}",
            hint="Pick a group size that divides every matrix's input dimension (e.g. 32, 64, 128), or use axis")
    out_features, in_features = weight.shape
    shell = torch.nn.Linear(in_features, out_features, bias=False, device="meta")
    shell.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
    quantize_(shell, config)
    return shell.weight


def dequantized(weight: Any, config: Any, name: str = "weight") -> Any:
    """What torchao would deploy for ``weight``, dequantized to ``weight``'s dtype and shape."""
    qweight = quantize_weight(weight, config, name)
    return qweight.dequantize().to(weight.dtype).reshape(weight.shape)


# --------------------------------------------------------------------------- the compressor
class TorchAOIntx(Compressor):
    name = "torchao"
    description = ("torchao IntxWeightOnlyConfig weight-only quantization (int2..int8, per axis or group); "
                   "audits torchao's own dequantized weights")
    params = (
        Param("bits", int, 4, "bit-width (torch.int<bits>)", minimum=2, maximum=8),
        Param("granularity", str, "axis", f"scale sharing: {GRANULARITIES}", check=check_granularity),
        Param("mapping", str, "symmetric", "torchao MappingType", choices=MAPPINGS),
        Param("algorithm", str, "affine", "how torchao chooses scales (IntxChooseQParamsAlgorithm)",
              choices=ALGORITHMS),
    )
    knob = "bits"
    knob_range = (2, 8)
    knob_increases_compression = False
    compare_default = {"bits": 4}

    def label(self, params: dict[str, Any]) -> str:
        defaults = {p.name: p.default for p in self.params}
        extra = [f"{k}={params[k]}" for k in ("granularity", "mapping", "algorithm")
                 if k in params and params[k] != defaults[k]]
        return " ".join([f"torchao int{params['bits']}", *extra])

    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        defaults = {p.name: p.default for p in self.params}
        p = {**defaults, **params}
        config = torchao_config(p["bits"], p["granularity"], p["mapping"], p["algorithm"])
        with torch.no_grad():
            for t in targets:
                w = t.weight
                w.copy_(dequantized(w, config, t.name))
