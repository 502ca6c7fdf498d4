"""`featsurv plan`: a per-group setting of one knob (e.g. bits per layer and type) that meets a
survival target at the lowest parameter-weighted average, or keeps most features within a budget.

Every number reported comes from a real audit pass; the search only chooses which pass to run
next. Order of work (one FP pass first):

1. the uniform setting at every value of ``--values`` (one pass each);
2. attribution at the first value below the starting point: each group alone (one pass each),
   which orders the groups by how much damage they cause per parameter;
3. ``--min-survival``: from the most compressed uniform value that meets the target, lower one
   group one step at a time (least damaging per parameter first), keeping a step only when its
   measured survival still meets the target. ``--budget``: from the least compressed uniform
   value within the budget, first lower groups whose lowering costs no survival, then raise the
   most damaging groups while the average stays within the budget, keeping a step only when the
   measured survival improves (at the same survived fraction: when the mean r does).
The plan is the last kept step; it is compared with the uniform value nearest its average.
See docs/attribution.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .audit import AuditOptions, AuditSession
from .configuration import Group, Outcome
from .errors import FeatsurvError

SURVIVED = "survived"  # the summary fields the targets are read from (as `featsurv gate` does)
MEAN_R = "mean_r"  # breaks ties between settings with the same survived fraction (budget search)
PPL_CHANGE = "perplexity_change"
WATCHED_N, WATCHED_SURVIVED_N = "watched_n", "watched_survived_n"  # per entry, from a watch list (--watch)


@dataclass
class Goal:
    """What the plan must achieve (one of ``min_survival``, ``budget``), optional perplexity bound."""

    min_survival: float | None = None
    budget: float | None = None
    max_ppl_change: float | None = None
    max_steps: int = 32
    min_watched_survival: float | None = None


@dataclass
class Step:
    """One measured pass of the search."""

    kind: str  # uniform, attribution, trial
    action: str
    levels: dict[str, Any]  # group -> knob value (attribution: the one group compressed)
    average: float | None
    survived: dict[str, float | None]
    perplexity_change: float | None
    mean_r: dict[str, float | None] = field(default_factory=dict)
    feasible: bool | None = None
    accepted: bool | None = None
    label: str = ""
    watched: float | None = None  # survived fraction of the watch list's features (all hook points)
    outcome: Outcome | None = field(default=None, repr=False)

    def worst(self) -> float:
        vals = list(self.survived.values())
        return -math.inf if not vals or any(v is None for v in vals) else min(vals)

    def score(self) -> tuple[float, float]:
        """(worst survived fraction, mean r averaged over hook points): larger is better."""
        r = list(self.mean_r.values())
        return self.worst(), (-math.inf if not r or any(v is None for v in r) else sum(r) / len(r))

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "action": self.action, "label": self.label, "levels": self.levels,
                "average": self.average, SURVIVED: self.survived, MEAN_R: self.mean_r, PPL_CHANGE: self.perplexity_change,
                "watched_survived": self.watched, "feasible": self.feasible, "accepted": self.accepted}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def watched_fraction(entries: Sequence[dict[str, Any]]) -> float | None:
    """Survived fraction of the watched features over every hook point (None: no watch list)."""
    n = sum(int(e.get(WATCHED_N) or 0) for e in entries)
    return sum(int(e.get(WATCHED_SURVIVED_N) or 0) for e in entries) / n if n else None


class Planner:
    """The search state: the session, the knob's values (least compression first), the groups, the path."""

    def __init__(self, session: AuditSession, compressor: Any, base: dict[str, Any], knob: str,
                 values: Sequence[Any], groups: Sequence[Any], goal: Goal):
        self.session, self.comp, self.base, self.knob = session, compressor, base, knob
        self.values, self.groups, self.goal = list(values), list(groups), goal
        self.total = sum(g.n_params for g in groups)
        self.path: list[Step] = []
        self.cache: dict[tuple[Any, ...], Step] = {}
        self.trials = 0

    def cost(self, value: float) -> float:
        """Larger is more expensive (more bits, less sparsity)."""
        return -value if self.comp.knob_increases_compression else value

    def average(self, levels: dict[str, int]) -> float:
        return sum(g.n_params * self.values[levels[g.name]] for g in self.groups) / self.total

    def setting(self, levels: dict[str, int]) -> dict[str, Any]:
        return {g.name: self.values[levels[g.name]] for g in self.groups}

    def record(self, kind: str, action: str, outcome: Outcome, levels: dict[str, Any], average: float | None) -> Step:
        from .assembly import summary_entries

        entries = summary_entries(self.session, outcome)
        if not any(SURVIVED in e for e in entries):
            raise FeatsurvError("featsurv plan needs the survived fraction of each configuration, and none of the "
                                "metrics that run reports it", hint="Enable the metric plugin that reports "
                                "'survived' (see `featsurv plugins`)")
        step = Step(kind, action, levels, average, {e["hook"]: _num(e.get(SURVIVED)) for e in entries},
                    _num(entries[0].get(PPL_CHANGE)), {e["hook"]: _num(e.get(MEAN_R)) for e in entries},
                    label=outcome.label, outcome=outcome, watched=watched_fraction(entries))
        if self.goal.min_watched_survival is not None and step.watched is None:
            raise FeatsurvError("--min-watched-survival needs a watch list whose features the run measures",
                                hint="Pass --watch FILE (hook,feature lines) with the audited hook points")
        step.feasible = None if kind == "attribution" else self.feasible(step)  # one group alone: no plan
        self.path.append(step)
        return step

    def feasible(self, step: Step) -> bool:
        g = self.goal
        if g.max_ppl_change is not None and (step.perplexity_change is None or step.perplexity_change > g.max_ppl_change):
            return False
        if g.min_watched_survival is not None and not (step.watched or 0.0) >= g.min_watched_survival:
            return False
        if g.min_survival is not None:
            return step.worst() >= g.min_survival
        return g.budget is None or step.average is None or self.cost(step.average) <= self.cost(g.budget) + 1e-9

    def uniform(self, i: int) -> Step:
        params = {**self.base, self.knob: self.values[i]}
        out = self.session.run(self.comp.name, params)
        return self.record("uniform", f"uniform {self.knob}={self.values[i]}", out,
                           {g.name: self.values[i] for g in self.groups}, float(self.values[i]))

    def alone(self, group: Any, i: int) -> Step:
        """One group compressed at ``values[i]``, everything else full precision."""
        from .attribution import select

        value = self.values[i]
        gs = select(self.groups, [group.name], {self.knob: value}, group.name)
        label = f"{self.comp.label({**self.base, self.knob: value})} [{group.name}]"
        out = self.session.run(self.comp.name, {**self.base, self.knob: value}, groups=gs, label=label)
        return self.record("attribution", f"{group.name} alone at {self.knob}={value}", out, {group.name: value}, None)

    def measure(self, levels: dict[str, int], action: str) -> Step:
        """A per-group setting, measured (a setting measured before is not run again)."""
        key = tuple(levels[g.name] for g in self.groups)
        if key in self.cache:
            return self.cache[key]
        self.trials += 1
        gs = [Group(g.name, frozenset(g.targets), {self.knob: self.values[levels[g.name]]}) for g in self.groups]
        avg = self.average(levels)
        label = f"{self.comp.name} plan avg {self.knob}={avg:.2f}"
        shared = {k: v for k, v in self.base.items() if k != self.knob}  # every group sets the knob
        out = self.session.run(self.comp.name, shared, groups=gs, label=label)
        step = self.record("trial", action, out, self.setting(levels), avg)
        self.cache[key] = step
        return step

    def ordered(self, attribution: dict[str, Step], most_damaging_first: bool) -> list[Any]:
        """Groups by survived fraction lost alone per parameter (ties: larger groups first)."""
        def lost(g: Any) -> float:
            worst = attribution[g.name].worst()
            return (1.0 - worst if math.isfinite(worst) else 1.0) / g.n_params

        key = (lambda g: (-lost(g), -g.n_params)) if most_damaging_first else (lambda g: (lost(g), -g.n_params))
        return sorted(self.groups, key=key)


