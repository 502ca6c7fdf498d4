"""Compressor ``act``: activation and KV-cache quantization (simulated), composable with weight quantization.

For one configuration the compressor (1) optionally quantizes the target weights in place
(``weight_bits``: INT through the ``rtn`` compressor's own code, or FP8), and (2) returns from
``transform`` a context manager that installs forward hooks for the configuration's passes:

- a forward *pre*-hook on each target linear layer that fake-quantizes its input (quantize,
  dequantize) per token (dynamic), per tensor or per input channel (static scales calibrated on
  a calibration token set disjoint from the audit tokens); a fused QKV shares one input, so it
  is quantized once;
- a forward hook on the K and V projections (or the K and V parts of a fused QKV output, found
  through ``head_layout``) that fake-quantizes each token's key and value vectors per head, as a
  quantized KV cache stores them.

Every hook is removed when the context exits, whatever happened inside. ``docs/activation-quantization.md``
describes the options, the named recipes (``w8a8``, ``w4a8``, ``fp8``) and their sources.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from featsurv import Compressor, FeatsurvError, Param, WeightTarget, hookimpl

FORMATS = ("int", "e4m3", "e5m2")
FP8_DTYPES = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}
ACT_GRANULARITIES = ("token", "tensor", "channel")
STATIC = ("tensor", "channel")
INT_RANGES = ("restricted", "full")
SCOPES = ("attn+mlp", "attn", "mlp")
RECIPES = ("none", "w8a8", "w4a8", "fp8")
ATTN_ROLES = ("q", "k", "v", "qkv", "o")
MLP_ROLES = ("mlp_in", "mlp_gate", "mlp_out")
KV_ROLES = ("k", "v", "qkv")

#: What each named recipe fixes (sources in docs/activation-quantization.md).
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {
    # compressed-tensors preset W8A8 (INT8_W8A8), torchao Int8DynamicActivationInt8WeightConfig,
    # SmoothQuant / vLLM int8 w8a8: per-channel symmetric INT8 weights, per-token dynamic symmetric INT8 inputs
    "w8a8": dict(weight_bits=8, weight_format="int", weight_symmetric=True, weight_granularity="channel",
                 bits=8, format="int", symmetric=True, granularity="token"),
    # compressed-tensors preset W4A8 (INT8_W4A8): symmetric INT4 weights in groups of 128, per-token
    # dynamic symmetric INT8 inputs
    "w4a8": dict(weight_bits=4, weight_format="int", weight_symmetric=True, weight_granularity="group:128",
                 bits=8, format="int", symmetric=True, granularity="token"),
    # compressed-tensors / llm-compressor FP8_DYNAMIC (vLLM fp8): per-channel e4m3 weights, per-token
    # dynamic e4m3 inputs
    "fp8": dict(weight_bits=8, weight_format="e4m3", weight_symmetric=True, weight_granularity="channel",
                bits=8, format="e4m3", symmetric=True, granularity="token"),
}


def _bits_check(low: int, high: int, off: str) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        if value == 0 or low <= value <= high:
            return None
        return f"use 0 ({off}) or {low} to {high}"
    return check


def _weight_granularity_check(value: str) -> str | None:
    """The rtn compressor's own validation of its ``granularity`` parameter."""
    from featsurv.plugins import get_registry

    rtn = get_registry().get("compressors", "rtn")
    spec = {p.name: p for p in rtn.params}["granularity"]
    return spec.check(value) if spec.check else None


# --------------------------------------------------------------------------- fake quantization
@dataclass(frozen=True)
class QuantSpec:
    """One number format: ``int`` with ``bits`` (symmetric or not) or an FP8 format."""

    format: str = "int"
    bits: int = 8
    symmetric: bool = True
    int_range: str = "restricted"

    def describe(self) -> str:
        return f"{self.bits}" if self.format == "int" else f"fp8-{self.format}"


