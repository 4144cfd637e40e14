"""The model shape: a Ling-2.0 / LLaDA2.0-style MoE transformer (or a dense one), as data.

Presets live in llada_core/model/presets/*.yaml. `active_params` / `total_params` are the
parameter arithmetic used to check presets against the published sizes and to plan memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from llada_core.config import StrictModel, load_config, named_yaml

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


class ModelConfig(StrictModel):
    vocab_size: int = Field(ge=8)
    hidden_size: int = Field(ge=8)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=2)
    ffn_hidden_size: int = Field(ge=1)  # dense FFN of the first `first_k_dense` layers
    first_k_dense: int = Field(1, ge=0)
    num_experts: int = Field(0, ge=0)  # 0 = dense everywhere
    moe_topk: int = Field(1, ge=1)
    moe_ffn_hidden_size: int = Field(1, ge=1)
    shared_expert_ffn_hidden_size: int = Field(0, ge=0)  # 0 = no shared expert
    router_score: Literal["sigmoid", "softmax"] = "sigmoid"
    router_expert_bias: bool = True  # aux-loss-free balancing (sigmoid routers)
    router_num_groups: int | None = None
    router_group_topk: int | None = None
    routed_scaling_factor: float = Field(1.0, gt=0)
    norm_topk_prob: bool = True
    qk_norm: bool = True
    qkv_bias: bool = False  # Qwen2
    rotary_percent: float = Field(0.5, gt=0, le=1)
    rotary_base: float = Field(600000.0, gt=0)
    max_position: int = Field(4096, ge=2)
    norm_eps: float = Field(1e-6, gt=0)
    tie_embeddings: bool = False
    init_std: float = Field(0.02, gt=0)
    attention_backend: Literal["sdpa", "flex"] = "sdpa"  # flex: GPU only (torch.compile)

    @model_validator(mode="after")
    def _check(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads: {self.num_kv_heads} does not divide num_heads={self.num_heads}")
        if self.num_experts:
            if self.moe_topk > self.num_experts:
                raise ValueError(f"moe_topk: {self.moe_topk} exceeds num_experts={self.num_experts}")
            if self.first_k_dense > self.num_layers:
                raise ValueError(f"first_k_dense: {self.first_k_dense} exceeds num_layers={self.num_layers}")
            groups = self.router_num_groups
            if groups is not None:
                if self.num_experts % groups:
                    raise ValueError(f"router_num_groups: {groups} does not divide num_experts={self.num_experts}")
                if self.router_group_topk is None or not 1 <= self.router_group_topk <= groups:
                    raise ValueError(f"router_group_topk: must be in [1, {groups}] when router_num_groups is set")
        rotary_dim = self.head_dim * self.rotary_percent
        if rotary_dim != int(rotary_dim) or int(rotary_dim) % 2:
            raise ValueError(f"rotary_percent: head_dim*rotary_percent={rotary_dim} must be an even integer")
        return self

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def moe_layers(self) -> list[bool]:
        return [self.is_moe and i >= self.first_k_dense for i in range(self.num_layers)]

    def _attention_params(self) -> int:
        q = self.hidden_size * self.num_heads * self.head_dim
        kv = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        norms = 2 * self.head_dim if self.qk_norm else 0
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        return q + kv + bias + self.num_heads * self.head_dim * self.hidden_size + norms + 2 * self.hidden_size

    def _params(self, experts_counted: int) -> int:
        glu = 3 * self.hidden_size  # gate, up, down per FFN unit
        total = 0
        for moe in self.moe_layers():
            total += self._attention_params()
            if moe:
                total += experts_counted * glu * self.moe_ffn_hidden_size + glu * self.shared_expert_ffn_hidden_size
                total += self.num_experts * self.hidden_size + (self.num_experts if self.router_expert_bias else 0)
            else:
                total += glu * self.ffn_hidden_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        return total + embeddings + self.hidden_size

    def total_params(self) -> int:
        return self._params(self.num_experts)

    def active_params(self) -> int:
        return self._params(self.moe_topk)


def pad_vocab(size: int, multiple: int = 128) -> int:
    """Embedding rows for a tokenizer of `size` tokens: a multiple of 128 (megatron's default), so the
    vocabulary splits evenly over any power-of-two TP size up to 128 and matmuls stay aligned."""
    return -(-size // multiple) * multiple


def preset_path(name: str) -> Path:
    return named_yaml(PRESETS_DIR, name, "model preset")


def load_preset(name: str, overrides: list[str] = ()) -> ModelConfig:
    return load_config(ModelConfig, preset_path(name), overrides=overrides)
