"""The tensor names of each HF family, as data: one table per family, read by llada_core.model.hf_io.

A key is our megatron name (without the `gpt.` prefix; per-layer tensors relative to
`decoder.layers.{i}.`, `{e}` an expert); its value is the HF name (per-layer ones relative to
`model.layers.{i}.`) or a tuple: (gate, up), whose concatenated rows are our GLU fc1, or (q, k, v),
which our fused QKV interleaves per KV group. For `linear_qkv` a single name is the HF checkpoint's
own fused [q ; k ; v] rows. A tensor the model config does not have (biases, QK-norm, a shared
expert...) is simply not looked up.
"""

from __future__ import annotations


def _glu(prefix: str) -> dict[str, tuple[str, str] | str]:
    return {"linear_fc1.weight": (f"{prefix}gate_proj.weight", f"{prefix}up_proj.weight"),
            "linear_fc2.weight": f"{prefix}down_proj.weight"}


def _mlp(shared: str) -> dict:
    """Dense MLP, router, routed experts and the shared expert: named alike in every family here."""
    return {
        **{f"mlp.{k}": v for k, v in _glu("mlp.").items()},
        "mlp.router.weight": "mlp.gate.weight",
        "mlp.router.expert_bias": "mlp.gate.expert_bias",
        **{f"mlp.experts.local_experts.{{e}}.{k}": v for k, v in _glu("mlp.experts.{e}.").items()},
        **{f"mlp.shared_experts.{k}": v for k, v in _glu(f"mlp.{shared}.").items()},
    }


_TOP = {"decoder.final_layernorm.weight": "model.norm.weight", "output_layer.weight": "lm_head.weight",
        "input_layernorm.weight": "input_layernorm.weight",
        "pre_mlp_layernorm.weight": "post_attention_layernorm.weight"}

QWEN = _TOP | _mlp("shared_expert") | {  # Qwen2, Qwen3, Qwen3-MoE, SDAR
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "self_attention.linear_qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                         "self_attn.v_proj.weight"),
    "self_attention.linear_qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
}

LING = _TOP | _mlp("shared_experts") | {  # BailingMoeV2 (Ling 2.0, the LLaDA2.0 base) and LLaDA2
    "embedding.word_embeddings.weight": "model.word_embeddings.weight",
    "self_attention.linear_qkv.weight": "attention.query_key_value.weight",
    "self_attention.linear_proj.weight": "attention.dense.weight",
    "self_attention.q_layernorm.weight": "attention.query_layernorm.weight",
    "self_attention.k_layernorm.weight": "attention.key_layernorm.weight",
}

FAMILIES: dict[str, dict] = {"qwen2": QWEN, "qwen3": QWEN, "qwen3_moe": QWEN, "sdar": QWEN, "sdar_moe": QWEN,
                             "bailing_moe_v2": LING, "llada2_moe": LING}
