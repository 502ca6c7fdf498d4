"""The options of an audit: what defines it (recorded in run.json), each validated by its own rule.

Errors name the option by its field name; the CLI maps that to its flag (``n_tokens`` ->
``--tokens``) through :class:`OptionError`. Metric options live with the metrics
(``Metric.options``) and arrive here as ``metric_options`` ({metric: {option: value}}).
Derived settings (the resolved device...) are returned by :meth:`AuditOptions.derived`, never
written back into the options.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from .errors import FeatsurvError

SCOPES = ("attn", "mlp", "embed", "lm_head")
JOINS = ("eos", "text")
DTYPES = ("float32", "bfloat16", "float16")
MAX_SEED = 2**32 - 1


class OptionError(FeatsurvError):
    """A bad option value; ``option`` is the field name, shown as the CLI flag by the CLI."""

    def __init__(self, option: str, value: Any, allowed: str, hint: str | None = None, shown: str | None = None):
        self.option, self.value, self.allowed, self.hint = option, value, allowed, hint
        super().__init__(f"Bad {shown or option} {value!r}", allowed=allowed,
                         hint=hint or "Fix the option and run the command again")

    def shown_as(self, flag: str) -> "OptionError":
        return OptionError(self.option, self.value, self.allowed, self.hint, shown=flag)


def _int_range(lo: int, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
        return None if ok else (f"a whole number from {lo} to {hi}" if hi is not None else f"a whole number of {lo} or more")
    return check


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda v: None if v is None else check(v)


def _choice(values: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in values else "one of " + ", ".join(values)


def _scope(v: Any) -> str | None:
    ok = isinstance(v, (tuple, list)) and len(v) > 0 and set(v) <= set(SCOPES)
    return None if ok else "a comma list of " + ", ".join(SCOPES)


def _finite(lo: float = -math.inf, hi: float = math.inf) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        return None if ok else f"a finite number in [{lo:g}, {hi:g}]"
    return check


def _l0_ratio(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v == 0 or v >= 1)
    return None if ok else "0 (no check) or a finite number of 1 or more"


def _device(v: Any) -> str | None:
    import re

    ok = isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None
    return None if ok else "auto, cpu, cuda, cuda:N or mps"


def _names(v: Any) -> str | None:
    ok = isinstance(v, list) and all(isinstance(s, str) and s for s in v)
    return None if ok else "a list of non-empty names"


def rule(check: Callable[[Any], str | None], default: Any = None, factory: Any = None) -> Any:
    meta = {"check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class AuditOptions:
    """Everything that defines an audit besides its configurations."""

    model: str
    saes: list[str] = rule(_names, factory=list)
    hooks: list[str] | None = rule(_optional(_names))
    adapter: str | None = None
    adapter_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "featsurv:heldout"
    n_tokens: int = rule(_int_range(1), 32768)
    context: int | None = rule(_optional(_int_range(2)))
    prepend_bos: bool | None = None
    exclude_special: bool = True
    join: str = rule(_choice(JOINS), "eos")
    batch_size: int = rule(_int_range(1), 8)
    dtype: str = rule(_choice(DTYPES), "float32")
    device: str = rule(_device, "cpu")
    seed: int = rule(_int_range(0, MAX_SEED), 0)
    scope: tuple[str, ...] = rule(_scope, ("attn", "mlp"))
    min_explained_variance: float = rule(_finite(-math.inf, 1.0), 0.5)
    fit_margin: float = rule(_finite(0.0, 1.0), 0.01)
    max_l0_ratio: float = rule(_l0_ratio, 3.0)
    calibration_tokens: int = rule(_int_range(0), 0)
    trust_remote_code: bool = False
    center_activations: bool = False
    require_safetensors: bool = False
    preset: str | None = None
    metrics: list[str] = field(default_factory=list)
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> "AuditOptions":
        """Check every option by its rule; raise OptionError naming the first bad one."""
        for f in fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is not None:
                why = check(value)
                if why is not None:
                    raise OptionError(f.name, value if not isinstance(value, tuple) else ",".join(value), why)
        if self.hooks and len(self.hooks) != len(self.saes):
            raise FeatsurvError(f"Got {len(self.hooks)} hook points for {len(self.saes)} SAEs",
                                hint="Give one --hook per --sae, in the same order, or none to use the SAEs' metadata")
        if not self.saes:
            raise FeatsurvError("No SAE given", hint="Pass --sae DIR_OR_RELEASE:ID (repeat for several hook points)")
        return self

    def derived(self) -> dict[str, Any]:
        """Settings that follow from the options and the machine (recorded, never written back)."""
        return {"device": resolve_device(self.device)}

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["scope"] = list(self.scope)
        return out


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, then mps, then cpu; an unavailable device is an OptionError."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError("device", device, "cpu, or auto (this torch has no CUDA device)",
                              hint="Pass --device cpu, or install a CUDA build of torch")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise OptionError("device", device, f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if device == "mps" and not has_mps:
        raise OptionError("device", device, "cpu, or auto (MPS is not available on this machine)",
                          hint="Pass --device cpu")
    return device


HOST_FIELDS = frozenset(f.name for f in fields(AuditOptions))


def make_options(registry: Any = None, **values: Any) -> AuditOptions:
    """AuditOptions from flat values: host fields as they are; any other key is a metric option
    flag (``bootstrap``, ``ppl_window``...) declared by a metric's ``Param(flag=...)``."""
    from .plugins import get_registry

    registry = registry or get_registry()
    host = {k: v for k, v in values.items() if k in HOST_FIELDS}
    rest = {k: v for k, v in values.items() if k not in HOST_FIELDS}
    metric_options = {m: dict(o) for m, o in host.pop("metric_options", {}).items()}
    flags = metric_flags(registry)
    for key, value in rest.items():
        if key not in flags:
            raise FeatsurvError(f"Unknown option {key!r}", allowed=sorted(HOST_FIELDS | set(flags)))
        metric, option = flags[key]
        metric_options.setdefault(metric, {})[option] = value
    if "scope" in host and isinstance(host["scope"], str):
        host["scope"] = tuple(s.strip() for s in host["scope"].split(",") if s.strip())
    return AuditOptions(**host, metric_options=metric_options)


def metric_flags(registry: Any) -> dict[str, tuple[str, str]]:
    """flag (as a Python name) -> (metric, option), for every metric option that declares a flag."""
    out: dict[str, tuple[str, str]] = {}
    for metric in registry.all("metrics"):
        for p in metric.options:
            if p.flag:
                out[p.flag.replace("-", "_")] = (metric.name, p.name)
    return out
