"""The report's "SAE fit" table: the evidence the fit check stopped on or let pass, per hook point."""
from __future__ import annotations

from typing import Any

from . import html as H


def _neighbours(fit: dict[str, Any]) -> str:
    shown = [f"{nb} {H.num(v)}" for nb, v in (fit.get("neighbours") or {}).items()]
    return "; ".join(shown) or "none checked"


def _profile(prof: dict[str, Any]) -> tuple[str, str, str]:
    l0 = H.num(prof.get("l0"), ".1f")
    want = H.num(prof.get("expected_l0"), ".1f") if prof.get("expected_l0") else "not recorded"
    dead = H.pct(prof.get("dead_fraction"))
    if prof.get("expected_dead_fraction") is not None:
        dead += f" (recorded {H.pct(prof.get('expected_dead_fraction'))})"
    return f"{l0} (recorded {want})", dead, str(prof.get("verdict", ""))


def fit_section(summary: dict[str, Any]) -> str:
    """HTML of the fit evidence in summary.json's baseline (empty when the run has none)."""
    saes = (summary.get("baseline") or {}).get("saes") or {}
    rows = []
    for hook, info in saes.items():
        fit = info.get("fit") or {}
        if not fit:
            continue
        l0, dead, verdict = _profile(fit.get("firing_profile") or {})
        rows.append([hook, info.get("spec", ""), f"{H.num(fit.get('explained_variance'))} "
                     f"(threshold {H.num(fit.get('threshold'), 'g')})", _neighbours(fit), l0, dead, verdict])
    if not rows:
        return ""
    head = ["hook point", "SAE", "explained variance", "at neighbouring hook points", "FP L0", "FP dead features",
            "firing profile"]
    return ("<h2>SAE fit</h2><p>Each SAE's explained variance at its hook point and one layer either side "
            "(a neighbour that fits better stops the audit), and its FP firing against what its metadata "
            "records (Firing profile; an L0 beyond the allowed factor stops the audit).</p>"
            + H.table(head, rows, left=(0, 1, 3, 6)))
