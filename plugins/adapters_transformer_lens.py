"""Model adapter ``transformer_lens``: a TransformerLens ``HookedTransformer``, loaded as the reference
study loads it, with TransformerLens's own hook names and weights.

- Loading: a hub id goes through ``HookedTransformer.from_pretrained(name, fold_ln=..., ...)``;
  a local Hugging Face directory is read with ``AutoModelForCausalLM.from_pretrained`` and then
  converted and processed by TransformerLens's own functions (``get_pretrained_state_dict``,
  ``load_and_process_state_dict``) with the same flags, so no network is needed. The processing
  flags are adapter options with TransformerLens's defaults (all four on; all off is
  ``from_pretrained_no_processing``).
- Hooks: every ``HookPoint`` of the model (``blocks.L.hook_resid_post``, ``blocks.L.attn.hook_z``...).
- Weights: ``W_Q, W_K, W_V, W_O, W_in, W_gate, W_out`` (``_W_K``/``_W_V`` for grouped-query
  attention), handed to compressors as materialized ``[out, in]`` copies that are written back into
  the TransformerLens parameters. The rows of ``W_Q/W_K/W_V`` ``[n_heads, d_model, d_head]`` are laid
  out ``(head, d_head)``, so ``rtn -p granularity=tl`` shares one scale per d_head index across heads,
  as absmax over every dimension but the last of the TransformerLens tensor does.

Never picked automatically: ask for it with ``--adapter transformer_lens``.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

from featsurv import FeatsurvError, LoadedModel, ModelAdapter, Param, WeightTarget, hookimpl

FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
SCOPES = ("attn", "mlp", "embed", "lm_head")
# attribute of a block's attention / MLP module -> featsurv role
ATTN_WEIGHTS = (("W_Q", "q"), ("W_K", "k"), ("W_V", "v"), ("W_O", "o"))
MLP_WEIGHTS = (("W_in", "mlp_in"), ("W_gate", "mlp_gate"), ("W_out", "mlp_out"))


def gemma2_config_dict(hf_config: Any) -> dict[str, Any]:
    """TransformerLens's Gemma-2 config dict built from a Hugging Face ``Gemma2Config``.

    TransformerLens builds Gemma-2 configs from the model's *name* (``google/gemma-2-2b`` and
    its siblings); this gives the same dict from the config's own fields, so a local or
    resized Gemma-2 loads too.
    """
    rope = getattr(hf_config, "rope_parameters", None) or {}
    layer_types = getattr(hf_config, "layer_types", None) or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(hf_config.num_hidden_layers)]
    cfg = {
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.head_dim,
        "n_heads": hf_config.num_attention_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings,
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act,
        "initializer_range": hf_config.initializer_range,
        "normalization_type": "RMS",
        "rotary_base": float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "window_size": hf_config.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types],
        "attn_scores_soft_cap": hf_config.attn_logit_softcapping,
        "output_logits_soft_cap": hf_config.final_logit_softcapping,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
    }
    if hf_config.query_pre_attn_scalar != hf_config.head_dim:
        cfg["attn_scale"] = math.sqrt(hf_config.query_pre_attn_scalar)
    return cfg


def _local_config(path: str, hf_config: Any, dtype: Any, device: str, fold_ln: bool) -> Any:
    """The HookedTransformerConfig TransformerLens would build for the model in ``path``."""
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

    if getattr(hf_config, "model_type", None) != "gemma2":
        return loading.get_pretrained_model_config(path, hf_cfg=hf_config.to_dict(), fold_ln=fold_ln,
                                                   device=device, dtype=dtype)
    # the tail of loading.get_pretrained_model_config, for the name-less Gemma-2 dict
    cfg = gemma2_config_dict(hf_config)
    cfg.update(original_architecture="Gemma2ForCausalLM", tokenizer_name=path, model_name=Path(path).name,
               init_weights=False, from_checkpoint=False, device=device, n_devices=1, dtype=dtype,
               default_prepend_bos=True, load_in_4bit=False, quantization_method=None)
    if fold_ln:
        cfg["normalization_type"] = "RMSPre"
    return HookedTransformerConfig.from_dict(cfg)


def _effective_flags(cfg: Any, flags: dict[str, bool]) -> dict[str, bool]:
    """The flags ``from_pretrained`` actually applies to a model with this config."""
    from transformer_lens.utilities import softcap_enabled
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    flags = dict(flags)
    if cfg.positional_embedding_type == "shortformer":
        flags.update(fold_ln=False, center_writing_weights=False, center_unembed=False)
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        flags.update(fold_ln=False, center_writing_weights=False)
    if flags["center_unembed"] and softcap_enabled(cfg.output_logits_soft_cap):
        flags["center_unembed"] = False
    return flags


def load_hooked_transformer(source: str, flags: dict[str, bool], dtype: Any, device: str,
                            trust_remote_code: bool = False) -> Any:
    """A HookedTransformer for a hub id (``from_pretrained``) or a local HF directory (same processing)."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # TransformerLens prints "Loaded pretrained model ..." and deprecates HookedTransformer for v4
        warnings.filterwarnings("ignore", message=r"HookedTransformer(\.from_pretrained)? is deprecated",
                                category=DeprecationWarning)
        if not Path(source).exists():
            try:
                loading.get_official_model_name(source)
            except ValueError:
                raise FeatsurvError(
                    f"TransformerLens does not know the model {source!r}",
                    hint="Pass a hub id TransformerLens supports (e.g. EleutherAI/pythia-70m-deduped, "
                         "google/gemma-2-2b) or a local Hugging Face model directory") from None
            return HookedTransformer.from_pretrained(source, **flags, dtype=dtype, device=device,
                                                     trust_remote_code=trust_remote_code)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        cfg = _local_config(str(source), hf_model.config, dtype, device, flags["fold_ln"])
        flags = _effective_flags(cfg, flags)
        state_dict = loading.get_pretrained_state_dict(str(source), cfg, hf_model, dtype=dtype)
        del hf_model
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        model.load_and_process_state_dict(state_dict, refactor_factored_attn_matrices=False, **flags)
        model.move_model_modules_to_device()
        return model


