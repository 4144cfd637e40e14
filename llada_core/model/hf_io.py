"""HF checkpoints <-> our megatron-named tensors, for every family with a name table (hf_names).

Conversion is streaming (one layer at a time) and strict: every expected tensor must be present
with the expected shape and nothing may be left over; failures name the tensor. Shapes come from
`expected_shapes(cfg)` (tested against a built model), so a 100B checkpoint is checked without
instantiating it. megatron's fused QKV is laid out per KV group: [q heads of group g ; k_g ; v_g].
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import Tensor

from llada_core.model.config import ModelConfig
from llada_core.model.hf_config import CheckpointError
from llada_core.model.hf_names import FAMILIES

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
            out |= {layer + "self_attention.q_layernorm.weight": (d,),
                    layer + "self_attention.k_layernorm.weight": (d,)}
        if not moe:
            out |= {layer + "mlp.linear_fc1.weight": (2 * cfg.ffn_hidden_size, H),
                    layer + "mlp.linear_fc2.weight": (H, cfg.ffn_hidden_size)}
            continue
        out[layer + "mlp.router.weight"] = (cfg.num_experts, H)
        if cfg.router_expert_bias:
            out[layer + "mlp.router.expert_bias"] = (cfg.num_experts,)
        for e in range(cfg.num_experts):
            ex = f"{layer}mlp.experts.local_experts.{e}."
            out |= {ex + "linear_fc1.weight": (2 * cfg.moe_ffn_hidden_size, H),
                    ex + "linear_fc2.weight": (H, cfg.moe_ffn_hidden_size)}
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
    return torch.cat([q.reshape(g, per * d, *rest), k.reshape(g, d, *rest), v.reshape(g, d, *rest)],
                     1).reshape(-1, *rest)


def qkv_from_megatron(w: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    g, d, rest = cfg.num_kv_heads, cfg.head_dim, w.shape[1:]
    per = cfg.num_heads // g
    q, k, v = w.reshape(g, (per + 2) * d, *rest).split([per * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.*)")
_EXPERT = re.compile(r"mlp\.experts\.local_experts\.(\d+)\.(.*)")


def hf_name(ours: str, arch: str) -> str | tuple[str, ...]:
    """The HF name(s) of one of our tensors in family `arch` (from its table in hf_names)."""
    table, rel, prefix = FAMILIES[arch], ours[len(P):], ""
    if m := _LAYER.fullmatch(rel):
        prefix, rel = f"model.layers.{m.group(1)}.", m.group(2)
    expert = _EXPERT.fullmatch(rel)
    key = f"mlp.experts.local_experts.{{e}}.{expert.group(2)}" if expert else rel
    if key not in table:
        raise CheckpointError(f"model_type={arch!r} has no HF name for our tensor {ours!r}")
    names = table[key]
    render = (lambda n: prefix + n.format(e=expert.group(1))) if expert else (lambda n: prefix + n)
    return render(names) if isinstance(names, str) else tuple(render(n) for n in names)


def _is_qkv(ours: str) -> bool:
    return ".linear_qkv." in ours


def hf_to_megatron(get, names: set[str], cfg: ModelConfig, arch: str) -> Iterator[tuple[str, Tensor]]:
    """Yield (our name, tensor), one at a time in layer order, converting HF tensors fetched by
    `get(name)`; `names` is every HF tensor name present, consumed as we go so leftovers can be reported."""
    left = set(names)

    def take(name: str) -> Tensor:
        if name not in left:
            raise CheckpointError(f"missing tensor {name!r} in the HF checkpoint")
        left.discard(name)
        return get(name)

    rows = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim)
    for ours in expected_shapes(cfg):
        hf = hf_name(ours, arch)
        parts = [take(hf)] if isinstance(hf, str) else [take(h) for h in hf]
        if _is_qkv(ours):
            checks = [(hf, parts[0], sum(rows))] if isinstance(hf, str) else zip(hf, parts, rows, strict=True)
            for name, tensor, n in checks:  # a wrong shape is named, before any reshape
                want = (n,) if ours.endswith(".bias") else (n, cfg.hidden_size)
                if tuple(tensor.shape) != want:
                    raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {want}")
            q, k, v = parts if len(parts) == 3 else parts[0].split(list(rows), dim=0)
            yield ours, qkv_to_megatron(q, k, v, cfg)
            q = k = v = None
        else:
            yield ours, parts[0] if len(parts) == 1 else torch.cat(parts)
        parts = None  # released before the next tensor is read: one in memory at a time
    if cfg.tie_embeddings:  # some tied checkpoints store the shared matrix twice
        left.discard("lm_head.weight")
    left = {x for x in left if not x.endswith("rotary_emb.inv_freq")}
    if left:
        raise CheckpointError(f"unexpected tensors in the HF checkpoint (not mapped): {sorted(left)[:5]}")


def megatron_to_hf_stream(get, cfg: ModelConfig, arch: str) -> Iterator[tuple[str, Tensor]]:
    """(HF name, tensor), one of our tensors `get(name)` at a time, in layer order."""
    for ours in expected_shapes(cfg):
        hf, tensor = hf_name(ours, arch), get(ours)
        if _is_qkv(ours):
            q, k, v = qkv_from_megatron(tensor, cfg)
            pairs = [(hf, torch.cat([q, k, v]))] if isinstance(hf, str) else zip(hf, (q, k, v), strict=True)
        else:
            pairs = [(hf, tensor)] if isinstance(hf, str) else zip(hf, tensor.chunk(len(hf)), strict=True)
        for name, t in pairs:
            yield name, t.contiguous()
        tensor = pairs = t = q = k = v = None  # released before the next tensor is read


def megatron_to_hf(sd: dict[str, Tensor], cfg: ModelConfig, arch: str) -> dict[str, Tensor]:
    return dict(megatron_to_hf_stream(sd.__getitem__, cfg, arch))
