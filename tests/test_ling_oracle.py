"""An independent oracle for the Ling / LLaDA2 numerics (BailingMoeV2 names, which LLaDA2 keeps):
a short pure-torch forward written here from the HF tensor names and the config's semantics (not
from our model code, and transformers has no class for this family), against our megatron model's
logits after `import-hf`. A tiny random checkpoint with what the real ones have: a dense first
layer, routed experts in groups with a sigmoid router and expert bias, a shared expert, routed
scaling, QK-norm, GQA and partial RoPE."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hf_interop import hf_tokenizer_dir, our_logits

from stages.model_hf import import_hf

pytestmark = pytest.mark.slow  # builds a megatron model

CONFIG = {
    "model_type": "bailing_moe_v2", "architectures": ["BailingMoeV2ForCausalLM"], "vocab_size": 96,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "first_k_dense_replace": 1,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "moe_intermediate_size": 16,
    "num_experts": 8, "num_experts_per_tok": 4, "num_shared_experts": 1, "n_group": 4, "topk_group": 2,
    "routed_scaling_factor": 2.5, "score_function": "sigmoid", "moe_router_enable_expert_bias": True,
    "norm_topk_prob": True, "use_qk_norm": True, "use_qkv_bias": False, "use_bias": False,
    "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


def random_checkpoint(path, model_type: str = "bailing_moe_v2") -> dict[str, torch.Tensor]:
    c = CONFIG
    g = torch.Generator().manual_seed(0)
    H, hd, E = c["hidden_size"], c["head_dim"], c["num_experts"]
    F, Fm = c["intermediate_size"], c["moe_intermediate_size"]
    qkv_rows = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * hd

    def w(*shape, scale=0.2):
        return scale * torch.randn(*shape, generator=g)

    def norm(n):  # not all ones, so a dropped or misplaced norm shows
        return 1 + 0.2 * torch.randn(n, generator=g)

    t = {"model.word_embeddings.weight": w(c["vocab_size"], H, scale=1.0), "model.norm.weight": norm(H),
         "lm_head.weight": w(c["vocab_size"], H)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": norm(H), p + "post_attention_layernorm.weight": norm(H),
              p + "attention.query_key_value.weight": w(qkv_rows, H), p + "attention.dense.weight": w(H, H),
              p + "attention.query_layernorm.weight": norm(hd), p + "attention.key_layernorm.weight": norm(hd)}
        glu = {"gate_proj": (F, H), "up_proj": (F, H), "down_proj": (H, F)}
        if i < c["first_k_dense_replace"]:
            t |= {f"{p}mlp.{k}.weight": w(*s) for k, s in glu.items()}
            continue
        small = {"gate_proj": (Fm, H), "up_proj": (Fm, H), "down_proj": (H, Fm)}
        t |= {p + "mlp.gate.weight": w(E, H, scale=1.0),
              p + "mlp.gate.expert_bias": 0.3 * torch.randn(E, generator=g)}
        t |= {f"{p}mlp.experts.{e}.{k}.weight": w(*s) for e in range(E) for k, s in small.items()}
        t |= {f"{p}mlp.shared_experts.{k}.weight": w(*s) for k, s in small.items()}
    path.mkdir()
    save_file(t, str(path / "model.safetensors"))
    arch = {"bailing_moe_v2": "BailingMoeV2ForCausalLM", "llada2_moe": "LLaDA2MoeModelLM"}[model_type]
    (path / "config.json").write_text(json.dumps(CONFIG | {"model_type": model_type, "architectures": [arch]}))
    hf_tokenizer_dir(path, c["vocab_size"])
    return t


def rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + CONFIG["rms_norm_eps"]) * weight


def partial_rope(x, positions):
    """RoPE on the first partial_rotary_factor of each head (rotate-half pairs), the rest passed on."""
    rot = int(x.shape[-1] * CONFIG["partial_rotary_factor"])
    inv = 1.0 / CONFIG["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    angles = positions[:, None].double() * inv[None]
    cos, sin = (torch.cat([f(angles)] * 2, -1).float()[:, None] for f in (torch.cos, torch.sin))
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = torch.cat([-x_rot[..., rot // 2 :], x_rot[..., : rot // 2]], -1)
    return torch.cat([x_rot * cos + half * sin, x_pass], -1)


def glu(t, prefix, x):
    gate, up, down = (t[f"{prefix}{k}.weight"] for k in ("gate_proj", "up_proj", "down_proj"))
    return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T


def routed(t, p, x):
    """Sigmoid scores; experts chosen by score + bias within the top groups (a group scores as the
    sum of its two best), weighted by the unbiased scores, normalised, times the routed scaling."""
    c = CONFIG
    scores = torch.sigmoid(x @ t[p + "mlp.gate.weight"].T)
    choice = scores + t[p + "mlp.gate.expert_bias"]
    groups = choice.view(len(x), c["n_group"], -1)
    best_groups = groups.topk(2, -1).values.sum(-1).topk(c["topk_group"], -1).indices
    keep = torch.zeros_like(groups[..., 0], dtype=torch.bool).scatter(1, best_groups, True)
    choice = choice.masked_fill(~keep.repeat_interleave(groups.shape[-1], 1), float("-inf"))
    experts = choice.topk(c["num_experts_per_tok"], -1).indices
    weights = scores.gather(1, experts)
    weights = weights / weights.sum(-1, keepdim=True) * c["routed_scaling_factor"]
    out = glu(t, p + "mlp.shared_experts.", x)
    for tok in range(len(x)):
        for e, wt in zip(experts[tok].tolist(), weights[tok], strict=True):
            out[tok] += wt * glu(t, f"{p}mlp.experts.{e}.", x[tok : tok + 1])[0]
    return out


def reference_logits(t, ids):
    """Causal forward of one sequence: [S] -> [S, V]."""
    c = CONFIG
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    S = len(ids)
    pos = torch.arange(S)
    x = t["model.word_embeddings.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q, k, v = (h @ t[p + "attention.query_key_value.weight"].T).split([nh * hd, nkv * hd, nkv * hd], -1)
        q = partial_rope(rms(q.view(S, nh, hd), t[p + "attention.query_layernorm.weight"]), pos)
        k = partial_rope(rms(k.view(S, nkv, hd), t[p + "attention.key_layernorm.weight"]), pos)
        v = v.view(S, nkv, hd)
        k, v = (z.repeat_interleave(nh // nkv, 1) for z in (k, v))  # query head j reads KV head j // (nh / nkv)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        att = att.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        x = x + torch.einsum("hqk,khd->qhd", att, v).reshape(S, nh * hd) @ t[p + "attention.dense.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        x = x + (glu(t, p + "mlp.", h) if i < c["first_k_dense_replace"] else routed(t, p, h))
    return rms(x, t["model.norm.weight"]) @ t["lm_head.weight"].T


@pytest.mark.parametrize("model_type", ["bailing_moe_v2", "llada2_moe"])  # the AR base; a released LLaDA2 model
def test_imported_ling_checkpoint_matches_an_independent_forward(tmp_path, model_type):
    from llada_core.parallel.setup import init_single_process

    init_single_process(seed=0)
    tensors = random_checkpoint(tmp_path / "hf", model_type)
    assert set(load_file(str(tmp_path / "hf" / "model.safetensors"))) == set(tensors)
    import_hf(tmp_path / "hf", tmp_path / "ckpt", add_mask_token="<|mask|>")
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 24), generator=torch.Generator().manual_seed(1))
    ours = our_logits(tmp_path / "ckpt", ids)[0, :, : CONFIG["vocab_size"]]
    with torch.no_grad():
        ref = reference_logits(tensors, ids[0])
    assert ref.abs().max() > 1.0  # not a degenerate case
    assert (ours - ref).abs().max().item() <= 1e-4, (ours - ref).abs().max().item()