def fake_quant(x: Any, spec: QuantSpec, dims: tuple[int, ...] | None = None,
               lo: Any = None, hi: Any = None) -> Any:
    """``x`` quantized and dequantized, same shape and dtype.

    Scales are shared over ``dims`` (reduced with keepdim: dynamic scales), or come from given
    ``lo``/``hi`` (static ranges that broadcast against ``x``; values outside are clamped).

    - INT symmetric, ``restricted``: levels -(2^(b-1)-1)..2^(b-1)-1, ``scale = absmax / (2^(b-1)-1)``,
      ``q = round(x / scale)`` (rtn, SmoothQuant, vLLM's dynamic int8 kernel).
    - INT symmetric, ``full``: levels -2^(b-1)..2^(b-1)-1, ``scale = absmax / ((2^b-1)/2)``,
      ``q = round(x * (1/scale))`` (torchao's and compressed-tensors' choose_qparams).
    - INT asymmetric: ``scale = (hi - lo) / (2^b - 1)`` over a range widened to include 0, integer
      zero point ``round(-lo / scale)``.
    - FP8: ``scale = absmax / finfo.max``; ``x / scale`` is clamped to the format's range and cast
      to torch's float8 dtype and back, as FP8 serving kernels do.

    With gradients on (``x.requires_grad``), the result passes them straight through to ``x``.
    """
    import torch

    out = _fake_quant(x.detach(), spec, dims, lo, hi)
    if x.requires_grad and torch.is_grad_enabled():
        return x + (out - x).detach()  # straight-through estimator
    return out


def _fake_quant(x: Any, spec: QuantSpec, dims: tuple[int, ...] | None, lo: Any, hi: Any) -> Any:
    import torch

    xf = x.to(torch.float32)
    if lo is None:
        dims = tuple(range(xf.ndim)) if dims is None else dims
        lo = xf.amin(dim=dims, keepdim=True)
        hi = xf.amax(dim=dims, keepdim=True)
    lo, hi = lo.to(xf.device, torch.float32), hi.to(xf.device, torch.float32)
    if spec.format != "int":
        dtype = getattr(torch, FP8_DTYPES[spec.format])
        fmax = torch.finfo(dtype).max
        scale = torch.maximum(-lo, hi).clamp(min=0) / fmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        out = (xf / scale).clamp(-fmax, fmax).to(dtype).to(torch.float32) * scale
        return out.to(x.dtype)
    full = spec.int_range == "full"
    if spec.symmetric:
        amax = torch.maximum(-lo, hi).clamp(min=0)
        qmax = 2 ** (spec.bits - 1) - 1
        qmin = -qmax - 1 if full else -qmax
        scale = amax / ((2 ** spec.bits - 1) / 2 if full else qmax)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round(xf * (1.0 / scale) if full else xf / scale).clamp(qmin, qmax)
        out = q * scale
    else:
        levels = 2 ** spec.bits - 1
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / levels
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.round(-lo / scale)
        q = (torch.round(xf * (1.0 / scale) if full else xf / scale) + zero).clamp(0, levels)
        out = (q - zero) * scale
    return out.to(x.dtype)


def quantize_weight(w: Any, spec: QuantSpec, granularity: str) -> Any:
    """A 2-D ``[out, in]`` weight fake-quantized per output channel, per tensor or per group of G inputs."""
    if granularity == "channel":
        return fake_quant(w, spec, (1,))
    if granularity == "tensor":
        return fake_quant(w, spec, (0, 1))
    group = int(granularity.split(":", 1)[1])
    if w.shape[1] % group:
        raise FeatsurvError(
            f"weight_granularity {granularity!r} does not divide the input size {w.shape[1]} of a weight matrix",
            hint="Pick a group size that divides every matrix's input dimension (e.g. 32, 64, 128)")
    return fake_quant(w.reshape(w.shape[0], -1, group), spec, (2,)).reshape(w.shape)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """What one configuration does, resolved from its parameters (recipe applied, checked)."""

    act: QuantSpec | None
    granularity: str
    scope: tuple[str, ...]
    weights: QuantSpec | None
    weight_granularity: str
    kv: QuantSpec | None


