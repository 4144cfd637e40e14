"""A minimal pure-torch transformer that honours an arbitrary boolean attention mask: the
independent oracle for mask semantics in objective tests (no megatron involved)."""

import torch
import torch.nn.functional as F
from torch import nn


class TinyAttentionLM(nn.Module):
    def __init__(self, vocab=32, hidden=32, heads=2, layers=2, max_pos=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.heads = heads
        self.emb = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_pos, hidden)
        self.qkv = nn.ModuleList(nn.Linear(hidden, 3 * hidden) for _ in range(layers))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
                                 for _ in range(layers))
        self.out = nn.Linear(hidden, vocab)

    def forward(self, input_ids, position_ids, allowed, logits_len=None):
        x = self.emb(input_ids) + self.pos(position_ids)
        B, S, H = x.shape
        for qkv, mlp in zip(self.qkv, self.mlp, strict=True):
            q, k, v = qkv(x).view(B, S, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
            x = x + a.transpose(1, 2).reshape(B, S, H)
            x = x + mlp(x)
        return self.out(x[:, :logits_len])  # logits_len: the denoiser's prefix (LladaModel's interface)
