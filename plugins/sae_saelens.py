"""SAE source ``saelens``: sae-lens releases (``RELEASE:SAE_ID``) and sae-lens directories."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from featsurv import FeatsurvError, LoadedSAE, SAESource, hookimpl

PREFIX = "saelens:"


def _strip(spec: str) -> str:
    return spec[len(PREFIX):] if spec.startswith(PREFIX) else spec


def _sae_class() -> Any:
    """sae-lens's ``SAE`` class, loaded without running ``sae_lens/__init__.py`` when possible.

    ``from sae_lens import SAE`` executes the package's ``__init__``, which also imports its
    training and evaluation stack (wandb, activation stores, runners: seconds at start-up).
    Inference needs only ``sae_lens.saes`` and the architecture registry, so the package is
    entered as a lazy module: ``sae_lens.saes`` is imported, the inference architectures that
    ``__init__`` would register are registered, and the first access to any other top-level
    name (``import sae_lens; sae_lens.X`` or ``from sae_lens import X``) runs the real
    ``__init__`` then (our registrations are withdrawn first, so it registers the same classes).
    Whatever goes wrong falls back to the plain import.
    """
    import sys

    mod = sys.modules.get("sae_lens")
    if mod is None:
        try:
            mod = _lazy_sae_lens()
        except Exception:  # noqa: BLE001 - any surprise: forget the half-made package, import it plainly
            for name in [m for m in sys.modules if m == "sae_lens" or m.startswith("sae_lens.")]:
                sys.modules.pop(name, None)
            mod = None
    if mod is None or "SAE" not in vars(mod):
        from sae_lens import SAE

        return SAE
    return vars(mod)["SAE"]


def _lazy_sae_lens() -> Any:
    import ast
    import importlib
    import importlib.util
    import logging
    import sys
    from importlib import metadata

    spec = importlib.util.find_spec("sae_lens")
    init_src = Path(spec.origin).read_text(encoding="utf-8")
    registrations = []  # (architecture, class name, config name) as sae_lens/__init__.py registers them
    for node in ast.parse(init_src).body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "register_sae_class":
            arch, cls, cfg = call.args
            registrations.append((arch.value, cls.id, cfg.id))
    if not registrations:
        raise ImportError("sae_lens/__init__.py registers no SAE class: unknown layout")
    pkg = importlib.util.module_from_spec(spec)
    pkg.__version__ = metadata.version("sae-lens")
    pkg.logger = logging.getLogger("sae_lens")
    sys.modules["sae_lens"] = pkg
    saes = importlib.import_module("sae_lens.saes")
    from sae_lens import registry

    mine = []
    for arch, cls, cfg in registrations:
        if arch not in registry.SAE_CLASS_REGISTRY:
            registry.register_sae_class(arch, getattr(saes, cls), getattr(saes, cfg))
            mine.append(arch)
    pkg.SAE = saes.SAE
    state = {"done": False}

    def finish(name: str) -> Any:
        if state["done"] or name.startswith("__"):
            raise AttributeError(f"module 'sae_lens' has no attribute {name!r}")
        state["done"] = True
        for arch in mine:
            registry.SAE_CLASS_REGISTRY.pop(arch, None)
        del pkg.__getattr__
        spec.loader.exec_module(pkg)  # the real __init__, in the same module object
        return getattr(pkg, name)

    pkg.__getattr__ = finish
    return pkg


class SaeLensSAE(LoadedSAE):
    """A sae-lens SAE with featsurv's per-feature weight statistics."""

    def feature_stats(self) -> dict[str, Any]:
        import torch

        sae = self.sae
        out: dict[str, Any] = {}
        with torch.no_grad():
            out["decoder_norm"] = sae.W_dec.float().norm(dim=1).cpu().numpy()
            out["encoder_norm"] = sae.W_enc.float().norm(dim=0).cpu().numpy()
            bias = getattr(sae, "b_enc", None)
            if bias is None:
                bias = getattr(sae, "b_gate", None)
            if isinstance(bias, torch.Tensor):
                out["encoder_bias"] = bias.float().cpu().numpy()
            threshold = getattr(sae, "threshold", None)
            if isinstance(threshold, torch.Tensor) and threshold.numel() == sae.cfg.d_sae:
                out["threshold"] = threshold.float().cpu().numpy()
        return out