def improve(planner: Planner, levels: dict[str, int], current: Step, order: Sequence[Any], direction: int,
            accept: Any) -> tuple[dict[str, int], Step]:
    """Move one group one value at a time (``direction`` +1: more compression, -1: less), in ``order``,
    keeping a move when ``accept(step, current)``; a group whose move was refused is not tried again."""
    stuck: set[str] = set()
    moved = True
    while moved:
        moved = False
        for g in order:
            new = levels[g.name] + direction
            if g.name in stuck or not 0 <= new < len(planner.values):
                continue
            trial = {**levels, g.name: new}
            if planner.goal.budget is not None and planner.cost(planner.average(trial)) > planner.cost(planner.goal.budget) + 1e-9:
                stuck.add(g.name)
                continue
            if planner.trials >= planner.goal.max_steps:
                return levels, current
            verb = "lower" if direction > 0 else "raise"
            step = planner.measure(trial, f"{verb} {g.name} {planner.values[levels[g.name]]} -> {planner.values[new]}")
            step.accepted = bool(accept(step, current))
            if step.accepted:
                levels, current, moved = trial, step, True
            else:
                stuck.add(g.name)
    return levels, current


def search_min_survival(planner: Planner, uniform: list[Step]) -> tuple[Step | None, str, dict[str, Step]]:
    """From the most compressed uniform value meeting the target, lower groups while it stays met."""
    ok = [i for i, s in enumerate(uniform) if s.feasible]
    if not ok:
        return None, "unreachable", {}
    start = max(ok)
    if start + 1 >= len(planner.values):
        return uniform[start], "uniform_optimal", {}
    attribution = {g.name: planner.alone(g, start + 1) for g in planner.groups}
    levels = {g.name: start for g in planner.groups}
    _, current = improve(planner, levels, uniform[start], planner.ordered(attribution, False), +1,
                         lambda step, cur: bool(step.feasible))
    return current, "mixed" if current is not uniform[start] else "uniform_optimal", attribution


