"""A model adapter for Hugging Face decoder-only models, configured by module paths.

Built-in adapters (GPT-NeoX, Gemma-2, GPT-2, generic ``model.layers``) are small subclasses that
name their modules; an adapter for a new family usually needs only the same few attributes.
Compressors see every weight as a 2-D ``[out, in]`` tensor: an ``nn.Linear`` weight as it is, a
transformers ``Conv1D`` weight (stored ``[in, out]``) as a transposed view (``conv1d_targets``);
any other module is refused rather than compressed along the wrong dimension.
"""
from __future__ import annotations

import os
import re
from typing import Any, ClassVar, Sequence

from .base import LoadedModel, ModelAdapter, WeightTarget
from .errors import FeatsurvError

HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_mlp_out|hook_attn_out)$")
HOOK_KINDS = ("hook_resid_post", "hook_resid_pre", "hook_mlp_out", "hook_attn_out")
DTYPES = ("float32", "bfloat16", "float16")


def parse_hook(hook_name: str, n_layers: int | None = None) -> tuple[int, str]:
    """Split ``blocks.L.hook_X`` into ``(L, "hook_X")``, validating both parts."""
    m = HOOK_RE.match(hook_name or "")
    if not m:
        raise FeatsurvError(
            f"Unsupported hook {hook_name!r}",
            allowed=[f"blocks.L.{k}" for k in HOOK_KINDS],
            hint="Pass --hook with one of these names (as sae-lens names them)")
    layer = int(m.group(1))
    if n_layers is not None and layer >= n_layers:
        raise FeatsurvError(
            f"Hook {hook_name!r} names layer {layer}, but the model has {n_layers} layers",
            allowed=f"layers 0..{n_layers - 1}",
            hint="Check that the SAE was trained on this model (--sae) or pass the right --hook")
    return layer, m.group(2)


def get_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise FeatsurvError(f"Unknown dtype {name!r}", allowed=DTYPES)
    return getattr(torch, name)


ADAPTERS_DOC = "docs/plugins/adapters.md"


def is_linear(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear)


def is_conv1d(module: Any) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (GPT-2, OpenAI GPT): a linear map whose weight is ``[in, out]``."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(module, Conv1D)


def conv1d_view(module: Any, columns: slice | None = None) -> Any:
    """A 2-D ``[out, in]`` view of a ``Conv1D`` weight (stored ``[in, out]``), optionally of some output
    columns. It shares the parameter's storage, so a compressor that changes it in place changes the model."""
    w = module.weight.detach()
    return (w if columns is None else w[:, columns]).T


def unsupported_weight(adapter: str, name: str, module: Any) -> FeatsurvError:
    """The refusal for a compressible module whose weight layout the adapter does not declare."""
    kind = type(module).__name__
    shape = tuple(getattr(getattr(module, "weight", None), "shape", ()) or ())
    if is_conv1d(module):
        why = (f"transformers' Conv1D stores its weight transposed, as [in, out] (here {list(shape)}), so rtn's "
               "per-channel and group scales would run along the input dimension")
        hint = ("For GPT-2 use the built-in adapter (--adapter gpt2); for another Conv1D family write an adapter "
                "whose block_targets returns featsurv.hf.conv1d_targets(...) (fused c_attn split into q, k, v), "
                f"see {ADAPTERS_DOC}")
    else:
        why = ("featsurv hands compressors nn.Linear weights ([out, in]) unless the adapter declares another "
               f"layout; this module's weight has shape {list(shape)}")
        hint = (f"Write an adapter whose block_targets gives a 2-D [out, in] view (tensor=) or a copy with "
                f"write_back= for this module, see {ADAPTERS_DOC}")
    return FeatsurvError(
        f"Adapter {adapter!r} cannot compress {name!r}: it is a {kind}, not a torch.nn.Linear ({why})",
        allowed="torch.nn.Linear, or a layout the adapter declares in block_targets", hint=hint)


