"""HF checkpoints <-> our megatron-named tensors, for Qwen3, Qwen3-MoE and BailingMoeV2.

Conversion is streaming (one layer at a time) and strict: every expected tensor must be present
with the expected shape and nothing may be left over; failures name the tensor. Shapes come from
`expected_shapes(cfg)` (tested against a built model), so a 100B checkpoint is checked without
instantiating it. megatron's fused QKV is laid out per KV group: [q heads of group g ; k_g ; v_g].
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from llada_core.model.config import ModelConfig
from llada_core.model.hf_config import CheckpointError

P = "gpt."  # prefix of LladaModel's state dict


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    H, d = cfg.hidden_size, cfg.head_dim
    qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * d
    out = {f"{P}embedding.word_embeddings.weight": (cfg.vocab_size, H)}
    for i, moe in enumerate(cfg.moe_layers()):
        layer = f"{P}decoder.layers.{i}."
        out |= {
            layer + "input_layernorm.weight": (H,),
            layer + "self_attention.linear_qkv.weight": (qkv_rows, H),
            **({layer + "self_attention.linear_qkv.bias": (qkv_rows,)} if cfg.qkv_bias else {}),
            layer + "self_attention.linear_proj.weight": (H, cfg.num_heads * d),
            layer + "pre_mlp_layernorm.weight": (H,),
        }
        if cfg.qk_norm:
            out |= {layer + "self_attention.q_layernorm.weight": (d,), layer + "self_attention.k_layernorm.weight": (d,)}
        if not moe:
            out |= {layer + "mlp.linear_fc1.weight": (2 * cfg.ffn_hidden_size, H), layer + "mlp.linear_fc2.weight": (H, cfg.ffn_hidden_size)}
            continue
        out[layer + "mlp.router.weight"] = (cfg.num_experts, H)
        if cfg.router_expert_bias:
            out[layer + "mlp.router.expert_bias"] = (cfg.num_experts,)
        for e in range(cfg.num_experts):
            ex = f"{layer}mlp.experts.local_experts.{e}."
            out |= {ex + "linear_fc1.weight": (2 * cfg.moe_ffn_hidden_size, H), ex + "linear_fc2.weight": (H, cfg.moe_ffn_hidden_size)}
        if cfg.shared_expert_ffn_hidden_size:
            sh = layer + "mlp.shared_experts."
            n = cfg.shared_expert_ffn_hidden_size
            out |= {sh + "linear_fc1.weight": (2 * n, H), sh + "linear_fc2.weight": (H, n)}
    out[f"{P}decoder.final_layernorm.weight"] = (H,)
    if not cfg.tie_embeddings:
        out[f"{P}output_layer.weight"] = (cfg.vocab_size, H)
    return out


def qkv_to_megatron(q: Tensor, k: Tensor, v: Tensor, cfg: ModelConfig) -> Tensor:
    """Weights [rows, H] or biases [rows]: interleave per KV group."""
    g, d, rest = cfg.num_kv_heads, cfg.head_dim, q.shape[1:]
    per = cfg.num_heads // g
    return torch.cat([q.reshape(g, per * d, *rest), k.reshape(g, d, *rest), v.reshape(g, d, *rest)], 1).reshape(-1, *rest)


def qkv_from_megatron(w: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    g, d, rest = cfg.num_kv_heads, cfg.head_dim, w.shape[1:]
    per = cfg.num_heads // g
    q, k, v = w.reshape(g, (per + 2) * d, *rest).split([per * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def _names(arch: str) -> dict[str, str]:
    if arch == "bailing_moe_v2":
        return {"embed": "model.word_embeddings.weight", "attn": "attention.", "qkv": "query_key_value.weight",
                "o": "dense.weight", "q_norm": "query_layernorm.weight", "k_norm": "key_layernorm.weight",
                "shared": "mlp.shared_experts."}
    return {"embed": "model.embed_tokens.weight", "attn": "self_attn.", "o": "o_proj.weight", "q_norm": "q_norm.weight",
            "k_norm": "k_norm.weight", "shared": "mlp.shared_expert."}


def _glu(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}gate_proj.weight", f"{prefix}up_proj.weight", f"{prefix}down_proj.weight"


def hf_to_megatron(get, names: set[str], cfg: ModelConfig, arch: str) -> Iterator[tuple[str, Tensor]]:
    """Yield (our name, tensor) converting HF tensors fetched by `get(name)`; `names` is every HF
    tensor name present, consumed as we go so leftovers can be reported."""
    n = _names(arch)
    left = set(names)

    def take(name: str) -> Tensor:
        if name not in left:
            raise CheckpointError(f"missing tensor {name!r} in the HF checkpoint")
        left.discard(name)
        return get(name)

    yield f"{P}embedding.word_embeddings.weight", take(n["embed"])
    for i, moe in enumerate(cfg.moe_layers()):
        hf, ours = f"model.layers.{i}.", f"{P}decoder.layers.{i}."
        a = hf + n["attn"]
        yield ours + "input_layernorm.weight", take(hf + "input_layernorm.weight")
        yield ours + "pre_mlp_layernorm.weight", take(hf + "post_attention_layernorm.weight")
        if arch == "bailing_moe_v2":
            q, k, v = take(a + n["qkv"]).split([cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim,
                                                cfg.num_kv_heads * cfg.head_dim], dim=0)
        else:
            q, k, v = (take(a + f"{x}_proj.weight") for x in "qkv")
        yield ours + "self_attention.linear_qkv.weight", qkv_to_megatron(q, k, v, cfg)
        if cfg.qkv_bias:
            yield ours + "self_attention.linear_qkv.bias", qkv_to_megatron(*(take(a + f"{x}_proj.bias") for x in "qkv"), cfg)
        yield ours + "self_attention.linear_proj.weight", take(a + n["o"])
        if cfg.qk_norm:
            yield ours + "self_attention.q_layernorm.weight", take(a + n["q_norm"])
            yield ours + "self_attention.k_layernorm.weight", take(a + n["k_norm"])
        if not moe:
            gate, up, down = (take(x) for x in _glu(hf + "mlp."))
            yield ours + "mlp.linear_fc1.weight", torch.cat([gate, up])
            yield ours + "mlp.linear_fc2.weight", down
            continue
        yield ours + "mlp.router.weight", take(hf + "mlp.gate.weight")
        if cfg.router_expert_bias:
            yield ours + "mlp.router.expert_bias", take(hf + "mlp.gate.expert_bias")
        for e in range(cfg.num_experts):
            gate, up, down = (take(x) for x in _glu(f"{hf}mlp.experts.{e}."))
            yield f"{ours}mlp.experts.local_experts.{e}.linear_fc1.weight", torch.cat([gate, up])
            yield f"{ours}mlp.experts.local_experts.{e}.linear_fc2.weight", down
        if cfg.shared_expert_ffn_hidden_size:
            gate, up, down = (take(x) for x in _glu(hf + n["shared"]))
            yield ours + "mlp.shared_experts.linear_fc1.weight", torch.cat([gate, up])
            yield ours + "mlp.shared_experts.linear_fc2.weight", down
    yield f"{P}decoder.final_layernorm.weight", take("model.norm.weight")
    if not cfg.tie_embeddings:
        yield f"{P}output_layer.weight", take("lm_head.weight")
    elif "lm_head.weight" in left:  # some tied checkpoints store the shared matrix twice
        left.discard("lm_head.weight")
    left = {x for x in left if not x.endswith("rotary_emb.inv_freq")}
    if left:
        raise CheckpointError(f"unexpected tensors in the HF checkpoint (not mapped): {sorted(left)[:5]}")


def _split_glu(fc1: Tensor, fc2: Tensor, prefix: str) -> dict[str, Tensor]:
    gate, up = fc1.chunk(2)
    return dict(zip(_glu(prefix), (gate, up, fc2), strict=True))


def megatron_to_hf(sd: dict[str, Tensor], cfg: ModelConfig, arch: str) -> dict[str, Tensor]:
    n = _names(arch)
    out = {n["embed"]: sd[f"{P}embedding.word_embeddings.weight"]}
    for i, moe in enumerate(cfg.moe_layers()):
        hf, ours = f"model.layers.{i}.", f"{P}decoder.layers.{i}."
        a = hf + n["attn"]
        out[hf + "input_layernorm.weight"] = sd[ours + "input_layernorm.weight"]
        out[hf + "post_attention_layernorm.weight"] = sd[ours + "pre_mlp_layernorm.weight"]
        q, k, v = qkv_from_megatron(sd[ours + "self_attention.linear_qkv.weight"], cfg)
        if arch == "bailing_moe_v2":
            out[a + n["qkv"]] = torch.cat([q, k, v])
        else:
            out |= {a + "q_proj.weight": q, a + "k_proj.weight": k, a + "v_proj.weight": v}
        if cfg.qkv_bias:
            out |= dict(zip((a + f"{x}_proj.bias" for x in "qkv"), qkv_from_megatron(sd[ours + "self_attention.linear_qkv.bias"], cfg), strict=True))
        out[a + n["o"]] = sd[ours + "self_attention.linear_proj.weight"]
        if cfg.qk_norm:
            out[a + n["q_norm"]] = sd[ours + "self_attention.q_layernorm.weight"]
            out[a + n["k_norm"]] = sd[ours + "self_attention.k_layernorm.weight"]
        if not moe:
            out |= _split_glu(sd[ours + "mlp.linear_fc1.weight"], sd[ours + "mlp.linear_fc2.weight"], hf + "mlp.")
            continue
        out[hf + "mlp.gate.weight"] = sd[ours + "mlp.router.weight"]
        if cfg.router_expert_bias:
            out[hf + "mlp.gate.expert_bias"] = sd[ours + "mlp.router.expert_bias"]
        for e in range(cfg.num_experts):
            ex = f"{ours}mlp.experts.local_experts.{e}."
            out |= _split_glu(sd[ex + "linear_fc1.weight"], sd[ex + "linear_fc2.weight"], f"{hf}mlp.experts.{e}.")
        if cfg.shared_expert_ffn_hidden_size:
            out |= _split_glu(sd[ours + "mlp.shared_experts.linear_fc1.weight"], sd[ours + "mlp.shared_experts.linear_fc2.weight"], hf + n["shared"])
    out["model.norm.weight"] = sd[f"{P}decoder.final_layernorm.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd[f"{P}output_layer.weight"]
    return {k: v.contiguous() for k, v in out.items()}
