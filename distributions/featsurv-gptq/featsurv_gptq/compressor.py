"""Compressor ``gptq``: GPTQ through gptqmodel's per-layer ``GPTQ``, calibrated on the host's calibration tokens.

``calibrate`` runs the FP model once over the calibration token set (disjoint from the audit
tokens; the host builds it) and keeps each target Linear's inputs at the kept positions. For each
configuration, ``compress`` feeds those inputs to a fresh ``gptqmodel.quantization.gptq.GPTQ`` for
the target (gptqmodel accumulates its own Hessian), runs ``GPTQ.quantize()`` and writes the
quantized-dequantized weight it returns into the target.

Every target is calibrated on the *FP* model's inputs (no layer-by-layer re-propagation through
already-quantized layers, which gptqmodel's whole-model loop does); see docs/plugins/gptq.md.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

from featsurv import Compressor, FeatsurvError, Param, WeightTarget

#: gptqmodel release this plugin is written and tested against (7.7 requires torch>=2.14.1).
GPTQMODEL_REQUIREMENT = "gptqmodel==7.6.0"


def check_group_size(value: int) -> str | None:
    return None if value == 0 or value >= 8 else "group_size must be 0 (one group per row) or 8 or more"


def _import_gptq() -> Any:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # gptqmodel prints a banner on import
            from gptqmodel.quantization.config import QuantizeConfig  # noqa: F401
            from gptqmodel.quantization.gptq import GPTQ as LibGPTQ  # noqa: F401
    except Exception as exc:
        raise FeatsurvError(f"The gptq compressor cannot import gptqmodel: {type(exc).__name__}: {exc}",
                            hint=f"Install '{GPTQMODEL_REQUIREMENT}' (it leaves torch as it is)") from None
    for name in ("gptqmodel", "logbar"):
        logging.getLogger(name).setLevel(logging.ERROR)


def collect_inputs(model: Any, targets: list[WeightTarget], calibration: Any, batch_size: int = 8) -> dict[str, Any]:
    """Each target Linear's inputs ``[tokens, in]`` (float32, CPU) over the calibration set's kept positions."""
    import torch

    rows: dict[str, list[Any]] = {t.name: [] for t in targets}
    current: dict[str, Any] = {}
    handles = []
    for t in targets:
        if not isinstance(t.module, torch.nn.Linear) or t.tensor is not None:
            raise FeatsurvError(f"The gptq compressor quantizes torch.nn.Linear weights; {t.name} is "
                                f"{type(t.module).__name__}", hint="Leave this module out of --scope")

        def hook(module, args, _name=t.name):
            x = args[0]
            rows[_name].append(x[current["keep"].to(x.device)].detach().float().cpu())

        handles.append(t.module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for ids, keep in calibration.batches(batch_size):
                current["keep"] = keep
                model.adapter.forward(model.model, ids.to(next(model.model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(r) for name, r in rows.items() if r}


def gptq_quantize(module: Any, inputs: Any, bits: int = 4, group_size: int = 128, act_order: bool = False,
                  sym: bool = True, damp_percent: float = 0.05) -> tuple[Any, Any, Any, Any]:
    """gptqmodel's GPTQ of ``module``'s current weight on ``inputs``: ``(Q, scale, zero, g_idx)``, Q dequantized.

    ``module`` is left unchanged (gptqmodel works on a clone of the weight).
    """
    _import_gptq()
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ as LibGPTQ

    with contextlib.redirect_stdout(io.StringIO()):
        cfg = QuantizeConfig(bits=bits, group_size=group_size or -1, desc_act=act_order, sym=sym,
                             damp_percent=damp_percent, act_group_aware=False)
        g = LibGPTQ(module, cfg)
        g.quantizer.configure(perchannel=True)  # as gptqmodel's GPTQProcessor does
        g.add_batch(inputs.to(module.weight.device, module.weight.dtype)[None], None)
        q, scale, zero, g_idx, *_ = g.quantize()
    return q, scale, zero, g_idx


class GPTQ(Compressor):
    name = "gptq"
    description = ("GPTQ (gptqmodel's per-layer GPTQ: Hessian-aware rounding on calibration inputs), 2-8 bits, "
                   "groups, act-order; calibrated on tokens disjoint from the audit tokens")
    params = (
        Param("bits", int, 4, "bit-width", minimum=2, maximum=8),
        Param("group_size", int, 128, "input weights per scale (0: one group per row); must divide every "
              "matrix's input size", minimum=0, check=check_group_size),
        Param("act_order", bool, False, "quantize columns in order of decreasing Hessian diagonal (desc_act)"),
        Param("sym", bool, True, "symmetric grid (false: asymmetric with zero points)"),
        Param("damp_percent", float, 0.05, "dampening added to the Hessian diagonal, as a fraction of its mean",
              minimum=0.0, maximum=1.0, exclusive_maximum=True),
    )
    knob = "bits"
    knob_range = (2, 8)
    knob_increases_compression = False
    compare_default = {"bits": 4}
    needs_calibration = True

    def __init__(self) -> None:
        self.inputs: dict[str, Any] = {}

    def label(self, params: dict[str, Any]) -> str:
        defaults = {p.name: p.default for p in self.params}
        extra = [f"{k}={params[k]}" for k in defaults if k != "bits" and k in params and params[k] != defaults[k]]
        return " ".join([f"gptq int{params.get('bits', defaults['bits'])}", *extra])

    def calibrate(self, model: Any, targets: list[WeightTarget], calibration: Any) -> None:
        _import_gptq()  # fail before the calibration pass if gptqmodel cannot load
        self.inputs = collect_inputs(model, targets, calibration)

    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        p = {**{q.name: q.default for q in self.params}, **params}
        for t in targets:  # every target is checked before any is changed
            if t.name not in self.inputs:
                raise FeatsurvError(f"gptq has no calibration inputs for {t.name}: calibrate() did not run",
                                    hint="Run gptq through featsurv audit/compare, which calibrate it first")
            in_features = t.weight.shape[1]
            if p["group_size"] and in_features % p["group_size"]:
                raise FeatsurvError(f"group_size {p['group_size']} does not divide the input size {in_features} "
                                    f"of {t.name}", hint="Pick a group size that divides every input size, or 0")
        with torch.no_grad():
            for t in targets:
                q, *_ = gptq_quantize(t.module, self.inputs[t.name], p["bits"], p["group_size"], p["act_order"],
                                      p["sym"], p["damp_percent"])
                t.weight.copy_(q.to(t.weight.dtype).reshape(t.weight.shape))
