"""Plan files (TOML) and audits of a restricted or planned scope.

A plan gives each group of weight matrices its own compressor parameters::

    featsurv_plan = 1
    compressor = "rtn"
    by = "layer,type"
    [params]                  # shared by every group
    symmetric = true
    [groups]
    "L0.attn" = { bits = 6 }  # this group's own parameters (a bare value sets the plan's knob)
    "L3.mlp" = { bits = 3 }

`featsurv audit COMPRESSOR --plan plan.toml` applies it: ``compress`` is called once per group
with that group's parameters; matrices in no group stay full precision. ``--groups A,B`` (with
``--by``) instead compresses only the named groups with the ``-p`` parameters.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .audit import AuditOptions, AuditSession
from .configuration import Group
from .errors import FeatsurvError
from .results import RunResult, check_out_dir

PLAN_VERSION = 1


@dataclass
class Plan:
    """A per-group setting of one compressor."""

    compressor: str
    by: str
    params: dict[str, Any]
    groups: dict[str, dict[str, Any]]
    knob: str | None = None
    average: float | None = None
    source: str | None = None
    notes: list[str] = field(default_factory=list)

    def label(self) -> str:
        avg = f" avg {self.knob}={self.average:.2f}" if self.knob and self.average is not None else ""
        return f"{self.compressor} plan{avg}"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and math.isfinite(v):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    raise FeatsurvError(f"Cannot write {v!r} into a plan file", allowed="strings, numbers, true/false")


def plan_toml(plan: Plan) -> str:
    """The plan as TOML text (notes become comments)."""
    lines = [f"# {n}" for n in plan.notes]
    lines += [f"featsurv_plan = {PLAN_VERSION}", f"compressor = {json.dumps(plan.compressor)}",
              f"by = {json.dumps(plan.by)}"]
    if plan.knob:
        lines.append(f"knob = {json.dumps(plan.knob)}")
    if plan.average is not None:
        lines.append(f"average = {_toml_value(round(plan.average, 6))}")
    lines += ["", "[params]"] + [f"{k} = {_toml_value(v)}" for k, v in plan.params.items()]
    lines += ["", "[groups]"]
    for name, params in plan.groups.items():
        inline = ", ".join(f"{k} = {_toml_value(v)}" for k, v in params.items())
        lines.append(f"{json.dumps(name)} = {{ {inline} }}")
    return "\n".join(lines) + "\n"


def _load_toml(path: str | Path) -> dict[str, Any]:
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise FeatsurvError(f"Plan file {str(path)!r} does not exist",
                            hint="Pass the plan.toml written by `featsurv plan` (in its result folder)")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeatsurvError(f"Plan file {str(path)!r} is not valid TOML: {exc}",
                            hint="Fix the file, or write a new one with `featsurv plan`") from None


def _parse_params(comp: Any, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FeatsurvError(f"{where} must be a table of parameters, not {raw!r}", hint="Write e.g. { bits = 4 }")
    declared = {p.name: p for p in comp.params}
    for key in raw:
        if key not in declared:
            raise FeatsurvError(f"Unknown parameter {key!r} in {where}", allowed=list(declared),
                                hint=f"Run `featsurv plugins` to see the parameters of {comp.name!r}")
    return {k: declared[k].parse(v, comp.name) for k, v in raw.items()}


def read_plan(path: str | Path, registry: Any, compressor: str) -> Plan:
    """Read and validate a plan file for ``compressor`` (checked before any work)."""
    from .attribution import parse_by

    data = _load_toml(path)
    if data.get("featsurv_plan") != PLAN_VERSION:
        raise FeatsurvError(f"Plan file {str(path)!r} has featsurv_plan = {data.get('featsurv_plan')!r}",
                            allowed=str(PLAN_VERSION), hint="Write the plan with this version of `featsurv plan`")
    comp = registry.get("compressors", compressor)
    named = registry.get("compressors", str(data.get("compressor")))
    if named.name != comp.name:
        raise FeatsurvError(f"Plan file {str(path)!r} is a plan for {named.name!r}, not {comp.name!r}",
                            hint=f"Run `featsurv audit {named.name} --plan {path}`")
    knob = data.get("knob") or comp.knob
    raw_groups = data.get("groups")
    if not isinstance(raw_groups, dict) or not raw_groups:
        raise FeatsurvError(f"Plan file {str(path)!r} has no [groups] table",
                            hint='Give each group its parameters, e.g. "L0.attn" = { bits = 6 }')
    groups = {}
    for name, raw in raw_groups.items():
        raw = raw if isinstance(raw, dict) else {knob: raw}
        groups[str(name)] = _parse_params(comp, raw, f"group {name!r} of {str(path)!r}")
    base = {p.name: p.default for p in comp.params}
    if all(knob in g for g in groups.values()):
        base.pop(knob, None)  # every group sets it: no shared default to report
    base.update(_parse_params(comp, data.get("params") or {}, f"[params] of {str(path)!r}"))
    return Plan(comp.name, parse_by(str(data.get("by", "layer,type"))), base, groups, knob,
                data.get("average"), str(path))


@dataclass
class Scope:
    """How an audit's configurations are split into groups: ``names`` only (with the
    configuration's parameters), or a ``plan`` (each group its own parameters)."""

    by: str
    names: list[str] | None = None
    plan: Plan | None = None

    def apply(self, groups: Sequence[Any], comp: Any, params: dict[str, Any]) -> tuple[list[Group], str]:
        from .attribution import select

        if self.plan is None:
            return select(groups, self.names or []), f"{comp.label(params)} [{','.join(self.names or [])}]"
        return [g for name, p in self.plan.groups.items() for g in select(groups, [name], p, name)], self.plan.label()

    def record(self) -> dict[str, Any]:
        if self.plan is None:
            return {"by": self.by, "groups": list(self.names or [])}
        return {"by": self.by, "plan": self.plan.source, "params": self.plan.params, "groups": self.plan.groups}


def scope_notes(scope: Scope, groups: Sequence[Any], session: AuditSession) -> None:
    """Say which weight matrices the scope leaves at full precision."""
    chosen = set(scope.plan.groups) if scope.plan else set(scope.names or [])
    left = [g.name for g in groups if g.name not in chosen]
    if left:
        session.progress(f"full precision (in no group of the {'plan' if scope.plan else '--groups'}): "
                         + ", ".join(left))


def grouped_audit(options: AuditOptions, configurations: Sequence[tuple[str, dict[str, Any]]], scope: Scope, *,
                  out_dir: str | Path | None = None, session: AuditSession | None = None,
                  command: str = "audit") -> RunResult:
    """`featsurv audit` with ``--groups`` or ``--plan``: each configuration compressed group by group."""
    from .assembly import assemble
    from .attribution import session_groups
    from .runs import finish, needs_calibration

    session = session or AuditSession(options)
    if out_dir not in (None, False):
        check_out_dir(out_dir)
    session.progress.plan(len(configurations))
    session.prepare(needs_calibration(session, configurations))
    groups = session_groups(session, scope.by)
    scope_notes(scope, groups, session)
    outcomes = []
    for name, params in configurations:
        gs, label = scope.apply(groups, session.compressor(name), params)
        outcomes.append(session.run(name, params, groups=gs, label=label))
    result = assemble(session, outcomes, command, extra_run={"groups": scope.record()})
    return finish(session, result, out_dir, "audit")
