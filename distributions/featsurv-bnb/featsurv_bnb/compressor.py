"""Compressor ``bnb``: bitsandbytes LLM.int8 and NF4/FP4, read back dequantized from bitsandbytes.

- ``mode=nf4`` / ``fp4``: each target weight goes through ``bnb.nn.Params4bit`` (blockwise 4-bit,
  optionally with double quantization of the block absmax, ``compress_statistics``) and is read
  back with ``bnb.functional.dequantize_4bit``. bitsandbytes' ``Linear4bit`` computes with exactly
  these dequantized weights, so the simulation is exact.
- ``mode=int8``: ``bnb.nn.Int8Params`` quantizes each row to int8 (absmax, in float16), read back
  with ``bnb.functional.int8_vectorwise_dequant``. LLM.int8 also quantizes the *activations* of
  every linear layer row-wise to int8, keeping input columns with an outlier above ``threshold``
  in float16: that part is ``transform`` (a context manager that runs each target Linear through
  bitsandbytes' ``Linear8bitLt`` for the configuration's forward passes).

bitsandbytes is imported only inside the functions, so registering the plugin stays cheap.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from featsurv import Compressor, FeatsurvError, Param, WeightTarget

#: bitsandbytes release line this plugin is written and tested against (its CPU backend runs every mode).
BNB_REQUIREMENT = "bitsandbytes~=0.50.2"
MODES = ("int8", "nf4", "fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: LLM.int8's outlier threshold as transformers' BitsAndBytesConfig sets it by default.
DEFAULT_THRESHOLD = 6.0


class _DropKnownNoise(logging.Filter):
    """Drop two harmless bitsandbytes log lines (see ``install_log_filters``)."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in str(record.msg) for f in self.fragments)


_FILTERS_INSTALLED = False


def install_log_filters() -> None:
    """Silence two known, harmless messages of bitsandbytes 0.50 on CPU.

    - ``Failed to load CPU gemm_4bit_forward from kernels-community``: an optional accelerated
      kernel from the hub package ``kernels``; the built-in CPU path is used instead.
    - ``MatMul8bitLt: inputs will be cast from float32 to float16``: logged on every LLM.int8
      forward of a float32 model; the cast is part of LLM.int8 (and of what featsurv measures).
    """
    global _FILTERS_INSTALLED
    if _FILTERS_INSTALLED:
        return
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKnownNoise("gemm_4bit_forward"))
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropKnownNoise("inputs will be cast"))
    _FILTERS_INSTALLED = True


def _import_bnb() -> Any:
    install_log_filters()
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional  # noqa: F401
    except Exception as exc:  # not installed, or a build that cannot load here
        raise FeatsurvError(
            f"The bnb compressor cannot import bitsandbytes: {type(exc).__name__}: {exc}",
            hint=f"Install a supported release: pip install '{BNB_REQUIREMENT}' "
                 "(it needs no other torch than the one installed)") from None
    return bnb


# --------------------------------------------------------------------------- bitsandbytes calls
def int8_dequantized(weight: Any) -> Any:
    """LLM.int8's weight: ``Int8Params`` row-wise int8 codes times their scales, in ``weight``'s dtype."""
    bnb = _import_bnb()
    param = bnb.nn.Int8Params(weight.detach().clone(), requires_grad=False, has_fp16_weights=False)
    param = param.to(weight.device)  # moving it quantizes it: param.CB (int8), param.SCB (row absmax)
    return bnb.functional.int8_vectorwise_dequant(param.CB, param.SCB).to(weight.dtype).reshape(weight.shape)


def quantize_4bit(weight: Any, quant_type: str = "nf4", double_quant: bool = False, blocksize: int = 64) -> Any:
    """bitsandbytes' ``Params4bit`` for a copy of ``weight`` (``.quant_state`` holds absmax and codebook)."""
    bnb = _import_bnb()
    param = bnb.nn.Params4bit(weight.detach().clone(), requires_grad=False, compress_statistics=double_quant,
                              quant_type=quant_type, blocksize=blocksize)
    return param.to(weight.device)  # moving it quantizes it


def four_bit_dequantized(weight: Any, quant_type: str = "nf4", double_quant: bool = False,
                         blocksize: int = 64) -> Any:
    """What ``Linear4bit`` computes with: ``dequantize_4bit`` of bitsandbytes' 4-bit weight."""
    bnb = _import_bnb()
    param = quantize_4bit(weight, quant_type, double_quant, blocksize)
    deq = bnb.functional.dequantize_4bit(param.data, param.quant_state)
    return deq.to(weight.dtype).reshape(weight.shape)


