"""Does each SAE fit the model at its hook point? Explained variance there and at its neighbours.

A mis-paired SAE often still explains much of the variance (an SAE of layer 1 explains 0.79 at
layer 2 of the embedded model), so a threshold alone misses it. The check also encodes the
same kind of hook point one layer before and after with the same SAE, on the first
``NEIGHBOUR_TOKENS`` audit tokens of the FP pass (the SAE's own hook point on the same tokens):
when a neighbour fits better, the SAE was most likely trained there, and the audit stops; when
one fits within ``fit_margin`` of it, a warning says the pairing is ambiguous (an SAE that
reconstructs every layer near perfectly cannot tell its layer apart).
"""
from __future__ import annotations

import re
from typing import Any

from .errors import FeatsurvError
from .firing_profile import check_profile
from .stats import ExplainedVariance
from .workbench import Workbench

NEIGHBOUR_TOKENS = 4096
TIE = 1e-4  # explained variances this close are equal (float round-off)
_LAYERED = re.compile(r"^blocks\.(\d+)\.(.+)$")


def neighbours(bench: Workbench, hook: str) -> list[str]:
    """The same kind of hook point one layer before and after (those the model has)."""
    m = _LAYERED.match(hook)
    if not m:
        return []
    layer, rest = int(m.group(1)), m.group(2)
    n_layers = len(bench.loaded.adapter.layers(bench.loaded.model))
    out = []
    for other in (layer - 1, layer + 1):
        if 0 <= other < n_layers:
            name = f"blocks.{other}.{rest}"
            try:
                bench.loaded.adapter.hook_point(bench.loaded.model, name)
            except (FeatsurvError, AttributeError, IndexError, KeyError):
                continue
            out.append(name)
    return out


class NeighbourFit:
    """Streams explained variance of every audited SAE at its neighbouring hook points."""

    def __init__(self, bench: Workbench):
        self.bench = bench
        self.enabled = bench.options.min_explained_variance > 0
        # each SAE at its own hook point too, on the same tokens as at its neighbours
        self.pairs = {(hook, nb): ExplainedVariance(state.sae.d_in)
                      for hook, state in bench.hooks.items() if self.enabled
                      for nb in ([hook, *neighbours(bench, hook)] if neighbours(bench, hook) else [])}
        self.n_seen = 0

    @property
    def extra_hooks(self) -> list[str]:
        return sorted({nb for _, nb in self.pairs} - set(self.bench.hooks))

    def on_acts(self, acts: dict[str, Any], keep: Any, batch: Any) -> None:
        from .passes import encode

        if not self.pairs or self.n_seen >= NEIGHBOUR_TOKENS:
            return
        self.n_seen += sum(batch.context_sizes)
        for (hook, nb), ev in self.pairs.items():
            state = self.bench.hooks[hook]
            x, f = encode(self.bench, state, acts[nb], keep)
            ev.update(x, state.sae.decode(f))

    def results(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (hook, nb), ev in self.pairs.items():
            out.setdefault(hook, {})[nb] = ev.result()
        return out


def check_fit(bench: Workbench, neighbour_ev: dict[str, dict[str, float]]) -> None:
    """Record each SAE's fit evidence; stop when one does not fit its hook point."""
    o = bench.options
    for hook, state in bench.hooks.items():
        ev = state.explained_variance
        others = dict(neighbour_ev.get(hook, {}))
        own = others.pop(hook, ev)  # on the same tokens as the neighbours
        state.fit = {"explained_variance": ev, "threshold": o.min_explained_variance,
                     "explained_variance_subset": own, "neighbours": others, "margin": o.fit_margin,
                     "neighbour_tokens": NEIGHBOUR_TOKENS}
        shown = ", ".join(f"{nb} {v:.3f}" for nb, v in others.items())
        bench.progress(f"fit check {hook}: explained variance {ev:.3f} (threshold {o.min_explained_variance})"
                       + (f"; at neighbours {shown}" if shown else ""))
        state.fit["firing_profile"] = check_profile(bench, hook, state)
        if not ev >= o.min_explained_variance:
            raise FeatsurvError(
                f"SAE {state.sae.spec!r} explains only {ev:.3f} of the variance of FP activations at "
                f"{hook} (threshold {o.min_explained_variance}): it does not fit this model and these tokens. "
                "Likely causes: the wrong layer or hook point; a missing or extra BOS token (--bos/--no-bos); "
                "an activation centring convention the SAE expects (SAEs trained through TransformerLens on "
                "LayerNorm models often need --center-activations); an SAE trained on another model",
                hint="Fix the pairing, or pass --min-explained-variance 0 to audit anyway")
        close = {nb: v for nb, v in others.items() if v == v and own - o.fit_margin <= v <= own + TIE}
        if close:
            bench.progress(f"warning: SAE {state.sae.spec} fits {', '.join(close)} within {o.fit_margin} of {hook}: "
                           "the fit check cannot tell these hook points apart")
        better = {nb: v for nb, v in others.items() if v == v and v > own + TIE}
        if better:
            nb, v = max(better.items(), key=lambda kv: kv[1])
            raise FeatsurvError(
                f"SAE {state.sae.spec!r} explains {own:.3f} of the variance at {hook}, but {v:.3f} at {nb} "
                f"(first {NEIGHBOUR_TOKENS} audit tokens): "
                "it fits a neighbouring hook point better, so it was most likely trained there, not at the "
                "hook point audited",
                hint=f"Pass --hook {nb} (or the SAE's real hook point), or --min-explained-variance 0 to audit anyway")
