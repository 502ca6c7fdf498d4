"""Compressor ``pruning`` (alias ``magnitude``): magnitude or Wanda scores, unstructured or N:M.

- ``method``: the score whose smallest entries are zeroed: ``magnitude`` (``|W_ij|``) or
  ``wanda`` (``|W_ij| * ||X_j||_2``, Sun et al. 2023, with input-activation norms gathered by
  ``calibrate`` on calibration tokens).
- ``pattern``: ``unstructured`` (``sparsity`` of each comparison group zeroed) or ``N:M`` (in every
  group of M consecutive input weights of a row, the N lowest scores zeroed: 2:4 is what NVIDIA's
  sparse tensor cores run).
- ``scope`` (unstructured): the comparison group: ``row`` (each output row, Wanda's), ``matrix``
  (each weight matrix, torch.nn.utils.prune's and the reference study's), ``global`` (all target
  matrices together); ``auto`` is ``matrix`` for magnitude and ``row`` for Wanda. A fused QKV
  projection counts as three matrices, Q, K and V, as in TransformerLens's layout.
- ``count`` / ``ties`` (unstructured): ``k = round(s*n)`` or ``floor(s*n)`` per group; exactly k
  zeroed, or every weight whose score ties the k-th smallest (the reference study's code).
"""
from __future__ import annotations

import math
from typing import Any

from featsurv import Compressor, FeatsurvError, Param, WeightTarget, hookimpl

PATTERNS = "unstructured, or N:M with 0 < N < M (N of every M consecutive input weights zeroed, e.g. 2:4, 4:8)"
#: Contexts per forward pass while gathering Wanda's activation norms.
CALIBRATION_BATCH = 8