def _target(name: str, owner: Any, attr: str, role: str, layer: int | None) -> WeightTarget:
    """A materialized ``[out, in]`` copy of TransformerLens parameter ``owner.attr`` and its write-back."""
    import torch

    param = getattr(owner, attr)
    if param.ndim == 3 and role in ("q", "k", "v"):  # [heads, d_model, d_head] -> [(heads, d_head), d_model]
        heads, d_model, d_head = param.shape
        tensor = param.detach().permute(0, 2, 1).reshape(heads * d_head, d_model).clone()
        layout: tuple[int, int, int] | None = (heads, 1, d_head)

        def to_param(t: Any) -> Any:
            return t.reshape(heads, d_head, d_model).permute(0, 2, 1)
    elif param.ndim == 3:  # W_O [heads, d_head, d_model] -> [d_model, (heads, d_head)]
        heads, d_head, d_model = param.shape
        tensor = param.detach().reshape(heads * d_head, d_model).T.contiguous()
        layout = None

        def to_param(t: Any) -> Any:
            return t.T.reshape(heads, d_head, d_model)
    elif role == "embed":  # W_E [d_vocab, d_model] is already [out, in]
        tensor, layout = param.detach().clone(), None

        def to_param(t: Any) -> Any:
            return t
    else:  # W_in / W_gate [d_model, d_mlp], W_out [d_mlp, d_model], W_U [d_model, d_vocab]: [in, out]
        tensor, layout = param.detach().T.contiguous(), None

        def to_param(t: Any) -> Any:
            return t.T

    def write_back(t: Any) -> None:
        with torch.no_grad():
            param.copy_(to_param(t))

    return WeightTarget(name, owner, role, layer, layout, tensor=tensor, write_back=write_back)