def int8_linear(weight: Any, bias: Any = None, threshold: float = DEFAULT_THRESHOLD) -> Any:
    """bitsandbytes' deployed LLM.int8 layer (``Linear8bitLt``, int8 weights) for ``weight`` ``[out, in]``."""
    import torch

    bnb = _import_bnb()
    out_features, in_features = weight.shape
    layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias is not None, has_fp16_weights=False,
                                threshold=threshold, device="meta")
    layer.weight = bnb.nn.Int8Params(weight.detach().clone(), requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
    layer = layer.to(weight.device)
    layer.eval()
    return layer


_PROBED: dict[tuple[str, str], str | None] = {}


def probe(mode: str, device: str = "cpu") -> str | None:
    """None when the installed bitsandbytes runs ``mode`` on ``device``, else why not (tried on a tiny matrix)."""
    key = (mode, device)
    if key not in _PROBED:
        import torch

        _import_bnb()
        w = torch.linspace(-1, 1, 64 * 64, device=device).reshape(64, 64)
        try:
            if mode == "int8":
                int8_dequantized(w)
                with torch.no_grad():
                    int8_linear(w, threshold=DEFAULT_THRESHOLD)(torch.ones(2, 64, device=device))
            else:
                four_bit_dequantized(w, mode, True, 64)
            _PROBED[key] = None
        except Exception as exc:  # no kernel for this device in this bitsandbytes build
            _PROBED[key] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return _PROBED[key]


def check_mode(mode: str) -> str | None:
    """Validator of ``mode``: the installed bitsandbytes must run it on CPU, or a CUDA GPU must be there."""
    if mode not in MODES:
        return None  # the choices check reports it
    why = probe(mode, "cpu")
    if why is None:
        return None
    import torch

    if torch.cuda.is_available():
        return None  # checked again on the model's device when compressing
    import bitsandbytes

    return (f"bitsandbytes {bitsandbytes.__version__} cannot run mode {mode} on the CPU ({why}); "
            f"mode {mode} needs a CUDA GPU with this bitsandbytes, or bitsandbytes>=0.50 for its CPU backend")


# --------------------------------------------------------------------------- the compressor
class BitsAndBytes(Compressor):
    name = "bnb"
    description = ("bitsandbytes LLM.int8 (int8 weights and activations, fp16 outliers) and NF4/FP4 (blockwise 4-bit, "
                   "optional double quantization); audits bitsandbytes' own dequantized weights")
    params = (
        Param("mode", str, "nf4", "int8 (LLM.int8), nf4 or fp4", choices=MODES, check=check_mode),
        Param("threshold", float, DEFAULT_THRESHOLD, "int8: input columns with |x| above this stay in float16 "
              "(LLM.int8's outliers; 0: none)", minimum=0.0),
        Param("double_quant", bool, False, "nf4/fp4: quantize the block absmax values too (QLoRA's double "
              "quantization, compress_statistics)"),
        Param("blocksize", int, 64, "nf4/fp4: weights per absmax block", minimum=32, maximum=4096,
              check=lambda b: None if b in BLOCKSIZES else f"blocksize must be one of {BLOCKSIZES}"),
    )
    compare_default = {"mode": "nf4"}

    def label(self, params: dict[str, Any]) -> str:
        p = {**{q.name: q.default for q in self.params}, **params}
        if p["mode"] == "int8":
            return "bnb int8" + (f" threshold={p['threshold']:g}" if p["threshold"] != DEFAULT_THRESHOLD else "")
        extra = [" dq"] if p["double_quant"] else []
        extra += [f" blocksize={p['blocksize']}"] if p["blocksize"] != 64 else []
        return f"bnb {p['mode']}" + "".join(extra)

    def _params(self, params: dict[str, Any], device: str) -> dict[str, Any]:
        p = {**{q.name: q.default for q in self.params}, **params}
        for q in self.params:
            q.parse(p[q.name], self.name)  # defaults too: the mode must run here
        why = probe(p["mode"], device)
        if why is not None:
            raise FeatsurvError(f"bitsandbytes cannot run mode {p['mode']} on device {device!r} ({why})",
                                hint=f"Run with --device cuda on a CUDA GPU, or install '{BNB_REQUIREMENT}'")
        return p

    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        if not targets:
            return
        p = self._params(params, str(targets[0].weight.device))
        for t in targets:
            if t.weight.ndim != 2:
                raise FeatsurvError(f"The bnb compressor quantizes 2-D weight matrices; {t.name} has shape "
                                    f"{tuple(t.weight.shape)}", hint="Leave this module out of --scope")
        with torch.no_grad():
            for t in targets:
                w = t.weight
                if p["mode"] == "int8":
                    w.copy_(int8_dequantized(w))
                else:
                    w.copy_(four_bit_dequantized(w, p["mode"], p["double_quant"], p["blocksize"]))

    def transform(self, model: Any, targets: list[WeightTarget], params: dict[str, Any]) -> Any:
        """int8: run every target ``torch.nn.Linear`` through bitsandbytes' ``Linear8bitLt`` (int8 activations
        with fp16 outlier columns, int8 weights from the already compressed weight); None for nf4/fp4."""
        p = {**{q.name: q.default for q in self.params}, **params}
        if p["mode"] != "int8":
            return None
        return _int8_layers(targets, p["threshold"])


@contextlib.contextmanager
def _int8_layers(targets: list[WeightTarget], threshold: float) -> Iterator[None]:
    """Route each target Linear's forward through a ``Linear8bitLt`` built from its current weight."""
    import torch

    swapped = []
    try:
        for t in targets:
            module = t.module
            if type(module) is not torch.nn.Linear or t.tensor is not None:
                continue  # embeddings, fused views: weight-only
            layer = int8_linear(module.weight, module.bias, threshold)

            def forward(x, _layer=layer, _dtype=module.weight.dtype):
                return _layer(x).to(_dtype)

            module.forward = forward  # an instance attribute shadows Linear.forward
            swapped.append(module)
        yield
    finally:
        for module in swapped:
            del module.forward