def search_budget(planner: Planner, uniform: list[Step]) -> tuple[Step | None, str, dict[str, Step]]:
    """From the least compressed uniform value within the budget: lower groups that cost no survived
    fraction, then raise the most damaging groups while the average stays within the budget, keeping a
    raise that improves the survived fraction (or, at the same fraction, the mean r)."""
    fits = [i for i, v in enumerate(planner.values) if planner.cost(v) <= planner.cost(planner.goal.budget) + 1e-9]
    start = min(fits)
    if start == 0 or not uniform[start].feasible:
        return (uniform[start], "uniform_optimal", {}) if uniform[start].feasible else (None, "unreachable", {})
    attribution = {g.name: planner.alone(g, start) for g in planner.groups}
    levels = {g.name: start for g in planner.groups}
    levels, current = improve(planner, levels, uniform[start], planner.ordered(attribution, False), +1,
                              lambda step, cur: bool(step.feasible) and step.worst() >= cur.worst())
    _, current = improve(planner, levels, current, planner.ordered(attribution, True), -1,
                         lambda step, cur: bool(step.feasible) and step.score() > cur.score())
    return current, "mixed" if current is not uniform[start] else "uniform_optimal", attribution


def knob_values(comp: Any, knob: str | None, values: Sequence[str] | None) -> tuple[str, list[Any]]:
    """The knob (default: the compressor's) and its values, least compression first (checked before work)."""
    knob = knob or comp.knob
    specs = {p.name: p for p in comp.params}
    numeric = [n for n, p in specs.items() if p.type in (int, float)]
    if knob not in numeric:
        raise FeatsurvError(f"Unknown or non-numeric knob {knob!r} for compressor {comp.name!r}", allowed=numeric,
                            hint="Pass --knob with a numeric parameter of the compressor")
    spec = specs[knob]
    if not values:
        lo, hi = comp.knob_range or (None, None)
        if spec.type is not int or lo is None or knob != comp.knob:
            raise FeatsurvError(f"No values given for knob {knob!r}", hint="Pass --values, e.g. --values 3,4,6,8")
        values = [str(v) for v in range(int(lo), int(hi) + 1)]
    parsed = sorted({spec.parse(v, comp.name) for v in values}, reverse=not comp.knob_increases_compression)
    if len(parsed) < 2:
        raise FeatsurvError(f"Bad --values {','.join(map(str, values))!r}: a plan needs two values or more",
                            hint="Pass e.g. --values 3,4,6,8")
    return knob, parsed


def check_goal(goal: Goal, planner_cost: Any, values: Sequence[Any], knob: str) -> None:
    """Exactly one target, each value in range (checked before work)."""
    if (goal.min_survival is None) == (goal.budget is None):
        raise FeatsurvError("Give exactly one of --min-survival and --budget",
                            hint="--min-survival 0.9 (lowest average that keeps 90%), or --budget 4.5")
    if goal.min_survival is not None and not 0.0 <= goal.min_survival <= 1.0:
        raise FeatsurvError(f"Bad --min-survival {goal.min_survival}", allowed="a fraction in [0, 1]")
    if goal.budget is not None:
        if not math.isfinite(goal.budget) or all(planner_cost(v) > planner_cost(goal.budget) + 1e-9 for v in values):
            raise FeatsurvError(f"Bad --budget {goal.budget}: no value of {knob} in "
                                f"{', '.join(map(str, values))} fits it", allowed=f"a budget that the most compressed value, {values[-1]}, fits",
                                hint="Raise the budget or pass --values with more compressed values")
    if goal.max_ppl_change is not None and not math.isfinite(goal.max_ppl_change):
        raise FeatsurvError(f"Bad --max-ppl-change {goal.max_ppl_change}", allowed="a finite number (0.05 = +5%)")
    w = goal.min_watched_survival
    if w is not None and not (isinstance(w, (int, float)) and 0.0 <= w <= 1.0):
        raise FeatsurvError(f"Bad --min-watched-survival {w}", allowed="a fraction in [0, 1]",
                            hint="--min-watched-survival 1.0 keeps every watched feature")
    if goal.max_steps < 0:
        raise FeatsurvError(f"Bad --max-steps {goal.max_steps}", allowed="a whole number of 0 or more")