class TransformerLensAdapter(ModelAdapter):
    name = "transformer_lens"
    description = ("TransformerLens HookedTransformer (hub id via from_pretrained, or a local HF directory) "
                   "with its processing; TL hook names; W_Q/W_K/W_V/W_O/W_in/W_gate/W_out in TL's layout")
    options = (
        Param("fold_ln", bool, True, "fold LayerNorm/RMSNorm weights into the next linear layers"),
        Param("center_writing_weights", bool, True, "centre every weight writing to the residual stream"),
        Param("center_unembed", bool, True, "centre the unembedding (TL turns it off under logit softcapping)"),
        Param("fold_value_biases", bool, True, "fold the value biases into the output bias"),
    )
    priority = -1000  # never picked for a model unless asked for

    def matches(self, config: Any) -> bool:
        return False

    # ------------------------------------------------------------------ loading
    def load(self, source: str, *, dtype: str = "float32", device: str = "cpu",
             trust_remote_code: bool = False) -> LoadedModel:
        from featsurv.hf import model_load_error, torch_dtype

        flags = {flag: bool(self.option(flag)) for flag in FLAGS}
        try:
            model = load_hooked_transformer(source, flags, torch_dtype(dtype), device, trust_remote_code)
        except FeatsurvError:
            raise
        except (OSError, ValueError, NotImplementedError) as exc:
            raise model_load_error(source, exc) from None
        model.eval()
        return LoadedModel(model, model.tokenizer, self, source, dtype, device)

    # ------------------------------------------------------------------ structure
    def layers(self, model: Any) -> Sequence[Any]:
        return model.blocks

    def hook_point(self, model: Any, hook_name: str) -> tuple[Any, str]:
        point = model.hook_dict.get(hook_name)
        if point is None:
            kinds = sorted({re.sub(r"^blocks\.\d+\.", "blocks.L.", n) for n in model.hook_dict})
            raise FeatsurvError(
                f"Hook {hook_name!r} is not a hook point of this TransformerLens model "
                f"({model.cfg.n_layers} layers)", allowed=kinds,
                hint="Pass --hook with a TransformerLens hook name, L from 0 to n_layers - 1")
        return point, "output"

    def hook_width(self, model: Any, hook_name: str) -> int:
        import torch

        point, _ = self.hook_point(model, hook_name)
        seen: list[Any] = []
        handle = point.register_forward_hook(lambda _m, _a, out: seen.append(out.shape))
        try:
            with torch.no_grad():
                model(torch.zeros((1, 1), dtype=torch.long, device=model.cfg.device))
        finally:
            handle.remove()
        if not seen:
            raise FeatsurvError(f"Hook {hook_name!r} does not fire in a forward pass of this model",
                                hint="Pick a hook of the residual stream, attention or MLP")
        return math.prod(seen[0][2:])

    def forward(self, model: Any, input_ids: Any) -> Any:
        return model(input_ids)

    def width(self, model: Any) -> int:
        return int(model.cfg.d_model)

    def max_positions(self, model: Any) -> int | None:
        return int(model.cfg.n_ctx)

    def compressible_weights(self, model: Any, scope: Sequence[str] = ("attn", "mlp")) -> list[WeightTarget]:
        bad = set(scope) - set(SCOPES)
        if bad:
            raise FeatsurvError(f"Unknown weight scope {sorted(bad)!r}", allowed=SCOPES)
        targets: list[WeightTarget] = []
        if "embed" in scope:
            targets.append(_target("embed.W_E", model.embed, "W_E", "embed", None))
        for i, block in enumerate(model.blocks):
            if "attn" in scope:
                for attr, role in ATTN_WEIGHTS:
                    stored = f"_{attr}" if isinstance(getattr(block.attn, f"_{attr}", None), torch_parameter()) else attr
                    targets.append(_target(f"blocks.{i}.attn.{stored}", block.attn, stored, role, i))
            if "mlp" in scope and not model.cfg.attn_only:
                found = [(attr, role) for attr, role in MLP_WEIGHTS if isinstance(getattr(block.mlp, attr, None),
                                                                                 torch_parameter())]
                if not found:
                    raise FeatsurvError(f"Block {i}'s MLP ({type(block.mlp).__name__}) has no W_in/W_out to compress",
                                        hint="Pass --scope attn, or use a Hugging Face adapter for this model")
                for attr, role in found:
                    targets.append(_target(f"blocks.{i}.mlp.{attr}", block.mlp, attr, role, i))
        if "lm_head" in scope:
            targets.append(_target("unembed.W_U", model.unembed, "W_U", "lm_head", None))
        return targets


def torch_parameter() -> type:
    import torch

    return torch.nn.Parameter


@hookimpl
def register_model_adapters(register):
    register(TransformerLensAdapter())
