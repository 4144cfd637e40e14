"""The network: megatron-core GPTModel with a Ling-2.0 / LLaDA2.0 spec, behind one small wrapper.

`LladaModel(input_ids [B,S], position_ids [B,S], allowed [B,S,S]) -> logits [B,S,V]` is the
denoiser every objective and the sampler call. Two things megatron's GPTModel does not do for us:
  - RoPE from `position_ids`: GPTModel always rotates with 0..S-1, but the [x_t ; x_0] input needs
    positions 0..L-1 in both halves. `IndexedRotaryEmbedding` indexes the frequency table by them.
  - mask-embedding noise (early CPT): the embedding output gets Gaussian noise at [MASK] positions
    and is handed to the decoder as `decoder_input`.
  - logits of a prefix only (`logits_len`): the objectives read the x_t half of [x_t ; x_0], so the
    output layer runs on those positions alone (on 2 cores the [B, 2L, V] logits, their slice and its
    backward were ~40% of an SFT step). A hook trims the hidden states before the output layer.
The parallel layout comes from megatron's parallel state (llada_core.parallel.setup); nothing here
is parallel-specific beyond passing the layout's sizes into TransformerConfig.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer import TransformerConfig
from torch import Tensor, nn

from llada_core.model.attention import KVCache, core_attention_class
from llada_core.model.config import ModelConfig
from llada_core.parallel.layout import ParallelLayout


def add_mask_embedding_noise(embeddings: Tensor, input_ids: Tensor, mask_id: int, std: float,
                             generators: list[torch.Generator] | None = None, first: int = 0) -> Tensor:
    """Early-CPT stabiliser (R§4): Gaussian noise on the embedding output at [MASK] positions,
    whose embedding an AR base model left near zero. embeddings: [B, S', H], positions first ..
    first + S' of input_ids [B, S] (S' < S on a sequence-parallel rank). Row b's noise comes from
    generators[b] and is drawn for all S positions, then sliced: every layout (micro-batch split,
    DP, TP with sequence parallelism) adds the same noise to the same sample."""
    if std <= 0:
        return embeddings
    B, n, H = embeddings.shape
    gens = generators or [None] * B
    if len(gens) != B:
        raise ValueError(f"mask noise: {len(gens)} generators for a batch of {B} rows")
    # drawn where the (seeded, CPU) generators live: the same noise on any device
    noise = torch.stack([torch.randn((input_ids.shape[1], H), generator=g, device=g.device if g else "cpu",
                                     dtype=embeddings.dtype)[first : first + n] for g in gens]).to(embeddings.device)
    at_mask = (input_ids[:, first : first + n] == mask_id).unsqueeze(-1).to(embeddings.dtype)
    return embeddings + std * noise * at_mask


class IndexedRotaryEmbedding(RotaryEmbedding):
    """RotaryEmbedding whose output rows follow `self.positions` (1-D, shared by the batch)."""

    positions: Tensor | None = None

    def forward(self, max_seq_len, offset=0, packed_seq=False, cp_group=None):
        if self.positions is None:
            return super().forward(max_seq_len, offset, packed_seq, cp_group)
        table = super().forward(int(self.positions.max()) + 1, 0, packed_seq, cp_group)
        return table[self.positions]


def transformer_config(cfg: ModelConfig, layout: ParallelLayout,
                       dtype: torch.dtype = torch.float32) -> TransformerConfig:
    moe = {}
    if cfg.is_moe:
        moe = dict(
            num_moe_experts=cfg.num_experts, moe_layer_freq=[int(m) for m in cfg.moe_layers()],
            moe_ffn_hidden_size=cfg.moe_ffn_hidden_size, moe_router_topk=cfg.moe_topk,
            moe_shared_expert_intermediate_size=cfg.shared_expert_ffn_hidden_size or None,
            moe_router_score_function=cfg.router_score, moe_router_enable_expert_bias=cfg.router_expert_bias,
            moe_router_bias_update_rate=1e-3, moe_router_num_groups=cfg.router_num_groups,
            moe_router_group_topk=cfg.router_group_topk, moe_router_topk_scaling_factor=cfg.routed_scaling_factor,
            # softmax routers: top-k then softmax == softmax, top-k, renormalise (norm_topk_prob)
            moe_router_pre_softmax=cfg.router_score == "softmax" and not cfg.norm_topk_prob,
            moe_router_load_balancing_type="none", moe_aux_loss_coeff=0.0, moe_router_dtype="fp32",
            moe_token_dispatcher_type="alltoall", moe_grouped_gemm=False, moe_permute_fusion=False,
            moe_shared_expert_overlap=False, expert_model_parallel_size=layout.ep,
            expert_tensor_parallel_size=layout.expert_tp,
        )
    return TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_heads, num_query_groups=cfg.num_kv_heads, kv_channels=cfg.head_dim,
        normalization="RMSNorm", layernorm_epsilon=cfg.norm_eps, qk_layernorm=cfg.qk_norm,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=cfg.qkv_bias,
        hidden_dropout=0.0, attention_dropout=0.0, bias_dropout_fusion=False, apply_rope_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(), perform_initialization=True, init_method_std=cfg.init_std,
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp, pipeline_dtype=dtype,
        context_parallel_size=layout.cp, sequence_parallel=layout.use_sequence_parallel,
        # instruction batches are padded per micro-batch: pipeline stages exchange shapes first
        variable_seq_lengths=layout.pp > 1,
        **moe,
    )


class LladaModel(nn.Module):
    """One pipeline stage of the model (the whole model when pp = 1): the first stage embeds, the
    last returns logits, the others map hidden states [S, B, H] to hidden states."""

    def __init__(self, cfg: ModelConfig, layout: ParallelLayout | None = None, dtype: torch.dtype = torch.float32):
        from megatron.core import parallel_state

        super().__init__()
        layout = layout or ParallelLayout()
        layout.check_model(cfg.num_layers, cfg.num_experts, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size)
        self.cfg, self.layout = cfg, layout
        self.pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
        self.post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        tcfg = transformer_config(cfg, layout, dtype)
        # Builds every layer's spec from moe_layer_freq, then keeps this stage's slice.
        spec = get_gpt_decoder_block_spec(tcfg, use_transformer_engine=False, normalization="RMSNorm")
        for layer_spec in spec.layer_specs:
            layer_spec.submodules.self_attention.submodules.core_attention = core_attention_class(cfg.attention_backend)
        self.gpt = GPTModel(
            config=tcfg, transformer_layer_spec=spec, vocab_size=cfg.vocab_size, max_sequence_length=cfg.max_position,
            pre_process=self.pre_process, post_process=self.post_process,
            share_embeddings_and_output_weights=cfg.tie_embeddings,
            position_embedding_type="rope", rotary_percent=cfg.rotary_percent, rotary_base=int(cfg.rotary_base),
        )
        # Same state, one overridden method: RoPE positions from position_ids (see module doc).
        # Every pipeline stage computes its own rotary table, so every stage gets the override.
        self.gpt.rotary_pos_emb.__class__ = IndexedRotaryEmbedding
        self._logits_len: int | None = None
        # the sequence is sharded along S under sequence / context parallelism: a prefix is not local there
        self._can_trim = not (self.gpt.config.sequence_parallel or layout.cp > 1)
        if self.post_process:
            self.gpt.output_layer.register_forward_pre_hook(self._trim_to_logits_len)

    def _trim_to_logits_len(self, module, args):
        if self._logits_len is None or not self._can_trim:
            return None
        return (args[0][: self._logits_len], *args[1:])  # hidden states [S, B, H]

    @property
    def module(self):
        """What megatron's schedules unwrap to find config / set_input_tensor (not a submodule:
        registering it would duplicate every state-dict key)."""
        return self.gpt

    @contextmanager
    def kv_cache(self):
        """Decode with cached keys/values of finished blocks (see llada_core.sampler)."""
        cache = KVCache()
        attentions = [layer.self_attention.core_attention for layer in self.gpt.decoder.layers]
        if not all(hasattr(a, "kv_cache") for a in attentions):
            raise NotImplementedError(f"attention_backend={self.cfg.attention_backend!r} has no KV cache")
        for a in attentions:
            a.kv_cache = cache
        try:
            yield cache
        finally:
            for a in attentions:
                a.kv_cache = None

    def forward(self, input_ids: Tensor, position_ids: Tensor, allowed: Tensor,
                mask_noise: tuple | None = None, logits_len: int | None = None) -> Tensor:
        """mask_noise = (mask_id, std, one generator per row) adds Gaussian noise to [MASK] embeddings.
        logits_len: the logits of the first logits_len positions are enough (the output may still hold
        all S where the sequence is sharded; callers slice)."""
        if not torch.equal(position_ids, position_ids[:1].expand_as(position_ids)):
            raise ValueError("every row of a batch must use the same position_ids")
        decoder_input = None
        if mask_noise is not None and self.pre_process:  # later stages receive the noised activations
            mask_id, std, generators = mask_noise
            emb = self.gpt.embedding(input_ids=input_ids, position_ids=position_ids)  # [S, B, H]; S/tp under SP
            first = 0
            if self.gpt.config.sequence_parallel:  # this rank's slice of the sequence
                from megatron.core import parallel_state

                first = parallel_state.get_tensor_model_parallel_rank() * emb.shape[0]
            decoder_input = add_mask_embedding_noise(emb.transpose(0, 1), input_ids, mask_id, std, generators,
                                                     first).transpose(0, 1)
        rotary = self.gpt.rotary_pos_emb
        rotary.positions, self._logits_len = position_ids[0], logits_len
        try:
            return self.gpt(input_ids, position_ids, attention_mask=~allowed[:, None], decoder_input=decoder_input,
                            runtime_gather_output=True)
        finally:
            rotary.positions = self._logits_len = None