def nearest_uniform(planner: Planner, uniform: list[Step], average: float) -> Step:
    """The uniform setting whose value is nearest ``average`` (a tie: the less compressed one)."""
    return min(uniform, key=lambda s: (abs(float(s.average) - average), -planner.cost(float(s.average))))


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.1%}"


def verdict(planner: Planner, status: str, plan: Step | None, uniform: list[Step]) -> str:
    """One honest sentence on the outcome of the search."""
    g, k = planner.goal, planner.knob
    if plan is None:
        best = max(uniform, key=lambda s: s.worst())
        return (f"No setting reaches the target: even uniform {k}={best.average:g} keeps {_pct(best.worst())} "
                "at its worst hook point (or breaks the perplexity bound); no plan written")
    if g.min_survival is not None:
        start = max(i for i, s in enumerate(uniform) if s.feasible)
        u = uniform[start]
        if status == "uniform_optimal":
            return (f"Uniform {k}={u.average:g} is optimal here: it meets survival >= {_pct(g.min_survival)} "
                    f"({_pct(u.worst())} at the worst hook point) and no group could take a more compressed value "
                    "with the target still met")
        text = (f"The plan meets survival >= {_pct(g.min_survival)} ({_pct(plan.worst())} at the worst hook point) at "
                f"an average {k} of {plan.average:.3f}, against {u.average:g} for the most compressed uniform setting "
                f"that meets it ({_pct(u.worst())})")
        worse = plan.perplexity_change is not None and u.perplexity_change is not None
        if worse and plan.perplexity_change > u.perplexity_change and g.max_ppl_change is None:
            text += (f"; its perplexity change is {plan.perplexity_change:+.2%} against {u.perplexity_change:+.2%} "
                     "(survival at the audited hook points does not bound perplexity, e.g. of layers after the last hook "
                     "point: bound it with --max-ppl-change)")
        return text
    near = nearest_uniform(planner, uniform, plan.average)
    if status == "uniform_optimal":
        return f"Uniform {k}={plan.average:g} fits the budget and nothing better was found"
    return (f"Within an average {k} of {g.budget:g}: the plan (average {plan.average:.3f}) keeps {_pct(plan.worst())} "
            f"at its worst hook point; uniform {k}={near.average:g} keeps {_pct(near.worst())}")


def watched_clause(goal: Goal, plan: Step | None) -> str:
    """The verdict's words on the watch list's target, when there is one."""
    if goal.min_watched_survival is None or plan is None:
        return ""
    return f"; {_pct(plan.watched)} of the watched features survive (target {_pct(goal.min_watched_survival)})"


def plan_summary(planner: Planner, status: str, plan: Step | None, uniform: list[Step],
                 attribution: dict[str, Step], by: str) -> dict[str, Any]:
    """summary.json's ``plan`` section: settings, outcome, final comparison, the whole search path."""
    from dataclasses import asdict

    near = nearest_uniform(planner, uniform, plan.average) if plan is not None else None
    final = None
    if plan is not None:
        final = {name: {"label": s.label, "average": s.average, SURVIVED: s.survived, MEAN_R: s.mean_r,
                        PPL_CHANGE: s.perplexity_change, "watched_survived": s.watched} for name, s in (("plan", plan), ("uniform", near))}
    best = [s for s in uniform if s.feasible and planner.goal.min_survival is not None]
    return {"compressor": planner.comp.name, "params": planner.base, "knob": planner.knob, "values": planner.values,
            "by": by, "goal": asdict(planner.goal), "status": status,
            "message": verdict(planner, status, plan, uniform) + watched_clause(planner.goal, plan),
            "setting": plan.levels if plan is not None else None,
            "average": plan.average if plan is not None else None,
            "uniform_best": best[-1].average if best else None,
            "groups": [{"name": g.name, "n_params": g.n_params} for g in planner.groups],
            "attribution_value": next(iter(next(iter(attribution.values())).levels.values())) if attribution else None,
            "final": final, "path": [s.as_json() for s in planner.path]}


