"""HF `config.json` <-> ModelConfig for the families we import: Qwen2, Qwen3 (dense), Qwen3-MoE,
BailingMoeV2 (Ling 2.0, the LLaDA2.0 base), LLaDA2 (`llada2_moe`, the released diffusion models:
the same config fields and tensor names as BailingMoeV2) and SDAR (`sdar` / `sdar_moe`: Qwen3's).
Anything we cannot represent exactly is an error naming the field, never a silent approximation."""

from __future__ import annotations

from llada_core.model.config import ModelConfig

SUPPORTED = ("qwen2", "qwen3", "qwen3_moe", "bailing_moe_v2", "llada2_moe", "sdar", "sdar_moe")
_AS = {"sdar": "qwen3", "sdar_moe": "qwen3_moe", "llada2_moe": "bailing_moe_v2"}  # read with the fields of


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names the tensor or field."""


def _get(cfg: dict, *names, default=None, required=True):
    for name in names:
        if name in cfg and cfg[name] is not None:
            return cfg[name]
    if required and default is None:
        raise CheckpointError(f"config.json: missing field {names[0]!r}")
    return default


def _rope_theta(cfg: dict) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", None):
        raise CheckpointError(f"config.json: rope_type {kind!r} is not supported (only 'default')")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _require(cfg: dict, field: str, expected, default=None) -> None:
    value = cfg.get(field, default)
    if value != expected:
        raise CheckpointError(f"config.json: {field}={value!r} is not supported (expected {expected!r})")


def from_hf_config(cfg: dict) -> ModelConfig:
    arch = cfg.get("model_type")
    if arch not in SUPPORTED:
        raise CheckpointError(f"config.json: unknown architecture model_type={arch!r} "
                              f"(supported: {', '.join(SUPPORTED)})")
    arch = _AS.get(arch, arch)
    hidden = _get(cfg, "hidden_size")
    heads = _get(cfg, "num_attention_heads")
    common = dict(
        vocab_size=_get(cfg, "vocab_size"), hidden_size=hidden, num_layers=_get(cfg, "num_hidden_layers"),
        num_heads=heads, num_kv_heads=_get(cfg, "num_key_value_heads", default=heads),
        head_dim=_get(cfg, "head_dim", default=hidden // heads),
        norm_eps=float(_get(cfg, "rms_norm_eps", default=1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), rotary_base=_rope_theta(cfg),
        max_position=_get(cfg, "max_position_embeddings", default=4096),
    )
    _require(cfg, "hidden_act", "silu", "silu")
    if arch == "qwen2":
        if cfg.get("use_sliding_window"):
            raise CheckpointError("config.json: use_sliding_window=true is not supported")
        return ModelConfig(**common, ffn_hidden_size=_get(cfg, "intermediate_size"), first_k_dense=common["num_layers"],
                           qk_norm=False, qkv_bias=True, rotary_percent=1.0)
    if arch in ("qwen3", "qwen3_moe"):
        _require(cfg, "attention_bias", False, False)
        common |= dict(qk_norm=True, rotary_percent=1.0)
    if arch == "qwen3":
        return ModelConfig(**common, ffn_hidden_size=_get(cfg, "intermediate_size"), first_k_dense=common["num_layers"])
    if arch == "qwen3_moe":
        dense_layers = sorted(cfg.get("mlp_only_layers") or [])
        if dense_layers != list(range(len(dense_layers))):
            raise CheckpointError(f"config.json: mlp_only_layers={dense_layers} must be the first layers")
        _require(cfg, "decoder_sparse_step", 1, 1)
        return ModelConfig(
            **common, ffn_hidden_size=_get(cfg, "intermediate_size"), first_k_dense=len(dense_layers),
            num_experts=_get(cfg, "num_local_experts", "num_experts"), moe_topk=_get(cfg, "num_experts_per_tok"),
            moe_ffn_hidden_size=_get(cfg, "moe_intermediate_size"), router_score="softmax", router_expert_bias=False,
            norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        )
    # bailing_moe_v2
    _require(cfg, "use_qkv_bias", False, False)
    _require(cfg, "use_bias", False, False)
    shared = int(cfg.get("num_shared_experts") or 0)
    return ModelConfig(
        **(common | dict(qk_norm=bool(cfg.get("use_qk_norm", True)),
                         rotary_percent=float(cfg.get("partial_rotary_factor", 1.0)))),
        ffn_hidden_size=_get(cfg, "intermediate_size"), first_k_dense=int(cfg.get("first_k_dense_replace", 0)),
        num_experts=_get(cfg, "num_experts"), moe_topk=_get(cfg, "num_experts_per_tok"),
        moe_ffn_hidden_size=_get(cfg, "moe_intermediate_size"),
        shared_expert_ffn_hidden_size=shared * _get(cfg, "moe_intermediate_size"),
        router_score=cfg.get("score_function", "sigmoid"),
        router_expert_bias=bool(cfg.get("moe_router_enable_expert_bias", True)),
        router_num_groups=cfg.get("n_group"), router_group_topk=cfg.get("topk_group"),
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
    )


def _common(cfg: ModelConfig) -> dict:
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position, "torch_dtype": "float32",
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rotary_base}, "rope_theta": cfg.rotary_base,
    }


def qwen_config(cfg: ModelConfig) -> dict:
    """Qwen2 (QKV bias), Qwen3 or Qwen3-MoE; a model none of them expresses is an error naming the field."""
    if cfg.qkv_bias:
        if cfg.is_moe or cfg.qk_norm or cfg.rotary_percent != 1.0:
            raise CheckpointError("qkv_bias=True is only expressible as a dense Qwen2 model "
                                  "(num_experts=0, qk_norm=False, rotary_percent=1.0)")
        return _common(cfg) | {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                               "intermediate_size": cfg.ffn_hidden_size, "use_sliding_window": False}
    for field, value, want in (("qk_norm", cfg.qk_norm, True), ("rotary_percent", cfg.rotary_percent, 1.0)):
        if value != want:
            raise CheckpointError(f"{field}={value!r} is not expressible as Qwen3 (needs {want!r})")
    if not cfg.is_moe:
        return _common(cfg) | {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
                               "intermediate_size": cfg.ffn_hidden_size, "attention_bias": False}
    for field, value, want in (("router_score", cfg.router_score, "softmax"),
                               ("shared_expert_ffn_hidden_size", cfg.shared_expert_ffn_hidden_size, 0),
                               ("router_num_groups", cfg.router_num_groups, None),
                               ("routed_scaling_factor", cfg.routed_scaling_factor, 1.0),
                               ("router_expert_bias", cfg.router_expert_bias, False)):
        if value != want:
            raise CheckpointError(f"{field}={value!r} is not expressible as Qwen3-MoE (needs {want!r})")
    return _common(cfg) | {
        "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
        "intermediate_size": cfg.ffn_hidden_size, "num_experts": cfg.num_experts,
        "num_local_experts": cfg.num_experts, "num_experts_per_tok": cfg.moe_topk,
        "moe_intermediate_size": cfg.moe_ffn_hidden_size, "norm_topk_prob": cfg.norm_topk_prob,
        "mlp_only_layers": list(range(cfg.first_k_dense)), "decoder_sparse_step": 1, "attention_bias": False,
    }


def ling_config(cfg: ModelConfig) -> dict:
    """BailingMoeV2 (Ling 2.0), whose fields LLaDA2 shares."""
    if cfg.qkv_bias:
        raise CheckpointError("qkv_bias=True is not expressible as BailingMoeV2 / LLaDA2 (use_qkv_bias=false)")
    if cfg.is_moe and cfg.shared_expert_ffn_hidden_size % cfg.moe_ffn_hidden_size:
        raise CheckpointError("shared_expert_ffn_hidden_size must be a multiple of moe_ffn_hidden_size "
                              "for BailingMoeV2 / LLaDA2 (num_shared_experts)")
    return _common(cfg) | {
        "model_type": "bailing_moe_v2", "architectures": ["BailingMoeV2ForCausalLM"],
        "intermediate_size": cfg.ffn_hidden_size, "num_experts": cfg.num_experts, "num_experts_per_tok": cfg.moe_topk,
        "moe_intermediate_size": cfg.moe_ffn_hidden_size,
        "num_shared_experts": cfg.shared_expert_ffn_hidden_size // cfg.moe_ffn_hidden_size if cfg.is_moe else 0,
        "first_k_dense_replace": cfg.first_k_dense, "n_group": cfg.router_num_groups,
        "topk_group": cfg.router_group_topk, "routed_scaling_factor": cfg.routed_scaling_factor,
        "score_function": cfg.router_score, "moe_router_enable_expert_bias": cfg.router_expert_bias,
        "norm_topk_prob": cfg.norm_topk_prob, "use_qk_norm": cfg.qk_norm, "partial_rotary_factor": cfg.rotary_percent,
        "use_qkv_bias": False, "use_bias": False,
    }


def to_hf_config(cfg: ModelConfig) -> dict:
    """The AR HF config.json of our model: a Qwen family where one expresses it, else BailingMoeV2."""
    try:
        return qwen_config(cfg)
    except CheckpointError:
        return ling_config(cfg)
