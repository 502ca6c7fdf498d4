"""Model adapter for the GPT-2 family (``model_type`` "gpt2": GPT-2 small to XL, DistilGPT2, fine-tunes).

GPT-2 keeps its linear maps in transformers' ``Conv1D``, whose weight is stored ``[in, out]``
(transposed), and fuses Q, K and V into one ``attn.c_attn`` whose output columns are
``[Q (all heads) | K | V]``. Compressors get ``[out, in]`` views of that storage
(``featsurv.hf.conv1d_targets``): ``c_attn`` as three targets ``q``, ``k``, ``v`` with head layout
``(n_heads, 1, d_head)``, so per-channel scales run along the output dimension, ``granularity=tl``
follows TransformerLens's ``W_Q``/``W_K``/``W_V`` and magnitude pruning ranks Q, K and V separately.
Biases stay full precision. Hook points: ``hook_attn_out`` is the output of ``attn`` (after
``c_proj``, bias included), ``hook_mlp_out`` that of ``mlp``, as in TransformerLens.
"""
from __future__ import annotations

from featsurv import hookimpl
from featsurv.hf import HFDecoderAdapter, conv1d_targets, is_conv1d


class GPT2Adapter(HFDecoderAdapter):
    name = "gpt2"
    description = "GPT-2 family (transformer.h, transposed Conv1D weights, fused c_attn split into q, k, v)"
    model_types = ("gpt2",)
    layers_path = "transformer.h"
    attn_out_module = "attn"
    mlp_out_module = "mlp"
    block_weights = {
        "attn.c_attn": "qkv",  # output columns [Q | K | V]: handed out as three targets q, k, v
        "attn.c_proj": "o",
        "mlp.c_fc": "mlp_in",
        "mlp.c_proj": "mlp_out",
    }

    def block_targets(self, model, name, module, role, layer):
        if is_conv1d(module):
            return conv1d_targets(self, model, name, module, role, layer)
        return super().block_targets(model, name, module, role, layer)  # nn.Linear, or refused


@hookimpl
def register_model_adapters(register):
    register(GPT2Adapter())