def plan_record(planner: Planner, plan: Step, by: str, message: str) -> Any:
    """The plan file's content for the chosen setting."""
    from .plan_file import Plan

    base = {k: v for k, v in planner.base.items() if k != planner.knob}
    return Plan(planner.comp.name, by, base, {g: {planner.knob: v} for g, v in plan.levels.items()}, planner.knob,
                plan.average, notes=[f"featsurv plan {planner.comp.name}: {message}."])


def attribution_record(planner: Planner, attribution: dict[str, Step], by: str) -> dict[str, Any] | None:
    """summary["attribution"] for the attribution passes (the metrics turn it into a table and heatmap)."""
    if not attribution:
        return None
    from dataclasses import asdict

    value = next(iter(next(iter(attribution.values())).levels.values()))
    return {"compressor": planner.comp.name, "params": {**planner.base, planner.knob: value}, "by": by,
            "complements": False, "groups": [asdict(g) for g in planner.groups],
            "configurations": [{"label": s.label, "kind": "group", "group": g} for g, s in attribution.items()]}


def pass_counts(planner: Planner) -> dict[str, int]:
    counts = {"fp": 1, "uniform": 0, "attribution": 0, "trial": 0}
    for s in planner.path:
        counts[s.kind] += 1
    counts["total"] = sum(counts.values())
    return counts


def run_plan(options: AuditOptions, compressor: str, base: dict[str, Any], goal: Goal, *, knob: str | None = None,
             values: Sequence[str] | None = None, by: str = "layer,type", out_dir: str | Path | None = None,
             session: AuditSession | None = None, plan_out: str | Path | None = None) -> Any:
    """Search a per-group plan, write the run (summary ``plan``, plan.toml) and return it."""
    from .assembly import assemble
    from .attribution import parse_by, session_groups
    from .plan_file import plan_toml
    from .results import check_out_dir
    from .runs import needs_calibration

    by = parse_by(by)
    session = session or AuditSession(options)
    comp = session.compressor(compressor)
    knob, vals = knob_values(comp, knob, values)
    defaults = {p.name: p.default for p in comp.params}
    given, base = dict(base), {**defaults, **base}
    if knob in given and given[knob] != defaults[knob]:
        raise FeatsurvError(f"-p {knob}=... is set by the plan", hint=f"Drop -p {knob}; pass --values instead")
    check_goal(goal, lambda v: -v if comp.knob_increases_compression else v, vals, knob)
    if out_dir not in (None, False):
        check_out_dir(out_dir)
    session.prepare(needs_calibration(session, [(comp.name, {**base, knob: v}) for v in vals]))
    planner = Planner(session, comp, dict(base), knob, vals, session_groups(session, by), goal)
    uniform = [planner.uniform(i) for i in range(len(vals))]
    search = search_min_survival if goal.min_survival is not None else search_budget
    plan, status, attribution = search(planner, uniform)
    section = plan_summary(planner, status, plan, uniform, attribution, by)
    session.progress(section["message"])
    outcomes = [s.outcome for s in uniform] + [s.outcome for s in attribution.values()]
    if plan is not None and plan.kind == "trial":
        outcomes.append(plan.outcome)
    counts = pass_counts(planner)
    result = assemble(session, outcomes, f"plan {comp.name}", extra_run={
        "plan": {k: section[k] for k in ("compressor", "params", "knob", "values", "by", "goal")}, "passes": counts})
    result.summary["plan"] = {**section, "passes": counts}
    record = attribution_record(planner, attribution, by)
    if record is not None:
        result.summary["attribution"] = record
    text = plan_toml(plan_record(planner, plan, by, section["message"])) if plan is not None else None
    return write_plan_run(session, result, text, out_dir, plan_out)


def write_plan_run(session: AuditSession, result: Any, text: str | None, out_dir: str | Path | None,
                   plan_out: str | Path | None) -> Any:
    """The run folder with plan.toml written (and listed in its manifest) with the data; a copy at ``plan_out``."""
    from .results import write_text_atomic
    from .runs import default_out_dir, finish

    if out_dir is not False:
        out_dir = out_dir or default_out_dir("plan")
    written = []
    if text is not None and out_dir is not False:
        result.files["plan.toml"] = text
        written.append(str(Path(out_dir).expanduser().resolve() / "plan.toml"))
    if text is not None and plan_out is not None:
        written.append(str(plan_out))
    result.summary["plan"]["plan_files"] = written
    result = finish(session, result, out_dir, "plan")
    if text is not None and plan_out is not None:
        write_text_atomic(Path(plan_out), text)
    return result
