"""Core attention for megatron's SelfAttention, chosen by config (`attention_backend`).

`sdpa` (default, CPU and GPU): torch scaled_dot_product_attention with an arbitrary per-sample
boolean mask. `flex` (GPU): flex_attention with a BlockMask built from that same dense mask
tensor (not from the predicates of llada_core.masks), skipping empty blocks. flash-attn is not
offered: it cannot express the block-diffusion (Eq. 3) mask. megatron passes masks as True = masked
OUT; SDPA wants True = may attend: the inversion happens here and only here. GQA: megatron hands
over un-expanded KV heads ([S, B, groups, D]); query head j uses KV group j // (heads / groups),
as megatron and HF do.
Every query must see at least one key (all our masks keep the diagonal); a fully masked row
would come out as zeros on CPU SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import divide


class KVCache:
    """Keys/values of finished (clean) blocks for decoding. Under the block-causal layout a clean
    block never attends to anything after it, so its K/V are final once written. A forward called
    through `run(..., commit=n)` sees cached + new keys; the first n new tokens are then kept."""

    def __init__(self):
        self.length = 0  # tokens cached, identical in every layer
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._commit = 0

    def extend(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past = self._kv.get(layer)
        if past is not None:
            key, value = torch.cat([past[0], key]), torch.cat([past[1], value])
        if self._commit:
            keep = self.length + self._commit
            self._kv[layer] = (key[:keep], value[:keep])
        return key, value

    def run(self, model, input_ids, position_ids, allowed, commit: int = 0):
        self._commit = commit
        try:
            out = model(input_ids, position_ids, allowed)
        finally:
            self._commit = 0
        self.length += commit
        return out


class SDPACoreAttention(MegatronModule):
    kv_cache: KVCache | None = None  # set while decoding with a cache (LladaModel.kv_cache)

    def __init__(self, config, layer_number, attn_mask_type, attention_type="self", attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups, tp)
        self.attn_mask_type = attn_mask_type
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.layer_number = layer_number

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention takes a dense mask, not packed-sequence params or a bias")
        if self.kv_cache is not None:  # keys arrive rotated: cached keys stay valid
            key, value = self.kv_cache.extend(self.layer_number, key, value)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [B, heads, S, D]
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        if attention_mask is not None:
            allowed = ~attention_mask.to(torch.bool)[:, 0]  # [B, Sq, Sk]
        elif mask_type == AttnMaskType.causal:
            allowed = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool,
                                 device=q.device).tril(k.shape[2] - q.shape[2])[None]
        else:
            allowed = None
        out = self.attend(q, k, v, allowed)
        b, h, s, d = out.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, h * d)

    def attend(self, q, k, v, allowed):
        if self.heads != self.groups:
            k = k.repeat_interleave(self.heads // self.groups, dim=1)
            v = v.repeat_interleave(self.heads // self.groups, dim=1)
        mask = None if allowed is None else allowed[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                              dropout_p=self.dropout if self.training else 0.0)


class FlexCoreAttention(SDPACoreAttention):
    """flex_attention with a BlockMask built from the same boolean mask (GPU backend): blocks with no
    allowed (query, key) pair are skipped, which is most of the [x_t ; x_0] block-diffusion mask. Needs
    torch.compile for its fused kernel (and for a backward), so it is for CUDA processes; the CPU
    compat layer disables dynamo."""

    def attend(self, q, k, v, allowed):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if self.training and self.dropout:
            raise ValueError("the flex backend does not implement attention dropout")
        block_mask = None
        if allowed is not None:
            batch = allowed.shape[0]
            allowed = allowed.expand(q.shape[0], -1, -1) if batch == 1 else allowed
            block_mask = create_block_mask(lambda b, h, qi, ki: allowed[b, qi, ki], q.shape[0], None,
                                           q.shape[2], k.shape[2], device=q.device)
        return _compiled(flex_attention)(q, k, v, block_mask=block_mask, scale=self.scale,
                                         enable_gqa=self.heads != self.groups)


_COMPILED: dict = {}


def _compiled(fn):
    if torch.cuda.is_available() and fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED.get(fn, fn)


def core_attention_class(backend: str):
    if backend == "sdpa":
        return SDPACoreAttention
    if not torch.cuda.is_available():
        raise ValueError(f"attention_backend={backend!r} needs a GPU; use 'sdpa' on CPU")
    if backend == "flex":
        return FlexCoreAttention
    raise ValueError(f"unknown attention_backend={backend!r}; use 'sdpa' or 'flex'")
