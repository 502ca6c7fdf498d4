"""Fallback adapter for decoder-only Hugging Face models laid out like Llama (``model.layers``).

Used for any model type that no specific adapter claims, when its modules have the Llama names
(self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj): Llama, Mistral, Qwen2, Qwen3, ...

It hands compressors ``nn.Linear`` weights only: a block weight of any other kind (GPT-2's transposed
``Conv1D``, a packed or per-head tensor) stops the run with a FeatsurvError naming the module and the
adapter to write (``HFDecoderAdapter.block_targets``), so nothing is quantized along the wrong axis.
"""
from __future__ import annotations

from featsurv import hookimpl
from featsurv.hf import HFDecoderAdapter


class GenericDecoderAdapter(HFDecoderAdapter):
    name = "generic"
    description = "Llama-style decoder-only models with model.layers (Llama, Mistral, Qwen2/3, ...)"
    priority = 0

    def matches(self, config) -> bool:
        return not getattr(config, "is_encoder_decoder", False) and hasattr(config, "num_hidden_layers")


@hookimpl
def register_model_adapters(register):
    register(GenericDecoderAdapter())