def conv1d_targets(adapter: "HFDecoderAdapter", model: Any, name: str, module: Any, role: str,
                   layer: int | None) -> list[WeightTarget]:
    """Targets for a ``Conv1D``: one transposed ``[out, in]`` view, or for role ``qkv`` (output columns laid out
    ``[Q (all heads) | K | V]``, as GPT-2's ``c_attn``) three views ``q``, ``k``, ``v``."""
    if role != "qkv":
        return [WeightTarget(name, module, role, layer, adapter.head_layout(model, role), tensor=conv1d_view(module))]
    n_out = module.weight.shape[1]
    if n_out % 3:
        raise FeatsurvError(f"Fused {name!r} has {n_out} output columns, not three equal parts Q, K, V",
                            hint=f"Map it with block_targets in the adapter ({ADAPTERS_DOC})")
    d = n_out // 3
    return [WeightTarget(f"{name}[{part}]", module, part, layer, adapter.head_layout(model, part),
                         tensor=conv1d_view(module, slice(i * d, (i + 1) * d)))
            for i, part in enumerate(("q", "k", "v"))]


class HFDecoderAdapter(ModelAdapter):
    """Maps a Hugging Face decoder-only model given the paths of its modules."""

    #: dotted path from the CausalLM model to the list of decoder blocks
    layers_path: ClassVar[str] = "model.layers"
    #: module inside a block whose output is ``hook_attn_out`` / ``hook_mlp_out``
    attn_out_module: ClassVar[str] = "self_attn"
    mlp_out_module: ClassVar[str] = "mlp"
    #: weight modules inside a block -> role (q, k, v, qkv, o, mlp_in, mlp_gate, mlp_out); each must be an
    #: ``nn.Linear`` unless ``block_targets`` is overridden to declare its layout
    block_weights: ClassVar[dict[str, str]] = {
        "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
        "self_attn.o_proj": "o", "mlp.gate_proj": "mlp_gate", "mlp.up_proj": "mlp_in",
        "mlp.down_proj": "mlp_out",
    }
    #: tried in descending order when picking an adapter for a config
    priority: ClassVar[int] = 10

    # ------------------------------------------------------------------ loading
    def load(self, source: str, *, dtype: str = "float32", device: str = "cpu",
             trust_remote_code: bool = False, require_safetensors: bool = False,
             revision: str | None = None, **kwargs: Any) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # featsurv reports its own progress
        tdtype = torch_dtype(dtype)
        hub = {"revision": revision} if revision else {}
        kwargs = {"use_safetensors": True} if require_safetensors else {}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=tdtype, trust_remote_code=trust_remote_code, **hub, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
        except Exception as exc:  # a damaged weights file raises SafetensorError, UnpicklingError, ...
            raise model_load_error(source, exc, require_safetensors) from None
        if weights_format(source) == "pickle":
            import sys

            print(f"featsurv: note: model {source!r} has only pickle weights (pytorch_model.bin); they were "
                  "loaded with torch.load(weights_only=True), which refuses code in the file. Pass "
                  "--require-safetensors to refuse pickle weights.", file=sys.stderr, flush=True)
        model.to(device)
        model.eval()
        return LoadedModel(model, tokenizer, self, source, dtype, device)

    # ------------------------------------------------------------------ structure
    def layers(self, model: Any) -> Sequence[Any]:
        return get_path(model, self.layers_path)

    def hook_point(self, model: Any, hook_name: str) -> tuple[Any, str]:
        layers = self.layers(model)
        layer, kind = parse_hook(hook_name, len(layers))
        block = layers[layer]
        if kind == "hook_resid_post":
            return block, "output"
        if kind == "hook_resid_pre":
            return block, "input"
        if kind == "hook_attn_out":
            return get_path(block, self.attn_out_module), "output"
        return get_path(block, self.mlp_out_module), "output"

    def head_layout(self, model: Any, role: str) -> tuple[int, int, int] | None:
        """Rows of q/k/v(/qkv) projections as (n_heads, n_parts, d_head)."""
        cfg = model.config
        n_heads = cfg.num_attention_heads
        d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        if role == "q":
            return (n_heads, 1, d_head)
        if role in ("k", "v"):
            return (getattr(cfg, "num_key_value_heads", None) or n_heads, 1, d_head)
        if role == "qkv":
            return (n_heads, 3, d_head)
        return None

    def block_targets(self, model: Any, name: str, module: Any, role: str, layer: int) -> list[WeightTarget]:
        """The targets for one ``block_weights`` entry (``name`` is its path from the model).

        Default: an ``nn.Linear`` as it is; anything else is refused with a FeatsurvError. Override
        this to declare another layout (see ``conv1d_targets`` and docs/plugins/adapters.md)."""
        if not is_linear(module):
            raise unsupported_weight(self.name, name, module)
        return [WeightTarget(name, module, role, layer, self.head_layout(model, role))]

    def compressible_weights(self, model: Any, scope: Sequence[str] = ("attn", "mlp")) -> list[WeightTarget]:
        import torch

        bad = set(scope) - {"attn", "mlp", "embed", "lm_head"}
        if bad:
            raise FeatsurvError(f"Unknown weight scope {sorted(bad)!r}", allowed=["attn", "mlp", "embed", "lm_head"])
        targets: list[WeightTarget] = []
        names = {id(m): n for n, m in model.named_modules()}
        if "embed" in scope:
            embed = model.get_input_embeddings()
            if not isinstance(embed, (torch.nn.Embedding, torch.nn.Linear)):
                raise unsupported_weight(self.name, names.get(id(embed), "embed"), embed)
            targets.append(WeightTarget(names.get(id(embed), "embed"), embed, "embed"))
        for i, block in enumerate(self.layers(model)):
            for path, role in self.block_weights.items():
                group = "mlp" if role.startswith("mlp") else "attn"
                if group not in scope:
                    continue
                targets.extend(self.block_targets(model, f"{self.layers_path}.{i}.{path}", get_path(block, path),
                                                  role, i))
        if "lm_head" in scope:
            head = model.get_output_embeddings()
            tied = head is not None and head.weight is model.get_input_embeddings().weight
            if tied and "embed" not in scope:
                raise FeatsurvError(
                    "This model's LM head is tied to its input embedding, so --scope lm_head would compress "
                    "the embedding too", hint="Pass --scope with both embed and lm_head, or neither")
            if head is not None and not tied:
                if not is_linear(head):
                    raise unsupported_weight(self.name, names.get(id(head), "lm_head"), head)
                targets.append(WeightTarget(names.get(id(head), "lm_head"), head, "lm_head"))
        return targets