def parse_pattern(value: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``"unstructured"`` -> None. Raises ValueError on anything else."""
    if value == "unstructured":
        return None
    n, sep, m = value.partition(":")
    if not sep or not n.strip().isdigit() or not m.strip().isdigit():
        raise ValueError(value)
    n_, m_ = int(n), int(m)
    if not 0 < n_ < m_:
        raise ValueError(value)
    return n_, m_


def _check_pattern(value: str) -> str | None:
    try:
        parse_pattern(value)
    except ValueError:
        return f"pattern must be {PATTERNS}"
    return None


def pruned_count(sparsity: float, n: int, count: str = "round") -> int:
    """How many of ``n`` scores to prune: ``round(s*n)`` (torch.nn.utils.prune) or ``floor(s*n)``."""
    return math.floor(sparsity * n) if count == "floor" else round(sparsity * n)


def smallest_mask(score: Any, sparsity: float, count: str = "round", ties: str = "keep") -> Any:
    """Boolean mask of the entries to prune in each row of ``score`` (a 1-D score is one group).

    ``ties="keep"``: exactly ``k`` entries per row, the ``k`` smallest (``torch.topk``, as
    torch.nn.utils.prune does). ``ties="prune"``: every entry ``<=`` the k-th smallest value.
    """
    import torch

    rows = score.reshape(1, -1) if score.ndim == 1 else score
    k = pruned_count(sparsity, rows.shape[-1], count)
    mask = torch.zeros_like(rows, dtype=torch.bool)
    if k <= 0:
        return mask.reshape(score.shape)
    if ties == "prune":
        threshold = rows.sort(dim=-1).values[:, k - 1:k]
        mask = rows <= threshold
    elif score.ndim == 1:
        mask.view(-1)[torch.topk(score, k, largest=False).indices] = True
    else:
        mask.scatter_(1, torch.topk(rows, k, dim=1, largest=False).indices, True)
    return mask.reshape(score.shape)


def nm_mask(score: Any, n: int, m: int) -> Any:
    """Mask of the ``n`` lowest scores in every group of ``m`` consecutive entries of a row.

    Ties go to the earlier input index (a stable sort), so the mask is deterministic.
    """
    import torch

    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    idx = torch.argsort(groups, dim=-1, stable=True)[..., :n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(rows, cols)


def _parts(target: WeightTarget, x: Any) -> list[Any]:
    """``x`` (shaped like the target's weight) as views of its matrices: Q, K, V of a fused QKV apart."""
    if target.head_layout is not None and target.head_layout[1] > 1:
        n_heads, parts, d_head = target.head_layout
        view = x.view(n_heads, parts, d_head, x.shape[1])
        return [view[:, p] for p in range(parts)]
    return [x]


class Pruning(Compressor):
    name = "pruning"
    aliases = ("magnitude",)
    description = ("Weight pruning: magnitude or Wanda scores; unstructured (per row, matrix or globally) "
                   "or N:M semi-structured (2:4, 4:8)")
    params = (
        Param("sparsity", float, 0.5, "fraction of weights set to zero (unstructured only)", minimum=0.0,
              maximum=1.0, exclusive_maximum=True),
        Param("method", str, "magnitude", "score: |w| (magnitude) or |w| * ||x||_2 (wanda, needs calibration)",
              choices=("magnitude", "wanda")),
        Param("pattern", str, "unstructured", f"sparsity pattern: {PATTERNS}", check=_check_pattern),
        Param("scope", str, "auto", "unstructured comparison group: row, matrix, global, or auto "
              "(matrix for magnitude, row for wanda)", choices=("auto", "row", "matrix", "global")),
        Param("count", str, "round", "weights pruned per group, unstructured: round(s*n) or floor(s*n)",
              choices=("round", "floor")),
        Param("ties", str, "keep", "unstructured: prune exactly k (keep) or every weight tied at the "
              "threshold too (prune)", choices=("keep", "prune")),
    )
    knob = "sparsity"
    knob_range = (0.0, 0.8)
    compare_default = {"sparsity": 0.2}
    #: Wanda needs input-activation norms; ``needs_calibration_for`` says which parameters do.
    needs_calibration = True

    def __init__(self) -> None:
        self._norms: dict[str, Any] = {}
        self.calibration_tokens = 0

    # ------------------------------------------------------------------ parameters
    def _full(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**{p.name: p.default for p in self.params}, **params}

    def needs_calibration_for(self, params: dict[str, Any]) -> bool:
        """Whether a configuration with these parameters needs ``calibrate`` first (Wanda does)."""
        return self._full(params)["method"] == "wanda"

    def search_knob(self, params: dict[str, Any]) -> str | None:
        """``sparsity`` for unstructured pruning; None for an N:M pattern, which fixes sparsity."""
        return None if parse_pattern(self._full(params)["pattern"]) else "sparsity"

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """The full parameters, or a FeatsurvError when they contradict each other."""
        p = self._full(params)
        if parse_pattern(p["pattern"]) is not None:
            defaults = {q.name: q.default for q in self.params}
            clash = [k for k in ("sparsity", "scope", "count", "ties") if p[k] != defaults[k]]
            if clash:
                raise FeatsurvError(
                    f"Pattern {p['pattern']!r} fixes which weights are pruned, so "
                    f"{', '.join(f'{k}={p[k]}' for k in clash)} does not apply to it",
                    hint=f"Drop {', '.join('-p ' + k for k in clash)} for N:M patterns (sweep them in a "
                         "separate run with pattern=unstructured)")
        return p

    @staticmethod
    def _scope(p: dict[str, Any]) -> str:
        """The comparison group of unstructured pruning (``auto``: matrix for magnitude, row for Wanda)."""
        return p["scope"] if p["scope"] != "auto" else ("row" if p["method"] == "wanda" else "matrix")

    def label(self, params: dict[str, Any]) -> str:
        p = self._full(params)
        parts = ["pruning"]
        parts.append(p["pattern"] if parse_pattern(p["pattern"]) else f"s={p['sparsity']:.4g}")
        if p["method"] != "magnitude":
            parts.append(p["method"])
        if self._scope(p) != self._scope({**p, "scope": "auto"}):
            parts.append(p["scope"])
        parts += [f"{k}={p[k]}" for k in ("count", "ties")
                  if p[k] != {q.name: q.default for q in self.params}[k]]
        return " ".join(parts)

    # ------------------------------------------------------------------ calibration
    def calibrate(self, model: Any, targets: list[WeightTarget], calibration: Any) -> None:
        """Gather ``||X_j||_2`` of each target's input over every position of the calibration contexts.

        A forward pre-hook on each target's module reads its first input (the matrix's input,
        shared by Q, K and V of a fused projection); squares are summed in float64. Each target must
        be its module's ``weight`` or a view of it (a linear layer), else the input is unknown.
        """
        import torch

        sums: dict[str, Any] = {}
        handles = []

        def make_hook(target: WeightTarget) -> Any:
            d_in = int(target.weight.shape[1])

            def hook(module: Any, args: tuple[Any, ...]) -> None:
                x = args[0] if args else None
                if not torch.is_tensor(x) or x.shape[-1] != d_in:
                    got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                    raise FeatsurvError(
                        f"Wanda cannot read the input of weight {target.name!r}: its module's first input is "
                        f"{got}, not [..., {d_in}]",
                        hint="Use -p method=magnitude with this model adapter, or an adapter whose targets' "
                             "modules take the matrix's input first")
                x = x.detach().reshape(-1, d_in).to(torch.float64)
                sq = (x * x).sum(0)
                sums[target.name] = sq if target.name not in sums else sums[target.name] + sq

            return hook

        for t in targets:
            own = getattr(t.module, "weight", None)
            if not torch.is_tensor(own) or own.untyped_storage().data_ptr() != t.weight.untyped_storage().data_ptr():
                raise FeatsurvError(
                    f"Wanda cannot read the input of weight {t.name!r}: it is not the weight of its module "
                    f"({type(t.module).__name__}), so that module's input need not be the matrix's input",
                    hint="Use -p method=magnitude with this model adapter, or an adapter whose targets are "
                         "linear layers' weights (or views of them)")
        for t in targets:
            handles.append(t.module.register_forward_pre_hook(make_hook(t)))
        n = 0
        try:
            with torch.no_grad():
                for ids, keep in calibration.batches(CALIBRATION_BATCH):
                    model.adapter.forward(model.model, ids.to(model.device))
                    n += int(keep.numel())  # every position, kept for statistics or not
        finally:
            for h in handles:
                h.remove()
        missing = [t.name for t in targets if t.name not in sums]
        if missing:
            raise FeatsurvError(f"Wanda calibration saw no input for {', '.join(missing[:3])}",
                                hint="Check that the calibration tokens run through these modules")
        self._norms = {name: s.sqrt().to(torch.float32) for name, s in sums.items()}
        self.calibration_tokens = n

    # ------------------------------------------------------------------ compression
    def _score(self, t: WeightTarget, method: str) -> Any:
        import torch

        w = t.weight.detach()
        if method == "magnitude":
            return w.abs()
        norm = self._norms.get(t.name)
        if norm is None:
            raise FeatsurvError(
                f"Wanda has no activation norms for weight {t.name!r}: calibrate() did not run on this model",
                hint="Run it through `featsurv audit`/`compare`, which calibrate first, or call calibrate()")
        if norm.numel() != w.shape[1]:
            raise FeatsurvError(f"Wanda's activation norms for {t.name!r} have {norm.numel()} entries, "
                                f"the matrix has {w.shape[1]} inputs", hint="Calibrate again on this model")
        return w.abs().to(torch.float32) * norm.to(w.device).reshape(1, -1)

    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        p = self.validate(params)
        nm = parse_pattern(p["pattern"])
        if nm is not None:
            for t in targets:
                if t.weight.shape[1] % nm[1]:
                    raise FeatsurvError(
                        f"Pattern {p['pattern']!r} needs the input size of every matrix to be a multiple of "
                        f"{nm[1]}, but {t.name!r} has {t.weight.shape[1]} inputs",
                        hint="Pick an M that divides every matrix's input dimension (e.g. 2:4, 4:8)")
        scope = self._scope(p)
        s, count, ties = p["sparsity"], p["count"], p["ties"]
        with torch.no_grad():
            if nm is not None or scope != "global":
                for t in targets:
                    score = self._score(t, p["method"])
                    if nm is not None:
                        t.weight.masked_fill_(nm_mask(score, *nm), 0)
                    elif scope == "row":
                        t.weight.masked_fill_(smallest_mask(score, s, count, ties), 0)
                    else:
                        for w, sc in zip(_parts(t, t.weight), _parts(t, score)):
                            w.masked_fill_(smallest_mask(sc.reshape(-1), s, count, ties).reshape(w.shape), 0)
                return
            flat = torch.cat([self._score(t, p["method"]).float().reshape(-1) for t in targets])
            mask = smallest_mask(flat, s, count, ties)
            start = 0
            for t in targets:
                n = t.weight.numel()
                t.weight.masked_fill_(mask[start:start + n].reshape(t.weight.shape), 0)
                start += n


@hookimpl
def register_compressors(register):
    register(Pruning())
