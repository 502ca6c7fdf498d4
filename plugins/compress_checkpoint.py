"""Compressor ``checkpoint``: the weights of a model compressed elsewhere, audited against the FP model.

``-p path=DIR`` names a Hugging Face model directory of the same architecture. Each compressible
target's weight is replaced by the checkpoint's tensor of the same module path (a target's
``name`` is its module path in the HF model, the checkpoint key is ``NAME.weight``):

- dense safetensors (e.g. fake-quantized weights written with ``save_pretrained``) are read
  lazily with ``safetensors``, only the target keys;
- a compressed-tensors checkpoint (``quantization_config.quant_method == "compressed-tensors"``,
  what llm-compressor writes for GPTQ, AWQ, RTN...) is loaded by transformers with
  compressed-tensors, which dequantizes it on the CPU (``dequantize=True``).

The checkpoint is validated before anything changes: its own files when the ``-p`` value is
parsed; every target key and shape before the first weight is written; the FP model's
architecture and tokenizer (``check_against``) when the host enters ``transform``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from featsurv import Compressor, FeatsurvError, Param, WeightTarget, hookimpl

COMPRESSED_TENSORS = "compressed-tensors"
#: config.json fields that fix the shapes and the computation of a decoder (compared when present in either).
ARCH_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "hidden_act",
               "use_parallel_residual", "rotary_pct", "partial_rotary_factor")
HINT = "Pass -p path=DIR with a directory written by save_pretrained (config.json and *.safetensors)"


# --------------------------------------------------------------------------- the checkpoint on its own
def read_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json, checked to be a directory featsurv can read."""
    root = Path(path)
    if not root.is_dir():
        raise FeatsurvError(f"Checkpoint {str(path)!r} is not a directory", hint=HINT)
    config = root / "config.json"
    if not config.is_file():
        raise FeatsurvError(f"Checkpoint {str(path)!r} has no config.json", hint=HINT)
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatsurvError(f"Checkpoint {str(path)!r}: config.json is not readable JSON ({exc})", hint=HINT) from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise FeatsurvError(f"Checkpoint {str(path)!r}: config.json names no model_type", hint=HINT)
    if not weight_files(root):
        raise FeatsurvError(f"Checkpoint {str(path)!r} holds no *.safetensors weights",
                            hint="featsurv reads safetensors only (never pickled .bin files); re-save the model with "
                                 "save_pretrained(..., safe_serialization=True)")
    return data


def weight_files(root: Path) -> list[Path]:
    return sorted(root.glob("*.safetensors"))


def quant_method(config: dict[str, Any]) -> str | None:
    q = config.get("quantization_config") or config.get("compression_config")
    return None if not q else str(q.get("quant_method", "unknown"))


def check_path(value: str) -> str | None:
    """Validator of ``path``: a readable checkpoint in a format this compressor can dequantize."""
    try:
        config = read_config(value)
        method = quant_method(config)
        if method not in (None, COMPRESSED_TENSORS):
            return (f"its quantization format {method!r} is not one featsurv can dequantize on the CPU "
                    f"(dense safetensors or {COMPRESSED_TENSORS} only)")
        if method == COMPRESSED_TENSORS:
            _import_compressed_tensors()
    except FeatsurvError as exc:
        return exc.message if hasattr(exc, "message") else str(exc)
    return None


def _import_compressed_tensors() -> None:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise FeatsurvError("This checkpoint is in the compressed-tensors format, but compressed-tensors is not "
                            "installed", hint="pip install 'compressed-tensors>=0.20' (it leaves torch as it is)") from None


