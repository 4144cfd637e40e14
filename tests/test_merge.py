import pytest
import torch

from llada_core.checkpoint import load_checkpoint, save_checkpoint
from llada_core.data.tokenizer import train_bpe
from llada_core.merge import merge_top_k, select_top_k
from llada_core.model.config import load_preset
from llada_core.model.hf_config import CheckpointError
from llada_core.model.hf_io import expected_shapes


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tok = train_bpe(iter(["merge test text"] * 5), 280)
    cfg = load_preset("tiny", [f"vocab_size={tok.vocab_size}", "num_layers=2"])
    root = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for i, metric in enumerate([3.0, 1.0, 2.0, 5.0]):
        state = {name: torch.full(shape, float(i)) for name, shape in expected_shapes(cfg).items()}
        paths[str(save_checkpoint(root / f"c{i}", cfg, state.items(), tok, {"step": i}))] = metric
    return paths


def test_select_top_k_by_metric():
    assert select_top_k({"a": 3.0, "b": 1.0, "c": 2.0}, 2) == ["b", "c"]
    assert select_top_k({"a": 3.0, "b": 1.0, "c": 2.0}, 2, lower_is_better=False) == ["a", "c"]
    with pytest.raises(CheckpointError, match="no checkpoints"):
        select_top_k({}, 3)


def test_merge_averages_the_k_best(checkpoints, tmp_path):
    meta = merge_top_k(checkpoints, tmp_path / "merged", k=3)
    cfg, state, _, saved_meta = load_checkpoint(tmp_path / "merged")
    # best three: c1 (1.0), c2 (2.0), c0 (3.0) -> values 1, 2, 0 -> mean 1.0
    assert all(torch.equal(t, torch.ones_like(t)) for t in state.values())
    assert ([m["metric"] for m in meta["merged_from"]] == [1.0, 2.0, 3.0]
            == [m["metric"] for m in saved_meta["merged_from"]])


def test_merge_refuses_mismatched_models(checkpoints, tmp_path):
    tok = train_bpe(iter(["other"] * 5), 280)
    cfg = load_preset("tiny", [f"vocab_size={tok.vocab_size}", "num_layers=2", "hidden_size=64", "head_dim=16"])
    state = {name: torch.zeros(shape) for name, shape in expected_shapes(cfg).items()}
    odd = save_checkpoint(tmp_path / "odd", cfg, state.items(), tok, {})
    with pytest.raises(CheckpointError, match="differs"):
        merge_top_k({**checkpoints, str(odd): 0.5}, tmp_path / "m", k=2)


def test_streamed_merge_equals_an_in_memory_average(tmp_path, monkeypatch):
    import llada_core.merge as merge

    monkeypatch.setattr(merge, "CHUNK_BYTES", 4096)  # a large tensor is averaged in many row chunks
    tok = train_bpe(iter(["merge test text"] * 5), 280)
    cfg = load_preset("tiny", [f"vocab_size={tok.vocab_size}", "num_layers=2"])
    g = torch.Generator().manual_seed(3)
    states = [{n: torch.randn(s, generator=g) for n, s in expected_shapes(cfg).items()} for _ in range(3)]
    paths = {str(save_checkpoint(tmp_path / f"r{i}", cfg, st.items(), tok, {})): float(i)
             for i, st in enumerate(states)}
    merge_top_k(paths, tmp_path / "merged", k=3)
    _, merged, _, _ = load_checkpoint(tmp_path / "merged")
    for name in merged:  # the oracle: all three in memory, averaged at once
        stacked = torch.stack([st[name] for st in states])
        assert merged[name].dtype == torch.float32
        assert torch.equal(merged[name], stacked.double().mean(0).float())  # the exact mean, rounded once
        scale = stacked.abs().amax(0)  # an fp32 average is off by a few roundings of its inputs' size
        assert ((merged[name] - stacked.mean(0)).abs() <= 4 * 1.2e-7 * scale).all()
