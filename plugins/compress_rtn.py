"""Compressor ``rtn``: simulated round-to-nearest weight quantization (quantize, dequantize, write back)."""
from __future__ import annotations

from typing import Any

from featsurv import Compressor, FeatsurvError, Param, WeightTarget, hookimpl

ARITHS = ("fp32", "native")
GRANULARITIES = "channel, tensor, group:G (G input weights per scale), tl (TransformerLens layout)"


def _check_granularity(value: str) -> str | None:
    if value in ("channel", "tensor", "tl"):
        return None
    if value.startswith("group:"):
        size = value.split(":", 1)[1]
        if size.isdigit() and int(size) > 0:
            return None
    return f"granularity must be one of {GRANULARITIES}"


def quantize_dequantize(w: Any, bits: int, symmetric: bool = True, granularity: str = "channel",
                        head_layout: tuple[int, int, int] | None = None, arith: str = "fp32") -> Any:
    """Return ``w`` rounded to a ``bits``-bit grid, same shape: in float32 (``arith="fp32"``), or
    computed step by step in ``w``'s own dtype (``arith="native"``, the reference study's code).

    Symmetric: ``scale = max|w| / (2^(b-1) - 1)``, no zero point. Asymmetric:
    ``scale = (max - min) / (2^b - 1)`` with an integer zero point, the range widened to include 0. The max/min run over the
    elements that share a scale: the whole tensor, each output row (channel), each group of G
    consecutive input weights of a row, or (``tl``) TransformerLens's layout, where q/k/v rows laid
    out as ``(n_heads, n_parts, d_head)`` share one scale per (part, d_head index) across heads.

    ``native``: the scale, ``w / scale``, the rounding and ``q * scale`` are each rounded to the
    weight's dtype (bf16 for Gemma), and symmetric codes are clamped to ``[-2^(b-1), 2^(b-1) - 1]``
    as the reference's code did (in bf16 the rounded scale can put the most negative weight one code
    below ``-qmax``). For float32 weights both modes give the same result.
    """
    import torch

    if arith not in ARITHS:
        raise FeatsurvError(f"Unknown RTN arithmetic {arith!r}", allowed=ARITHS)
    x = w.detach() if arith == "native" else w.detach().to(torch.float32)
    shape = x.shape
    if x.ndim != 2:
        x = x.reshape(shape[0], -1)
    if granularity == "tensor":
        view, dims = x.reshape(1, -1), (1,)
    elif granularity == "channel" or (granularity == "tl" and head_layout is None):
        view, dims = x, (1,)
    elif granularity == "tl":
        n_heads, parts, d_head = head_layout
        view, dims = x.reshape(n_heads, parts, d_head, x.shape[1]), (0, 3)
    else:
        group = int(granularity.split(":", 1)[1])
        if x.shape[1] % group:
            raise FeatsurvError(
                f"granularity {granularity!r} does not divide the input size {x.shape[1]} of a weight matrix",
                hint="Pick a group size that divides every matrix's input dimension (e.g. 32, 64, 128)")
        view, dims = x.reshape(x.shape[0], -1, group), (2,)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = view.abs().amax(dim=dims, keepdim=True) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.clamp(torch.round(view / scale), -qmax - (arith == "native"), qmax)
        out = q * scale
    else:
        levels = 2 ** bits - 1
        # the range always contains 0 (as torchao and most deployed schemes do), so a constant
        # group is represented exactly and zero stays exactly zero
        lo = view.amin(dim=dims, keepdim=True).clamp(max=0)
        hi = view.amax(dim=dims, keepdim=True).clamp(min=0)
        scale = (hi - lo) / levels
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(view / scale) + zero, 0, levels)
        out = (q - zero) * scale
    return out.reshape(shape)


class RTN(Compressor):
    name = "rtn"
    description = "Round-to-nearest weight quantization (simulated), symmetric absmax by default"
    params = (
        Param("bits", int, 8, "bit-width", minimum=2, maximum=16),
        Param("symmetric", bool, True, "absmax without zero point (false: min/max with zero point)"),
        Param("granularity", str, "channel", f"scale sharing: {GRANULARITIES}", check=_check_granularity),
        Param("arith", str, "fp32", "arithmetic: fp32 (quantize in float32, cast back) or native (every step "
              "in the weight's dtype, e.g. bf16, as the reference study did)", choices=ARITHS),
    )
    knob = "bits"
    knob_range = (2, 8)
    knob_increases_compression = False
    compare_default = {"bits": 6}

    def label(self, params: dict[str, Any]) -> str:
        extra = [f"{k}={params[k]}" for k in ("symmetric", "granularity", "arith")
                 if k in params and params[k] != dict((p.name, p.default) for p in self.params)[k]]
        return " ".join([f"rtn int{params['bits']}", *extra])

    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            for t in targets:
                w = t.weight
                deq = quantize_dequantize(w, params["bits"], params["symmetric"], params["granularity"], t.head_layout,
                                          params.get("arith", "fp32"))
                w.copy_(deq.to(w.dtype))


@hookimpl
def register_compressors(register):
    register(RTN())
