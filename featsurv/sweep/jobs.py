"""Jobs of a sweep: one per model (its SAE set, the token set), measuring every configuration.

A job keeps the invariant of one FP pass per (model, SAE set, token set): it loads the model
once, runs the FP pass once, then each configuration. A piece is one (job, configuration); its
folder name is derived from its content, so a changed entry never reuses an old piece.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from .spec import SweepSpec, canonical


@dataclass
class Piece:
    """One (job, configuration): a run folder under pieces/JOB/KEY."""

    key: str
    compressor: str
    params: dict[str, Any]
    label: str


@dataclass
class Job:
    """One model's FP pass and its configurations (sent to a worker as a plain dict)."""

    id: str
    model: str
    options: dict[str, Any]
    pieces: list[Piece]
    threads: int = 1
    split: bool = False  # split = "configurations": FP state saved once, one task per configuration

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Job":
        return cls(d["id"], d["model"], d["options"], [Piece(**p) for p in d["pieces"]], d.get("threads", 1),
                   bool(d.get("split", False)))


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-.")[:limit] or "x"


def short_hash(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()[:10]


def plan_jobs(spec: SweepSpec) -> list[Job]:
    """The jobs of a validated sweep, in file order."""
    jobs = []
    for model in spec.models:
        pieces = [Piece(f"{slug(c.label)}-{short_hash([c.compressor, c.params])}", c.compressor, c.params, c.label)
                  for c in spec.configurations]
        # the id leaves ``split`` out: split and unsplit give the same pieces, so they are shared
        job_id = f"{slug(model.name)}-{short_hash([model.options, spec.threads])}"
        jobs.append(Job(job_id, model.name, model.options, pieces, spec.threads, model.split == "configurations"))
    return jobs


def forward_passes(job: Job) -> dict[str, int]:
    """Estimate: full passes over the audit tokens (FP + one per configuration) and batched forwards."""
    context = job.options.get("context") or 128
    contexts = max(1, job.options["n_tokens"] // context)
    batches = math.ceil(contexts / job.options["batch_size"])
    passes = 1 + len(job.pieces)
    return {"passes": passes, "forwards": passes * batches, "contexts": contexts}


def plan_text(spec: SweepSpec, jobs: list[Job]) -> str:
    """What `featsurv sweep --plan` prints."""
    lines, total_p, total_f = [], 0, 0
    for job in jobs:
        est = forward_passes(job)
        total_p, total_f = total_p + est["passes"], total_f + est["forwards"]
        saes = len(job.options["saes"])
        lines.append(f"job {job.id}: model {job.model}, {saes} SAE(s), {len(job.pieces)} configuration(s), "
                     f"{est['passes']} passes over {job.options['n_tokens']} tokens (~{est['forwards']} forward calls)"
                     + (f"; split: FP state saved once, {len(job.pieces)} piece task(s) each loading the model"
                        if job.split else ""))
        lines.extend(f"  - {p.label}" for p in job.pieces)
    pieces = sum(len(j.pieces) for j in jobs)
    lines.append(f"{len(jobs)} job(s), {pieces} piece(s) (job x configuration); estimate: {total_p} passes over "
                 f"the token sets, ~{total_f} forward calls (context length defaults to 128 when the SAE sets none)")
    return "\n".join(lines)