def resolve(params: dict[str, Any], defaults: dict[str, Any]) -> Settings:
    """Apply the recipe and check the combination; a FeatsurvError names the clash."""
    p = {**defaults, **params}
    recipe = p["recipe"]
    if recipe != "none":
        fixed = RECIPE_SETTINGS[recipe]
        clash = [k for k in fixed if p[k] != defaults[k] and p[k] != fixed[k]]
        if clash:
            raise FeatsurvError(
                f"recipe={recipe} fixes {', '.join(clash)}, but "
                + ", ".join(f"{k}={p[k]}" for k in clash) + " was given too",
                hint=f"Drop {', '.join(clash)} to use the recipe, or spell the configuration out without recipe=")
        p.update(fixed)
    int_range = p["int_range"]

    def spec(kind: str, fmt: str, bits: int, symmetric: bool) -> QuantSpec | None:
        if fmt != "int" and bits != 8:
            off = " (0 turns them off; set it to 8)" if bits == 0 else ""
            raise FeatsurvError(f"{kind} format {fmt} is an 8-bit format, but {kind} bits are {bits}{off}",
                                hint=f"Pass the {kind} bits as 8 with an FP8 format")
        if fmt != "int" and not symmetric:
            raise FeatsurvError(f"{kind} format {fmt} is symmetric (a scale, no zero point); symmetric=false "
                                "applies to int formats only", hint="Drop the symmetric=false setting or use format int")
        if bits == 0:
            return None
        return QuantSpec(fmt, bits, symmetric, int_range)

    act = spec("activation", p["format"], p["bits"], p["symmetric"])
    weights = spec("weight", p["weight_format"], p["weight_bits"], p["weight_symmetric"])
    kv = spec("kv", p["kv_format"], p["kv"], p["kv_symmetric"])
    wgran = p["weight_granularity"]
    if weights is not None and wgran == "tl" and (weights.format != "int" or int_range == "full"):
        raise FeatsurvError("weight_granularity=tl is rtn's TransformerLens layout, available for int weights "
                            "with int_range=restricted only", allowed="channel, tensor, group:G")
    if act is None and weights is None and kv is None:
        raise FeatsurvError("This act configuration quantizes nothing (bits=0, weight_bits=0, kv=0)",
                            hint="Set bits (activations), weight_bits (weights) or kv (KV cache) above 0")
    return Settings(act, p["granularity"], tuple(p["scope"].split("+")), weights, wgran, kv)


# --------------------------------------------------------------------------- hooks
class Installed:
    """A context manager that installs hooks on enter and removes every one on exit."""

    def __init__(self, installers: list[Callable[[], Any]]):
        self._installers = installers
        self._handles: list[Any] = []

    def __enter__(self) -> "Installed":
        try:
            for install in self._installers:
                self._handles.append(install())
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.remove()
        return False

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@dataclass(frozen=True)
class Site:
    """Where one linear layer's input can be read and replaced during a forward pass.

    ``kind``: ``input`` (forward pre-hook, the first argument), ``argument`` (forward pre-hook, the
    keyword argument ``argument``) or ``output`` (forward hook on a module whose output is that
    input, e.g. a TransformerLens ``HookPoint``). ``channel_dims`` trailing dimensions form the
    input's channel axis (2 for TransformerLens's ``z`` ``[batch, pos, head, d_head]``).
    """

    key: str
    module: Any
    kind: str = "input"
    argument: str = ""
    channel_dims: int = 1


TL_QKV_ARGUMENTS = {"q": "query_input", "k": "key_input", "v": "value_input"}


def _is_tl_attention(module: Any) -> bool:
    return all(hasattr(module, a) for a in ("hook_z", "hook_k", "hook_v", "W_O"))


def _is_tl_mlp(module: Any) -> bool:
    return hasattr(module, "hook_post") and hasattr(module, "W_out")


def input_sites(targets: list[WeightTarget], roles: tuple[str, ...]) -> list[Site]:
    """One site per distinct input: a fused matrix (or one split into several targets) reads one input once.

    Hugging Face layers are hooked on the linear module itself. TransformerLens components hold
    several weights: ``W_Q/W_K/W_V`` read the attention's ``query_input/key_input/value_input``,
    ``W_O`` reads ``hook_z``, ``W_in/W_gate`` the MLP's input and ``W_out`` its ``hook_post``.
    """
    sites: dict[tuple[int, str, str], Site] = {}
    for t in targets:
        if t.role not in roles:
            continue
        m = t.module
        if _is_tl_attention(m):
            site = (Site(t.name, m.hook_z, "output", channel_dims=2) if t.role == "o"
                    else Site(t.name, m, "argument", TL_QKV_ARGUMENTS[t.role]))
        elif _is_tl_mlp(m) and t.role == "mlp_out":
            site = Site(t.name, m.hook_post, "output")
        else:
            site = Site(t.name, m)
        sites.setdefault((id(site.module), site.kind, site.argument), site)
    return list(sites.values())