SAFE_NAMES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def weights_format(source: str) -> str | None:
    """``"safetensors"`` or ``"pickle"``: which weights transformers loads for ``source`` (a local
    directory, or a hub id in the local cache); None when unknown."""
    def has(name: str) -> bool:
        if os.path.isdir(source):
            return os.path.isfile(os.path.join(source, name))
        try:
            from huggingface_hub import try_to_load_from_cache

            return isinstance(try_to_load_from_cache(source, name), str)
        except Exception:  # not a valid repo id, no cache
            return False

    if any(has(n) for n in SAFE_NAMES):
        return "safetensors"
    if any(has(n) for n in PICKLE_NAMES):
        return "pickle"
    return None


def model_load_error(source: str, exc: BaseException, require_safetensors: bool = False) -> FeatsurvError:
    local = os.path.exists(source)
    why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(why) > 300:
        why = why[:300] + "..."
    kind = type(exc).__name__
    if require_safetensors and weights_format(source) == "pickle":
        return FeatsurvError(f"Model {source!r} has only pickle weights (pytorch_model.bin), and "
                             "--require-safetensors refuses them",
                             hint="Convert it to safetensors (save_pretrained(..., safe_serialization=True)), "
                                  "or drop --require-safetensors to load it with torch.load(weights_only=True)")
    if kind == "SafetensorError" or (kind in ("UnpicklingError", "RuntimeError", "EOFError", "IndexError")
                                     and local and weights_format(source) == "pickle"):
        name = "model.safetensors" if kind == "SafetensorError" else "pytorch_model.bin"
        if kind == "UnpicklingError" and "weights_only" in str(exc):
            why = "it holds objects other than tensors, which torch.load(weights_only=True) refuses to run"
        return FeatsurvError(f"Cannot load model {source!r}: its weights file ({name}) is damaged or not a "
                             f"weights file ({kind}: {why})",
                             hint="Re-download or re-save the model (save_pretrained writes model.safetensors)")
    if local:
        hint = "Pass a directory written by `save_pretrained` (config.json, weights, tokenizer files)"
    else:
        hint = ("Pass a local model directory, or a Hugging Face hub id with network access "
                "(HF_HUB_OFFLINE=1 forbids downloads); `featsurv presets` lists known models")
    return FeatsurvError(f"Cannot load model {source!r}: {why}", hint=hint)
