"""Model adapter for Gemma-2.

Gemma-2 normalises each sublayer's output before adding it to the residual stream; like
TransformerLens, ``hook_attn_out`` and ``hook_mlp_out`` are the outputs of those post-norms.
"""
from __future__ import annotations

from featsurv import hookimpl
from featsurv.hf import HFDecoderAdapter


class Gemma2Adapter(HFDecoderAdapter):
    name = "gemma2"
    description = "Gemma-2 (model.layers, post-sublayer norms, grouped-query attention)"
    model_types = ("gemma2",)
    attn_out_module = "post_attention_layernorm"
    mlp_out_module = "post_feedforward_layernorm"


@hookimpl
def register_model_adapters(register):
    register(Gemma2Adapter())