def _channels_last(quantize: Callable[[Any], Any], channel_dims: int) -> Callable[[Any], Any]:
    if channel_dims == 1:
        return quantize
    return lambda x: quantize(x.reshape(*x.shape[:-channel_dims], -1)).reshape(x.shape)


def install_at(site: Site, quantize: Callable[[Any], Any]) -> Callable[[], Any]:
    """An installer (for ``Installed``) of a hook that passes the site's input through ``quantize``."""
    f = _channels_last(quantize, site.channel_dims)
    if site.kind == "output":
        return lambda: site.module.register_forward_hook(lambda _m, _a, out: f(out))

    def pre(_module: Any, args: tuple, kwargs: dict) -> Any:
        if site.kind == "argument":
            if site.argument in kwargs:
                return args, {**kwargs, site.argument: f(kwargs[site.argument])}
            index = tuple(TL_QKV_ARGUMENTS.values()).index(site.argument)
            return (*args[:index], f(args[index]), *args[index + 1:]), kwargs
        if args:
            return (f(args[0]), *args[1:]), kwargs
        key = next(k for k, v in kwargs.items() if hasattr(v, "dtype"))
        return args, {**kwargs, key: f(kwargs[key])}
    return lambda: site.module.register_forward_pre_hook(pre, with_kwargs=True)


def _kv_parts(targets: list[WeightTarget]) -> list[tuple[Any, str, int, list[tuple[int, int, str, Any]]]]:
    """Per attention module holding K or V: ``(module, name, n_out, [(start, stop, role, head_layout)])``.

    A module handed out as one target (``k_proj``, a fused ``qkv``) covers all its outputs; a fused
    module split into several targets (GPT-2's ``c_attn`` as q, k, v) has its output columns in the
    order of its targets, each as wide as its weight's rows.
    """
    groups: dict[int, tuple[Any, list[WeightTarget]]] = {}
    for t in targets:
        if t.role in ATTN_ROLES and not _is_tl_attention(t.module):
            groups.setdefault(id(t.module), (t.module, []))[1].append(t)
    plans = []
    for module, ts in groups.values():
        if not any(t.role in KV_ROLES for t in ts):
            continue
        parts, start = [], 0
        for t in ts:
            rows = int(t.weight.shape[0])
            if t.role in KV_ROLES:
                if t.head_layout is None:
                    raise FeatsurvError(f"kv quantization needs the head layout of {t.name!r}, which its adapter "
                                        "does not give", hint="Set head_layout on the adapter's k/v/qkv targets")
                parts.append((start, start + rows, t.role, t.head_layout))
            start += rows
        plans.append((module, ts[0].name, start, parts))
    return plans


def _kv_hook(spec: QuantSpec, name: str, n_out: int, parts: list[tuple[int, int, str, Any]]) -> Callable[..., Any]:
    """Fake-quantize K and V per (token, head) in a projection's output; Q columns stay as they are."""

    def hook(_module: Any, _args: Any, out: Any) -> Any:
        import torch

        if out.shape[-1] != n_out:
            raise FeatsurvError(f"The output of {name!r} has {out.shape[-1]} columns, but its weight targets "
                                f"cover {n_out}", hint="kv= needs an adapter whose targets tile the projection")
        y = out.clone()
        for start, stop, role, (n_heads, n_parts, d_head) in parts:
            piece = out[..., start:stop].reshape(*out.shape[:-1], n_heads, n_parts, d_head)
            if role == "qkv":  # rows laid out as (head, part q/k/v, d_head): keep Q, quantize K and V
                piece = torch.cat([piece[..., :1, :], fake_quant(piece[..., 1:, :], spec, (-1,))], dim=-2)
            else:
                piece = fake_quant(piece, spec, (-1,))
            y[..., start:stop] = piece.reshape(*out.shape[:-1], stop - start)
        return y
    return hook


