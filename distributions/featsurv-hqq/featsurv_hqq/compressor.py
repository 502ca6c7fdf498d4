"""Compressor ``hqq``: Half-Quadratic Quantization (the ``hqq`` package), read back dequantized.

For each target matrix the compressor quantizes a copy of the weight with hqq's own
``HQQLinear.quantize`` (HQQ's data-free half-quadratic optimisation of zero points and scales,
hqq's bit packing), then calls ``HQQLinear.dequantize()`` and copies the result into the
original weight. The audit therefore measures the values hqq itself produces.

hqq is imported only inside the functions, so registering the plugin stays cheap.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

from featsurv import Compressor, FeatsurvError, Param, WeightTarget

#: hqq release line this plugin is written and tested against.
HQQ_REQUIREMENT = "hqq~=0.2.8"
#: The integer bit-widths hqq's ``Quantizer`` supports (it has no 7-bit packing).
BITS = (1, 2, 3, 4, 5, 6, 8)
ROUND_ZERO = ("auto", "true", "false")
#: hqq quantizes scales in groups of this size when ``quant_scale`` is set (hqq_base_quant_config).
SCALE_GROUP = 128


def check_bits(value: int) -> str | None:
    return None if value in BITS else f"hqq supports {', '.join(map(str, BITS))} bits (it has no {value}-bit format)"


def check_group_size(value: int) -> str | None:
    if value == 0 or value % 8 == 0:
        return None
    return "group_size must be 0 (one group per row, or per column with axis=0) or a multiple of 8, as hqq requires"


def _import_hqq() -> Any:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from hqq.core.quantize import BaseQuantizeConfig, HQQLinear  # noqa: F401
    except Exception as exc:  # not installed, or a release with another API
        raise FeatsurvError(
            f"The hqq compressor cannot import hqq: {type(exc).__name__}: {exc}",
            hint=f"Install a supported release: pip install '{HQQ_REQUIREMENT}' "
                 "(it needs no other torch than the one installed)") from None
    import hqq

    return hqq


def quant_config(bits: int, group_size: int = 64, axis: int = 1, optimize: bool = True, round_zero: str = "auto",
                 quant_zero: bool = False, quant_scale: bool = False) -> dict[str, Any]:
    """hqq's quantization config (``hqq_base_quant_config``) for one featsurv configuration.

    ``group_size=0`` is hqq's ``None`` (one group per row for axis 1, per column for axis 0);
    ``round_zero="auto"`` keeps hqq's own choice (rounded zero points at 4 bits only);
    ``optimize=False`` turns HQQ's optimisation off (plain min/max rounding on hqq's grid).
    """
    _import_hqq()
    from hqq.core.quantize import BaseQuantizeConfig

    if check_bits(bits):
        raise FeatsurvError(f"Bad bits {bits}: {check_bits(bits)}", allowed=BITS)
    if axis not in (0, 1):
        raise FeatsurvError(f"Bad axis {axis}", allowed=[0, 1])
    if check_group_size(group_size):
        raise FeatsurvError(f"Bad group_size {group_size}: {check_group_size(group_size)}")
    if round_zero not in ROUND_ZERO:
        raise FeatsurvError(f"Bad round_zero {round_zero!r}", allowed=ROUND_ZERO)
    # hqq prints a deprecation notice (on stdout) when zero points or scales are quantized
    with contextlib.redirect_stdout(io.StringIO()):
        cfg = BaseQuantizeConfig(nbits=bits, group_size=group_size or None, quant_zero=quant_zero,
                                 quant_scale=quant_scale, axis=axis)
    cfg.pop("offload_meta", None)  # pins CPU memory for GPU offloading; not a quantization choice
    weight = cfg["weight_quant_params"]
    weight["optimize"] = bool(optimize)
    if round_zero != "auto":
        weight["round_zero"] = round_zero == "true"
    return cfg


def _check_shape(weight: Any, config: dict[str, Any], name: str) -> None:
    """hqq's own preconditions, as a clear error naming the matrix (hqq asserts)."""
    if weight.ndim != 2:
        raise FeatsurvError(f"The hqq compressor quantizes 2-D weight matrices; {name} has shape "
                            f"{tuple(weight.shape)}", hint="Leave this module out of --scope")
    params = config["weight_quant_params"]
    group = params["group_size"]
    out_features, in_features = weight.shape
    if group is None:
        group = in_features if params["axis"] == 1 else out_features
    if weight.numel() % group:
        raise FeatsurvError(
            f"group_size {group} does not divide the {out_features}x{in_features} weights of {name}",
            hint="Pick a group size that divides every matrix's size (e.g. 32, 64, 128), or group_size=0")
    if config["scale_quant_params"] is not None and (weight.numel() // group) % SCALE_GROUP:
        raise FeatsurvError(
            f"quant_scale needs the number of scales of {name} ({weight.numel() // group}) to be a multiple of "
            f"{SCALE_GROUP} (hqq quantizes scales in groups of {SCALE_GROUP})",
            hint="Use a smaller group_size, or quant_scale=false")


def quantize_weight(weight: Any, config: dict[str, Any], name: str = "weight") -> Any:
    """hqq's quantized layer (``HQQLinear``) for a copy of the 2-D ``weight`` ``[out, in]``.

    Built empty (``initialize=False``) and filled by ``HQQLinear.quantize``, which is what
    ``HQQLinear(linear, config)`` does, except that hqq 0.2.8's constructor drops the (deprecated)
    zero-point and scale quantization that ``quantize`` still implements. The layer computes in
    the weight's dtype on the weight's device. ``weight`` is left untouched.
    """
    _import_hqq()
    import torch
    from hqq.core.quantize import HQQLinear

    _check_shape(weight, config, name)
    compute_dtype = weight.dtype if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    if cfg["weight_quant_params"]["group_size"] is None:  # what HQQLinear.initialize does
        cfg["weight_quant_params"]["group_size"] = weight.shape[1] if cfg["weight_quant_params"]["axis"] == 1 \
            else weight.shape[0]
    layer = HQQLinear(None, {**cfg, "offload_meta": False}, compute_dtype=compute_dtype, device=str(weight.device),
                      initialize=False)
    layer.quantize(weight.detach().clone().to(compute_dtype), **cfg)
    return layer


def dequantized(weight: Any, config: dict[str, Any], name: str = "weight") -> Any:
    """What hqq deploys for ``weight``: ``HQQLinear.dequantize()``, in ``weight``'s dtype and shape."""
    layer = quantize_weight(weight, config, name)
    return layer.dequantize().to(weight.dtype).reshape(weight.shape)


# --------------------------------------------------------------------------- the compressor
class HQQ(Compressor):
    name = "hqq"
    description = ("HQQ half-quadratic weight quantization (the hqq package; 1-8 bits, groups, data free); "
                   "audits hqq's own dequantized weights")
    params = (
        Param("bits", int, 4, f"bit-width ({', '.join(map(str, BITS))})", minimum=1, maximum=8, check=check_bits),
        Param("group_size", int, 64, "weights per zero point and scale (0: a whole row, or column with axis=0); "
              "a multiple of 8", minimum=0, check=check_group_size),
        Param("axis", int, 1, "1: groups of consecutive input weights (hqq's default); 0: hqq's axis-0 grouping",
              minimum=0, maximum=1),
        Param("optimize", bool, True, "HQQ's half-quadratic optimisation of zero points and scales "
              "(false: plain min/max rounding)"),
        Param("round_zero", str, "auto", "round zero points to integers (auto: hqq's default, at 4 bits only)",
              choices=ROUND_ZERO),
        Param("quant_zero", bool, False, "quantize the zero points to 8 bits (HQQ paper's meta-data quantization)"),
        Param("quant_scale", bool, False, "quantize the scales to 8 bits in groups of 128"),
    )
    knob = "bits"
    # 2..6 so that bisection never asks for 7 bits, which hqq has no format for
    knob_range = (2, 6)
    knob_increases_compression = False
    compare_default = {"bits": 4}

    def label(self, params: dict[str, Any]) -> str:
        defaults = {p.name: p.default for p in self.params}
        extra = [f"{k}={params[k]}" for k in defaults if k != "bits" and k in params and params[k] != defaults[k]]
        return " ".join([f"hqq int{params.get('bits', defaults['bits'])}", *extra])

    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        p = {**{q.name: q.default for q in self.params}, **params}
        config = quant_config(p["bits"], p["group_size"], p["axis"], p["optimize"], p["round_zero"],
                              p["quant_zero"], p["quant_scale"])
        for t in targets:  # every matrix is checked before any is changed
            _check_shape(t.weight, config, t.name)
        with torch.no_grad():
            for t in targets:
                w = t.weight
                w.copy_(dequantized(w, config, t.name))
