"""Declared compressor parameters: parsing `-p KEY=VALUE[,VALUE...]` and validating values."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import FeatsurvError


@dataclass(frozen=True)
class Param:
    """One parameter a compressor accepts.

    ``type`` is ``int``, ``float``, ``bool`` or ``str``. ``minimum``/``maximum`` bound numbers
    (``exclusive_maximum`` makes the upper bound open); ``choices`` lists allowed strings;
    ``check`` is an optional extra validator returning an error text or None.
    """

    name: str
    type: type = float
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: bool = False
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)
    #: A CLI flag of audit/compare for this option (metric options only), e.g. ``bootstrap``.
    flag: str | None = None

    def allowed(self) -> str:
        """Human description of the allowed values."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is bool:
            return "true or false"
        if self.minimum is not None or self.maximum is not None:
            lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
            hi = "inf" if self.maximum is None else f"{self.maximum:g}"
            close = ")" if self.exclusive_maximum else "]"
            return f"{self.type.__name__} in [{lo}, {hi}{close}"
        return f"a {self.type.__name__}"

    def parse(self, raw: Any, owner: str = "") -> Any:
        """Convert and validate one value; raise FeatsurvError naming the bad value."""
        where = f" of {owner}" if owner else ""
        try:
            if self.type is bool and isinstance(raw, str):
                low = raw.strip().lower()
                if low not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError
                value: Any = low in {"true", "1", "yes"}
            elif self.type is int and isinstance(raw, str):
                value = int(raw.strip())
            elif self.type is int and isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError
                value = int(raw)
            else:
                value = self.type(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise FeatsurvError(
                f"Bad value {raw!r} for parameter {self.name!r}{where}",
                allowed=self.allowed(),
                hint=f"Run `featsurv plugins` to see each compressor's parameters",
            ) from None
        bad = isinstance(value, float) and not math.isfinite(value)
        if self.choices and value not in self.choices:
            bad = True
        if self.minimum is not None and value < self.minimum:
            bad = True
        if self.maximum is not None and (value >= self.maximum if self.exclusive_maximum else value > self.maximum):
            bad = True
        extra = self.check(value) if (self.check and not bad) else None
        if bad or extra:
            raise FeatsurvError(
                f"Bad value {raw!r} for parameter {self.name!r}{where}" + (f": {extra}" if extra else ""),
                allowed=self.allowed(),
                hint=("Fix the metric option (--metric-option or its flag) and run the command again"
                      if owner.startswith("metric") else "Fix the -p option and run the command again"),
            )
        return value


def parse_assignments(items: Sequence[str]) -> dict[str, list[str]]:
    """Parse ``["b=8,7", "granularity=channel"]`` into ``{"b": ["8", "7"], ...}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or value.strip() == "":
            raise FeatsurvError(
                f"Bad parameter {item!r}: expected KEY=VALUE",
                hint="Write e.g. `-p bits=8` or `-p bits=8,6,4` to sweep",
            )
        if key in out:
            raise FeatsurvError(f"Parameter {key!r} given twice", hint="Give each -p key once; sweep with commas: -p bits=8,6")
        out[key] = [v for v in (s.strip() for s in value.split(",")) if v != ""]
    return out


def expand_grid(
    params: Sequence[Param], raw: dict[str, list[str]], owner: str
) -> list[dict[str, Any]]:
    """Validate raw values against the declared params and expand sweeps into configurations."""
    known = {p.name: p for p in params}
    for key in raw:
        if key not in known:
            raise FeatsurvError(
                f"Unknown parameter {key!r} for compressor {owner!r}",
                allowed=list(known),
                hint=f"Run `featsurv plugins` to see the parameters of {owner!r}",
            )
    axes: list[list[tuple[str, Any]]] = []
    for p in params:
        values = raw.get(p.name)
        if values is None:
            axes.append([(p.name, p.default)])
        else:
            axes.append([(p.name, p.parse(v, owner)) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)]


def describe(params: Sequence[Param]) -> list[dict[str, Any]]:
    """JSON-friendly description of declared params (for `featsurv plugins --json`)."""
    return [
        {"name": p.name, "type": p.type.__name__, "default": p.default, "allowed": p.allowed(), "help": p.help}
        for p in params
    ]
