"""Model adapter for GPT-NeoX (the Pythia suite)."""
from __future__ import annotations

from featsurv import hookimpl
from featsurv.hf import HFDecoderAdapter


class GPTNeoXAdapter(HFDecoderAdapter):
    name = "gpt_neox"
    description = "GPT-NeoX / Pythia (gpt_neox.layers, fused query_key_value)"
    model_types = ("gpt_neox",)
    layers_path = "gpt_neox.layers"
    attn_out_module = "attention"
    mlp_out_module = "mlp"
    block_weights = {
        "attention.query_key_value": "qkv",  # rows laid out as (n_heads, 3, d_head)
        "attention.dense": "o",
        "mlp.dense_h_to_4h": "mlp_in",
        "mlp.dense_4h_to_h": "mlp_out",
    }


@hookimpl
def register_model_adapters(register):
    register(GPTNeoXAdapter())
