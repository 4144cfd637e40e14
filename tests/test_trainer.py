"""The shared trainer: exact resume, and TP / EP / DP layouts against the 1-rank run (spawned gloo
worker groups), checkpoint resharding TP=2 -> TP=1 and EP=2 -> EP=1."""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from trainer_fixtures import make_dataset, make_instruct_dataset, run_worker, stage_dict

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_ray")]  # multi-process worker groups


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world, stage, out, mode="run"):
    mp.spawn(run_worker, args=(world, free_port(), stage, str(out), mode), nprocs=world, join=True)
    return json.loads((out / f"history-{mode}.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory, data):
    """Identical starting weights for every layout (TP=2 initialises differently from TP=1)."""
    from llada_core.checkpoint import save_checkpoint
    from llada_core.data.tokenizer import load_tokenizer
    from llada_core.model.build import LladaModel
    from llada_core.model.config import load_preset, pad_vocab
    from llada_core.parallel.setup import init_single_process

    init_single_process(seed=11)
    tok = load_tokenizer(f"{data}/tokenizer")
    cfg = load_preset("tiny", [f"vocab_size={pad_vocab(tok.vocab_size)}", "max_position=128"])
    state = {k: v for k, v in LladaModel(cfg).state_dict().items() if not k.endswith("_extra_state")}
    return str(save_checkpoint(tmp_path_factory.mktemp("init") / "ckpt", cfg, state.items(), tok, {}))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, init_ckpt):
    out = tmp_path_factory.mktemp("ref")
    # [MASK]-embedding noise in the first 2 of 3 steps: each layout must add the same noise to each sample;
    # the T2T stream of token editing on: the same random tokens per sample, the same loss over them
    objective = {"kind": "cpt", "block_size": 8, "mask_noise_std": 0.1, "mask_noise_steps": 2, "edit": {"ratio": 0.1}}
    stage = stage_dict(data, objective, init_checkpoint=init_ckpt, model_overrides=["max_position=128"], steps=3)
    return stage, spawn(1, stage, out, mode="save"), out


@pytest.mark.parametrize("layout, micro_batch", [
    ({"world_size": 2}, 2),  # DP=2: half the micro-batch per rank, same global batch
    ({"world_size": 2, "tp": 2}, 4),
    ({"world_size": 2, "ep": 2}, 2),  # EP=2 on 2 ranks is also DP=2 for the dense parts
    ({"world_size": 2, "pp": 2}, 4),  # 1F1B over 2 stages, 2 micro-batches
])
def test_layouts_match_one_rank_for_three_steps(reference, tmp_path, layout, micro_batch):
    stage, ref, _ = reference
    assert all(h["edit_tokens"] > 0 for h in ref)  # the T2T stream is really on
    got = spawn(2, stage | {"layout": layout, "micro_batch": micro_batch}, tmp_path)
    for step, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), (step, layout)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (step, layout)


@pytest.mark.parametrize("layout, micro_batch", [({"world_size": 2, "tp": 2}, 4), ({"world_size": 2, "ep": 2}, 2),
                                                ({"world_size": 2, "pp": 2}, 4)])
def test_checkpoint_saved_under_a_layout_resumes_under_one_rank(reference, tmp_path, layout, micro_batch):
    stage, ref, _ = reference
    spawn(2, stage | {"steps": 2, "layout": layout, "micro_batch": micro_batch}, tmp_path, mode="save")
    (tmp_path / "ckpt-out").rename(tmp_path / "ckpt-in")
    resumed = spawn(1, stage, tmp_path, mode="resume")  # step 3 of the 1-rank reference, from step 2's checkpoint
    assert len(resumed) == 1 and resumed[0]["samples"] == ref[2]["samples"]
    assert resumed[0]["loss"] == pytest.approx(ref[2]["loss"], abs=1e-5)
    # streamed from the sharded checkpoint in one process == gathered from the ranks, bit for bit
    from safetensors.torch import load_file

    from llada_core.consolidate import consolidated_tensors

    streamed = dict(consolidated_tensors(tmp_path / "ckpt-in"))
    gathered = load_file(tmp_path / "gathered-saved.safetensors")
    assert streamed.keys() == gathered.keys() and all(torch.equal(streamed[k], gathered[k]) for k in gathered), layout
    # the sharded checkpoint loaded under 1 rank gives the same logits as the model that saved it
    saved, loaded = (logits_of(consolidated(tmp_path / name, stage)) for name in ("ckpt-in", "ckpt-loaded"))
    assert torch.equal(saved, loaded), (layout, (saved - loaded).abs().max())


def test_a_checkpoint_saved_under_tp2_continues_under_ep2_with_the_same_logits(reference, tmp_path):
    """The node-to-node hand-off (a training checkpoint, `init_state`) across a layout change: each
    EP=2 rank reads its slices of the TP=2 checkpoint; the model it holds is the one that was saved."""
    stage, _, _ = reference
    spawn(2, stage | {"steps": 2, "layout": {"world_size": 2, "tp": 2}}, tmp_path, mode="save")
    (tmp_path / "ckpt-out").rename(tmp_path / "ckpt-in")
    spawn(2, stage | {"steps": 3, "layout": {"world_size": 2, "ep": 2}, "micro_batch": 2}, tmp_path, mode="resume")
    saved, loaded = (logits_of(consolidated(tmp_path / name, stage)) for name in ("ckpt-in", "ckpt-loaded"))
    assert torch.equal(saved, loaded), (saved - loaded).abs().max()


# CAP's loss is SFT's plus a confidence term: both run; with the T2T stream of token editing on
@pytest.mark.parametrize("objective", [{"kind": "cap", "block_size": 8, "edit": {"ratio": 0.2}}])
def test_pipeline_parallel_instruction_objectives_match_one_rank(data, init_ckpt, tmp_path, objective):
    """PP=2 runs the unchanged objective: inputs captured for the first stage, loss on the last."""
    sft = make_instruct_dataset(str(tmp_path), "sft", data)
    stage = stage_dict(sft, name=objective["kind"], objective=objective, init_checkpoint=init_ckpt, steps=2,
                       micro_batch=2)
    (tmp_path / "one").mkdir()
    (tmp_path / "pp").mkdir()
    ref = spawn(1, stage, tmp_path / "one")
    assert all(h["edit_tokens"] > 0 for h in ref)
    got = spawn(2, stage | {"layout": {"world_size": 2, "pp": 2}}, tmp_path / "pp")
    for step, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), step
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), step


def consolidated(directory, stage: dict) -> str:
    """A training checkpoint of the init checkpoint's model, consolidated (streamed)."""
    from llada_core.checkpoint import read_checkpoint_header
    from llada_core.consolidate import consolidate
    from llada_core.data.tokenizer import load_tokenizer

    cfg, _ = read_checkpoint_header(stage["init_checkpoint"])
    return consolidate(directory, f"{directory}-consolidated", cfg, load_tokenizer(f"{stage['data']}/tokenizer"), {})


def logits_of(path) -> torch.Tensor:
    from llada_core.evaluate import load_model
    from llada_core.masks import document_mask

    model, _ = load_model(str(path))
    ids = torch.arange(64).reshape(2, 32) % 300
    pos = torch.arange(32).expand(2, 32)
    with torch.no_grad():
        return model(ids, pos, document_mask(torch.zeros(2, 32, dtype=torch.long)))
