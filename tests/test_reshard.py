import itertools

import pytest
import torch

from llada_core.model.config import load_preset
from llada_core.model.hf_io import expected_shapes
from llada_core.parallel.reshard import RankCoords, shard_state, unshard_state


def all_coords(tp=1, pp=1, ep=1, etp=None):
    etp = etp or tp
    out = []
    for t, p, e in itertools.product(range(tp), range(pp), range(ep)):
        out.append(RankCoords(tp=t, tp_size=tp, pp=p, pp_size=pp, ep=e, ep_size=ep, etp=t % etp, etp_size=etp))
    return out


@pytest.mark.parametrize("layout", [dict(tp=2), dict(ep=2), dict(pp=2), dict(tp=2, ep=2),
                                    dict(tp=2, pp=2, ep=4, etp=1)])
def test_shard_then_unshard_is_identity(layout):
    cfg = load_preset("tiny", ["vocab_size=64", "qkv_bias=true"])
    g = torch.Generator().manual_seed(0)
    full = {n: torch.randn(s, generator=g) for n, s in expected_shapes(cfg).items()}
    shards = {c: shard_state(full, cfg, c) for c in all_coords(**layout)}
    back = unshard_state(shards, cfg, list(full))
    assert all(torch.equal(back[n], full[n]) for n in full)
    tp = layout.get("tp", 1)
    any_rank = next(iter(shards.values()))
    if tp > 1 and "gpt.embedding.word_embeddings.weight" in any_rank:
        assert any_rank["gpt.embedding.word_embeddings.weight"].shape[0] == 64 // tp
    per_rank = cfg.num_experts // layout.get("ep", 1)
    for shard in shards.values():  # every rank holds E/ep experts in each of its MoE layers
        routers = sum(k.endswith("mlp.router.weight") for k in shard)
        experts = sum(".local_experts." in k and k.endswith("linear_fc1.weight") for k in shard)
        assert routers > 0 and experts == routers * per_rank


def test_gated_fc1_split_keeps_gate_and_up_halves():
    cfg = load_preset("tiny", ["vocab_size=64"])
    full = {n: torch.zeros(s) for n, s in expected_shapes(cfg).items()}
    fc1 = "gpt.decoder.layers.0.mlp.linear_fc1.weight"
    full[fc1] = torch.arange(full[fc1].shape[0], dtype=torch.float)[:, None].expand_as(full[fc1]).clone()
    ffn = cfg.ffn_hidden_size
    r1 = shard_state(full, cfg, RankCoords(tp=1, tp_size=2, etp=1, etp_size=2))[fc1][:, 0]
    expected = torch.cat([torch.arange(ffn // 2, ffn), torch.arange(ffn + ffn // 2, 2 * ffn)]).float()
    assert torch.equal(r1, expected)


@pytest.mark.parametrize("layout", [dict(tp=2), dict(ep=2), dict(pp=2), dict(tp=2, pp=2, ep=4, etp=1)])
def test_each_rank_reads_only_its_slices_from_the_consolidated_file(tmp_path, layout):
    """iter_shard on our lazy slices (plain reads of a safetensors file) == shard_state of the whole
    state in memory, and reads no more bytes than the rank holds."""
    from safetensors.torch import save_file

    from llada_core.parallel.reshard import iter_shard
    from llada_core.safetensors_parts import PartReader

    cfg = load_preset("tiny", ["vocab_size=64", "qkv_bias=true"])
    g = torch.Generator().manual_seed(1)
    full = {n: torch.randn(s, generator=g) for n, s in expected_shapes(cfg).items()}
    save_file(full, str(tmp_path / "w.safetensors"))
    f = PartReader(tmp_path / "w.safetensors")
    for c in all_coords(**layout):
        want = shard_state(full, cfg, c)
        read = {"bytes": 0}

        def lazy(name, f=f, read=read):  # counts what indexing the slice returns
            s = f.lazy(name)

            class Counted:
                def get_shape(self):
                    return s.get_shape()

                def __getitem__(self, index):
                    t = s[index]
                    read["bytes"] += t.numel() * t.element_size()
                    return t

            return Counted()

        got = dict(iter_shard(lazy, list(full), cfg, c))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), c
        assert read["bytes"] == sum(t.numel() * t.element_size() for t in want.values())
