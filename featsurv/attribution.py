"""Per-group attribution: which groups of weight matrices cause the feature damage.

The compressible weights are split into groups (``by``: ``layer``, ``type`` (attn / mlp),
``matrix`` or ``layer,type``, from each WeightTarget's ``layer`` and ``role``). After one FP pass,
each group is compressed alone (everything else full precision), then, with ``complements``,
everything but the group, and everything: one pass each. The summary records which
configuration is which (``summary["attribution"]``); the numbers per group and hook point, the
heatmap and the per-feature attribution come from the metrics' ``analyze`` on the finished run.
See docs/attribution.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .audit import AuditOptions, AuditSession
from .configuration import Group
from .errors import FeatsurvError
from .results import RunResult, check_out_dir

BY_CHOICES = ("layer", "type", "matrix", "layer,type")
ATTN_ROLES = ("q", "k", "v", "qkv", "o")


@dataclass
class WeightGroup:
    """One group of weight matrices: its name, the matrices' names, their parameter count."""

    name: str
    targets: list[str]
    n_params: int


def parse_by(by: str) -> str:
    """Normalise ``--by`` (``type,layer`` is ``layer,type``); a bad value is a FeatsurvError."""
    parts = {p.strip() for p in str(by).split(",") if p.strip()}
    order = ("layer", "type", "matrix")
    norm = ",".join(p for p in order if p in parts) if parts <= set(order) else str(by)
    if norm not in BY_CHOICES:
        raise FeatsurvError(f"Bad --by {by!r}", allowed=", ".join(BY_CHOICES),
                            hint="Group weight matrices by layer, by type (attn, mlp), by matrix, or by layer,type")
    return norm


def role_type(role: str) -> str:
    """attn for q, k, v, qkv, o; mlp for mlp_*; the role itself otherwise (embed, lm_head)."""
    if role in ATTN_ROLES:
        return "attn"
    return "mlp" if role.startswith("mlp") else role


def group_key(target: Any, by: str) -> str:
    """The group a weight matrix belongs to, e.g. ``L1.attn`` (``layer,type``), ``L1``, ``mlp``, ``L1.qkv``."""
    kind = role_type(target.role)
    if target.layer is None:  # embeddings, LM head: a group of their own
        return target.role
    where = f"L{target.layer}"
    return {"layer": where, "type": kind, "layer,type": f"{where}.{kind}", "matrix": f"{where}.{target.role}"}[by]


def weight_groups(targets: Sequence[Any], by: str) -> list[WeightGroup]:
    """The groups of ``targets`` in model order (``matrix``: a matrix whose key repeats keeps its own name)."""
    by = parse_by(by)
    keys = [group_key(t, by) for t in targets]
    if by == "matrix":
        keys = [k if keys.count(k) == 1 else t.name for k, t in zip(keys, targets)]
    groups: dict[str, WeightGroup] = {}
    for key, t in zip(keys, targets):
        g = groups.setdefault(key, WeightGroup(key, [], 0))
        g.targets.append(t.name)
        g.n_params += int(t.weight.numel())
    return list(groups.values())


def session_groups(session: AuditSession, by: str) -> list[WeightGroup]:
    """The groups of the loaded model's compressible weights in the audit's scope."""
    loaded = session.loaded
    return weight_groups(loaded.adapter.compressible_weights(loaded.model, session.options.scope), by)


def select(groups: Sequence[WeightGroup], names: Sequence[str], params: dict[str, Any] | None = None,
           name: str | None = None) -> list[Group]:
    """One :class:`Group` of the matrices of the named groups (an unknown name is a FeatsurvError)."""
    known = {g.name: g for g in groups}
    bad = [n for n in names if n not in known]
    if bad:
        raise FeatsurvError(f"Unknown weight group {bad[0]!r}", allowed=list(known),
                            hint="Run `featsurv attribute` to see the groups, or pick another --by")
    targets = frozenset(t for n in names for t in known[n].targets)
    return [Group(name or ",".join(names), targets, dict(params or {}))]


@dataclass
class Pass:
    """One configuration pass of an attribution: its kind (group, complement, all) and groups."""

    kind: str
    group: str | None
    groups: list[Group] | None
    label: str


def attribution_passes(groups: Sequence[WeightGroup], base_label: str, complements: bool) -> list[Pass]:
    """Each group alone; with ``complements`` (and more than one group) each complement and everything."""
    names = [g.name for g in groups]
    out = [Pass("group", n, select(groups, [n]), f"{base_label} [{n}]") for n in names]
    if complements and len(names) > 1:
        out += [Pass("complement", n, select(groups, [m for m in names if m != n], name=f"all but {n}"),
                     f"{base_label} [all but {n}]") for n in names]
        out.append(Pass("all", None, None, base_label))
    return out


def pass_counts(passes: Sequence[Pass], session: AuditSession) -> dict[str, int]:
    """Forward passes over the audit tokens: the FP pass and one per configuration, by kind."""
    counts = {"fp": 1, "group": 0, "complement": 0, "all": 0}
    for p in passes:
        counts[p.kind] += 1
    counts["total"] = sum(counts.values())
    counts["calibration"] = len(session.calibrated)
    return counts


def run_attribution(options: AuditOptions, compressor: str, params: dict[str, Any], *, by: str = "layer,type",
                    complements: bool = True, out_dir: str | Path | None = None,
                    session: AuditSession | None = None) -> RunResult:
    """Attribute a configuration's damage to groups of weight matrices; write and return the run."""
    from .assembly import assemble
    from .runs import finish, needs_calibration

    by = parse_by(by)
    session = session or AuditSession(options)
    comp = session.compressor(compressor)
    if out_dir not in (None, False):
        check_out_dir(out_dir)
    session.prepare(needs_calibration(session, [(comp.name, params)]))
    groups = session_groups(session, by)
    passes = attribution_passes(groups, comp.label(params), complements)
    session.progress(f"attribution: {len(groups)} groups by {by}, {len(passes)} configuration passes")
    session.progress.plan(len(passes))  # "configuration i of n" with an ETA
    outcomes = [session.run(comp.name, params, groups=p.groups, label=p.label) for p in passes]
    counts = pass_counts(passes, session)
    record = {"compressor": comp.name, "params": params, "by": by, "complements": complements,
              "groups": [asdict(g) for g in groups],
              "configurations": [{"label": p.label, "kind": p.kind, "group": p.group} for p in passes],
              "passes": counts}
    result = assemble(session, outcomes, f"attribute {comp.name}", extra_run={"attribution": record, "passes": counts})
    result.summary["attribution"] = record
    return finish(session, result, out_dir, "attribute")