# --------------------------------------------------------------------------- reading its tensors
def dense_tensors(path: Path, keys: list[str]) -> dict[str, Any]:
    """The tensors ``keys`` of a dense safetensors checkpoint (read lazily; missing keys are left out)."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            names = set(f.keys())
            for key in keys:
                if key in names and key not in out:
                    out[key] = f.get_tensor(key)
    return out


def compressed_tensors_weights(path: Path, keys: list[str]) -> dict[str, Any]:
    """Dequantized weights of a compressed-tensors checkpoint: transformers loads it with compressed-tensors
    on the CPU and decompresses every quantized module (``dequantize=True``)."""
    _import_compressed_tensors()
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    from transformers.utils.quantization_config import CompressedTensorsConfig

    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # "the quantization_config from the model will be used": as intended
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch.float32, device_map="cpu",
                quantization_config=CompressedTensorsConfig(dequantize=True))
    except Exception as exc:  # a scheme this compressed-tensors cannot decompress, a broken file...
        raise FeatsurvError(f"compressed-tensors cannot load checkpoint {str(path)!r}: {type(exc).__name__}: {exc}",
                            hint="Check that the checkpoint loads with transformers and compressed-tensors") from None
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in keys if k in state}


def checkpoint_weights(path: str | Path, keys: list[str]) -> dict[str, Any]:
    """The tensors ``keys`` of a checkpoint, dequantized when it is quantized."""
    root = Path(path)
    config = read_config(root)
    if quant_method(config) == COMPRESSED_TENSORS:
        return compressed_tensors_weights(root, keys)
    return dense_tensors(root, keys)


# --------------------------------------------------------------------------- checks against the FP model
def check_against(loaded: Any, path: str | Path) -> None:
    """Raise naming the first difference between the FP model and the checkpoint: architecture
    (config.json fields in ``ARCH_FIELDS``), then tokenizer (the vocabulary, token by token)."""
    config = read_config(path)
    fp = loaded.model.config.to_dict()
    for key in ARCH_FIELDS:
        if (key in fp or key in config) and fp.get(key) != config.get(key):
            raise FeatsurvError(
                f"Checkpoint {str(path)!r} has another architecture than the FP model: {key} is "
                f"{config.get(key)!r} there, {fp.get(key)!r} in the FP model",
                hint="Audit a checkpoint made from the same model as --model")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise FeatsurvError(f"Checkpoint {str(path)!r} has no tokenizer featsurv can load ({exc})",
                            hint="Save the tokenizer next to the weights (tokenizer.save_pretrained(DIR))") from None
    ours, theirs = loaded.tokenizer.get_vocab(), tokenizer.get_vocab()
    if ours != theirs:
        missing = sorted(set(ours) - set(theirs))
        moved = sorted(t for t in set(ours) & set(theirs) if ours[t] != theirs[t])
        extra = sorted(set(theirs) - set(ours))
        first = (f"token {missing[0]!r} (id {ours[missing[0]]}) is missing" if missing else
                 f"token {moved[0]!r} has id {theirs[moved[0]]}, not {ours[moved[0]]}" if moved else
                 f"it has the extra token {extra[0]!r}")
        raise FeatsurvError(f"Checkpoint {str(path)!r} has another tokenizer than the FP model: {first} "
                            f"({len(theirs)} tokens there, {len(ours)} in the FP model)",
                            hint="Audit a checkpoint made from the same model and tokenizer as --model")


def _storage_target(t: WeightTarget) -> Any:
    """The tensor laid out as the checkpoint stores it (``module.weight``), or None when it cannot be written."""
    if t.tensor is None:
        return t.weight
    module_weight = getattr(t.module, "weight", None)
    if module_weight is not None and t.tensor.untyped_storage().data_ptr() == module_weight.untyped_storage().data_ptr():
        return module_weight  # a view: writing the storage is what the view sees
    return None


def plan(targets: list[WeightTarget], tensors: dict[str, Any], path: str | Path,
         model_type: str | None = None) -> list[tuple[Any, Any]]:
    """(destination, checkpoint tensor) for every target; raise naming the first that does not fit."""
    out = []
    for t in targets:
        key = f"{t.name}.weight"
        if key not in tensors:
            what = f" (its config.json says model_type {model_type!r})" if model_type else ""
            raise FeatsurvError(f"Checkpoint {str(path)!r} has no tensor {key!r} for target {t.name}{what}",
                                hint="Audit a checkpoint of the same architecture as --model (same module names)")
        dest = _storage_target(t)
        if dest is None:
            raise FeatsurvError(f"Target {t.name}'s weight is a copy in the adapter's own layout; the checkpoint "
                                "compressor can only write weights laid out as the checkpoint stores them",
                                hint="Use the Hugging Face model adapter for this model")
        src = tensors[key]
        if tuple(src.shape) != tuple(dest.shape):
            raise FeatsurvError(f"Checkpoint {str(path)!r}: {key} has shape {tuple(src.shape)}, the FP model's "
                                f"{tuple(dest.shape)}", hint="Audit a checkpoint of the same architecture as --model")
        if not src.is_floating_point():
            raise FeatsurvError(f"Checkpoint {str(path)!r}: {key} holds {src.dtype} values, not dequantized weights",
                                hint=f"Use a dense checkpoint or the {COMPRESSED_TENSORS} format")
        out.append((dest, src))
    return out


# --------------------------------------------------------------------------- the compressor
class Checkpoint(Compressor):
    name = "checkpoint"
    description = ("Weights of a checkpoint compressed elsewhere (dense safetensors or compressed-tensors, "
                   "e.g. GPTQ/AWQ from llm-compressor) replace the targets; -p path=A,B audits several")
    params = (Param("path", str, None, "model directory of the same architecture (config.json, *.safetensors)",
                    check=check_path),)

    def label(self, params: dict[str, Any]) -> str:
        path = params.get("path")
        return f"checkpoint {Path(path).name if path else '(no path)'}"

    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        path = params.get("path")
        if not path:
            raise FeatsurvError("The checkpoint compressor needs a checkpoint directory",
                                hint="Pass -p path=DIR (or -p path=A,B for several)")
        why = check_path(path)
        if why:
            raise FeatsurvError(f"Bad checkpoint {str(path)!r}: {why}", hint=HINT)
        tensors = checkpoint_weights(path, [f"{t.name}.weight" for t in targets])
        pairs = plan(targets, tensors, path, read_config(path).get("model_type"))  # every target is checked before any is written
        with torch.no_grad():
            for dest, src in pairs:
                dest.copy_(src.to(dtype=dest.dtype, device=dest.device))

    def transform(self, model: Any, targets: list[WeightTarget], params: dict[str, Any]) -> Any:
        """No change beyond the weights; checks the FP model's architecture and tokenizer against the checkpoint."""
        if params.get("path"):
            check_against(model, params["path"])
        return None


@hookimpl
def register_compressors(register):
    register(Checkpoint())