class SaeLensSource(SAESource):
    name = "saelens"
    description = ("sae-lens SAEs: RELEASE:SAE_ID (SAE.from_pretrained) or a directory with "
                   "cfg.json and sae_weights.safetensors (SAE.load_from_disk)")

    def can_load(self, spec: str) -> bool:
        raw = _strip(spec)
        if (Path(raw) / "cfg.json").is_file():
            return True
        release, sep, sae_id = raw.partition(":")
        return bool(sep and release and sae_id) and not os.path.exists(raw)

    def load(self, spec: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedSAE:
        SAE = _sae_class()
        raw = _strip(spec)
        path = Path(raw)
        try:
            if path.is_dir():
                if not (path / "cfg.json").is_file():
                    raise FeatsurvError(
                        f"SAE directory {raw!r} has no cfg.json",
                        hint="Pass a directory written by sae-lens (SAE.save_model), or RELEASE:SAE_ID")
                sae = SAE.load_from_disk(raw, device=device, dtype=dtype)
            else:
                release, _, sae_id = raw.partition(":")
                sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
        except FeatsurvError:
            raise
        except Exception as exc:  # sae-lens raises many kinds for a bad id or a missing file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise FeatsurvError(
                f"Cannot load SAE {spec!r}: {first}",
                hint=("Pass a sae-lens directory, or RELEASE:SAE_ID from sae-lens's pretrained "
                      "directory (needs network access); `featsurv presets` lists known pairings")) from None
        sae.eval()
        for p in sae.parameters():
            p.requires_grad_(False)
        meta = sae.cfg.metadata
        return SaeLensSAE(
            sae=sae, spec=spec, hook_name=meta.get("hook_name"), d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae,
            model_name=meta.get("model_name"), context_size=meta.get("context_size"),
            prepend_bos=meta.get("prepend_bos"), architecture=sae.cfg.architecture(), source=self.name,
            neuronpedia_id=meta.get("neuronpedia_id"), expected_profile=_expected_profile(raw, path, meta, sae))


def _expected_profile(raw: str, path: Path, meta: Any, sae: Any) -> dict[str, Any]:
    """What the SAE's metadata records of its firing (L0, dead fraction), where it does."""
    held = meta.get("featsurv_heldout_eval") or {}
    if isinstance(held, dict) and held.get("l0"):
        return {"l0": float(held["l0"]), "dead_fraction": held.get("dead_fraction"),
                "source": "cfg.json metadata.featsurv_heldout_eval"}
    out: dict[str, Any] = {}
    l0 = meta.get("l0")
    if isinstance(l0, (int, float)) and l0 > 0:
        out = {"l0": float(l0), "source": "cfg.json metadata.l0"}
        dead = meta.get("num_dead_features")
        if isinstance(dead, (int, float)) and sae.cfg.d_sae:
            out["dead_fraction"] = float(dead) / sae.cfg.d_sae
        return out
    if not path.is_dir():
        release, _, sae_id = raw.partition(":")
        try:
            from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

            lookup = get_pretrained_saes_directory().get(release)
        except Exception:  # an older or newer sae-lens without the directory: no recorded profile
            lookup = None
        l0 = (lookup.expected_l0 or {}).get(sae_id) if lookup is not None else None
        if isinstance(l0, (int, float)) and l0 > 0:  # sae-lens records 0 when the release gives none
            out = {"l0": float(l0), "source": f"sae-lens pretrained directory ({release})"}
    return out


@hookimpl
def register_sae_sources(register):
    register(SaeLensSource())