# --------------------------------------------------------------------------- the compressor
class ActQuant(Compressor):
    name = "act"
    description = ("Activation (and KV-cache) quantization of the linear layers' inputs, INT4-8 or FP8, "
                   "composable with weight quantization (W8A8, W4A8, FP8 recipes)")
    params = (
        Param("recipe", str, "none", "named serving recipe: w8a8, w4a8 or fp8 (none: set the options)",
              choices=RECIPES),
        Param("bits", int, 8, "activation bits (0: activations stay FP)", minimum=0, maximum=8,
              check=_bits_check(4, 8, "activations stay FP")),
        Param("format", str, "int", "activation format: int, or FP8 e4m3 / e5m2 (with bits=8)", choices=FORMATS),
        Param("symmetric", bool, True, "activation scale without zero point (false: min/max with zero point)"),
        Param("granularity", str, "token", "activation scales: token (dynamic, per token), tensor or channel "
              "(static, calibrated on the calibration tokens)", choices=ACT_GRANULARITIES),
        Param("scope", str, "attn+mlp", "whose inputs are quantized: attn+mlp, attn or mlp (within --scope)",
              choices=SCOPES),
        Param("int_range", str, "restricted", "INT grid: restricted (+-(2^(b-1)-1), as rtn and vLLM) or full "
              "(-2^(b-1)..2^(b-1)-1, scale absmax/((2^b-1)/2), as torchao and compressed-tensors)",
              choices=INT_RANGES),
        Param("weight_bits", int, 0, "weight bits (0: weights untouched; int weights use rtn's quantizer)",
              minimum=0, maximum=16, check=_bits_check(2, 16, "weights untouched")),
        Param("weight_format", str, "int", "weight format: int, or FP8 e4m3 / e5m2 (with weight_bits=8)",
              choices=FORMATS),
        Param("weight_symmetric", bool, True, "weight scale without zero point"),
        Param("weight_granularity", str, "channel", "weight scales: channel, tensor, group:G (or rtn's tl)",
              check=_weight_granularity_check),
        Param("kv", int, 0, "KV-cache bits: K and V fake-quantized per token and head (0: FP)", minimum=0,
              maximum=8, check=_bits_check(2, 8, "KV cache stays FP")),
        Param("kv_format", str, "int", "KV-cache format: int, or FP8 e4m3 / e5m2 (with kv=8)", choices=FORMATS),
        Param("kv_symmetric", bool, True, "KV scale without zero point"),
    )
    knob = "bits"
    knob_range = (4, 8)
    knob_increases_compression = False
    compare_default = {"recipe": "w8a8"}

    def __init__(self) -> None:
        #: static input ranges from ``calibrate``: target name -> (per-channel min, per-channel max)
        self.static: dict[str, tuple[Any, Any]] = {}

    # ------------------------------------------------------------------ parameters
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def settings(self, params: dict[str, Any]) -> Settings:
        return resolve(params, self.defaults())

    def needs_calibration_for(self, params: dict[str, Any]) -> bool:
        s = self.settings(params)
        return s.act is not None and s.granularity in STATIC

    def search_knob(self, params: dict[str, Any]) -> str | None:
        s = self.settings(params)
        if params.get("recipe", "none") != "none":
            return None
        if s.act is not None and s.act.format == "int":
            return "bits"
        if s.weights is not None and s.weights.format == "int":
            return "weight_bits"
        if s.kv is not None and s.kv.format == "int":
            return "kv"
        return None

    def label(self, params: dict[str, Any]) -> str:
        s = self.settings(params)
        d = self.defaults()
        recipe = params.get("recipe", "none")
        if recipe != "none":
            head = [recipe]
            shown = [k for k in ("int_range", "scope", "kv", "kv_format", "kv_symmetric")
                     if k in params and params[k] != d[k]]
        else:
            wa = (f"W{s.weights.describe()}" if s.weights else "") + (f"A{s.act.describe()}" if s.act else "")
            head = [wa] if wa else []
            shown = [k for k in ("symmetric", "granularity", "scope", "int_range", "weight_symmetric",
                                 "weight_granularity", "kv_symmetric") if k in params and params[k] != d[k]]
        if s.kv is not None:
            head.append(f"KV{s.kv.describe()}")
        return " ".join(["act", *head, *(f"{k}={params[k]}" for k in shown if k not in ("kv", "kv_format"))])

    # ------------------------------------------------------------------ weights
    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        s = self.settings(params)
        if s.weights is None:
            return
        spec = s.weights
        if spec.format == "int" and spec.int_range == "restricted":
            from featsurv.plugins import get_registry

            rtn = get_registry().get("compressors", "rtn")
            rtn.compress(targets, {**{q.name: q.default for q in rtn.params}, "bits": spec.bits,
                                   "symmetric": spec.symmetric, "granularity": s.weight_granularity})
            return
        with torch.no_grad():
            for t in targets:
                w = t.weight
                w.copy_(quantize_weight(w, spec, s.weight_granularity).to(w.dtype))

    # ------------------------------------------------------------------ calibration
    def calibrate(self, model: Any, targets: list[WeightTarget], calibration: Any) -> None:
        """Record each target input's per-channel min and max over every position of the calibration tokens."""
        import torch

        self.static = {}

        def observer(key: str) -> Callable[[Any], Any]:
            def observe(x: Any) -> Any:
                flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
                lo, hi = flat.amin(0), flat.amax(0)
                if key in self.static:
                    lo = torch.minimum(lo, self.static[key][0])
                    hi = torch.maximum(hi, self.static[key][1])
                self.static[key] = (lo, hi)
                return x
            return observe

        installers = [install_at(site, observer(site.key)) for site in input_sites(targets, ATTN_ROLES + MLP_ROLES)]
        device = getattr(model, "device", "cpu")
        with torch.no_grad(), Installed(installers):
            for ids, _keep in calibration.batches(8):
                model.adapter.forward(model.model, ids.to(device))

    def _static_range(self, site: Site, granularity: str) -> tuple[Any, Any]:
        if site.key not in self.static:
            raise FeatsurvError(
                f"act granularity={granularity} needs static input ranges, but {site.key!r} was not "
                "calibrated", hint="Static scales come from the calibration tokens (the host calls calibrate "
                "first); use granularity=token for dynamic per-token scales")
        lo, hi = self.static[site.key]
        if granularity == "tensor":
            return lo.min(), hi.max()
        return lo, hi

    # ------------------------------------------------------------------ activations and KV cache
    def transform(self, model: Any, targets: list[WeightTarget], params: dict[str, Any]) -> Installed | None:
        s = self.settings(params)
        installers: list[Callable[[], Any]] = []
        if s.act is not None:
            roles = tuple(r for g in s.scope for r in (ATTN_ROLES if g == "attn" else MLP_ROLES))
            sites = input_sites(targets, roles)
            if not sites:
                raise FeatsurvError(f"act scope={'+'.join(s.scope)} selects no linear layer within the weight "
                                    "--scope of this run", hint="Include attn or mlp in --scope, or change scope=")
            for site in sites:
                if s.granularity == "token":
                    quantize = (lambda x, spec=s.act: fake_quant(x, spec, (-1,)))
                else:
                    lo, hi = self._static_range(site, s.granularity)
                    quantize = (lambda x, spec=s.act, lo=lo, hi=hi: fake_quant(x, spec, lo=lo, hi=hi))
                installers.append(install_at(site, quantize))
        if s.kv is not None:
            per_head = (lambda x, spec=s.kv: fake_quant(x, spec, (-1,)))
            # TransformerLens: hook_k / hook_v hold [batch, pos, head, d_head]
            tl = {(id(t.module), t.role): t.module for t in targets
                  if t.role in ("k", "v") and _is_tl_attention(t.module)}
            for (_, role), attn in tl.items():
                point = getattr(attn, f"hook_{role}")
                installers.append(lambda p=point: p.register_forward_hook(lambda _m, _a, out: per_head(out)))
            plans = _kv_parts(targets)
            if not plans and not tl:
                raise FeatsurvError("kv quantization needs the K and V projections, but the weight --scope of "
                                    "this run holds none", hint="Include attn in --scope")
            for module, name, n_out, parts in plans:
                installers.append(lambda m=module, f=_kv_hook(s.kv, name, n_out, parts): m.register_forward_hook(f))
        return Installed(installers) if installers else None


@hookimpl
def register_compressors(register):
    register(ActQuant())
