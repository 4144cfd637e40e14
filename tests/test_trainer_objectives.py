"""Every objective through the shared trainer (1 rank, in-process): SFT, CAP, DPO with its frozen
reference, plus the consolidated export that hands a stage's weights to the next."""

import pytest
import torch.distributed as dist
from trainer_fixtures import make_dataset, make_instruct_dataset, stage_dict

from llada_core.trainer.config import TrainingConfig

pytestmark = pytest.mark.slow  # builds megatron models


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    pretrain = make_dataset(root)
    return pretrain, make_instruct_dataset(root, "sft", pretrain), make_instruct_dataset(root, "dpo", pretrain)


def run(stage: dict, tmp_path):
    from llada_core.trainer.loop import Trainer, local_checkpoints

    if not dist.is_initialized():
        from llada_core.parallel.setup import init_single_process

        init_single_process()
    trainer = Trainer(TrainingConfig.model_validate(stage))
    return trainer, trainer.run(local_checkpoints(tmp_path / "ckpts"))


@pytest.mark.parametrize("objective", ["sft", "cap"])
def test_sft_and_cap_train(datasets, tmp_path, objective):
    _, sft, _ = datasets
    trainer, history = run(stage_dict(sft, name=objective, objective=objective, steps=3, micro_batch=4,
                                      optim={"lr": 3e-3, "decay": "constant"}), tmp_path)
    assert len(history) == 3 and all(h["loss"] > 0 for h in history)
    assert history[0]["response_tokens"] > 0 and "grad_norm" in history[0]
    if objective == "cap":
        assert "conf_loss" in history[-1]


def test_dpo_with_frozen_reference_and_consolidated_handoff(datasets, tmp_path):
    from llada_core.consolidate import consolidate
    from llada_core.data.tokenizer import load_tokenizer

    pretrain, sft, dpo = datasets
    trainer, _ = run(stage_dict(sft, name="sft", objective="sft", steps=2), tmp_path / "a")
    trainer.save(tmp_path / "sft-sharded")  # the hand-off: streamed into one consolidated checkpoint
    consolidate(tmp_path / "sft-sharded", str(tmp_path / "sft-final"), trainer.model.cfg,
                load_tokenizer(f"{pretrain}/tokenizer"), {})
    stage = stage_dict(dpo, name="dpo", objective={"kind": "dpo", "block_size": 8, "beta": 0.1}, steps=2,
                       init_checkpoint=str(tmp_path / "sft-final"), reference_checkpoint=str(tmp_path / "sft-final"))
    stage.pop("model_overrides", None)
    dpo_trainer, history = run(stage, tmp_path / "b")
    # policy == reference at step 0: the margin is exactly 0 and the loss is log 2
    assert (history[0]["margin"] == pytest.approx(0.0, abs=1e-6)
            and history[0]["loss"] == pytest.approx(0.6931, abs=1e-3))
    ref_params = [p for p in dpo_trainer.reference.parameters()]
    assert all(not p.requires_grad for p in ref_params)


def test_cpt_phases_as_three_nodes_are_one_trajectory(datasets, tmp_path):
    """warm-up -> stable -> decay as three trainers, each continuing the previous one's training
    checkpoint (init_state), give the losses and Adam moments of one uninterrupted run of the same
    WSD schedule: weights, moments, Adam's step count, data position and the step count the mask
    noise is scheduled on all carry over. With init_checkpoint instead (weights only) they do not."""
    import torch

    from llada_core.consolidate import consolidate
    from llada_core.data.tokenizer import load_tokenizer
    from llada_core.schedule import WSDConfig

    pretrain = datasets[0]
    schedule = {"seq_len": 32, "warmup_block_sizes": [4, 8], "warmup_tokens_per_block": 512, "stable_tokens": 512,
                "decay_min_block": 8, "decay_tokens_per_block": 512, "lr": 2e-3, "min_lr": 2e-4,
                "lr_warmup_tokens": 512}
    spans = {}
    for seg in WSDConfig.model_validate(schedule).build().describe():
        spans.setdefault(seg["phase"], [seg["start"], seg["end"]])[1] = seg["end"]
    per_step = 4 * 2 * 32  # micro_batch x grad_accum x seq_len
    assert [(b - a) // per_step for a, b in spans.values()] == [6, 2, 4]
    base = stage_dict(pretrain, objective={"kind": "cpt", "block_size": 8, "mask_noise_std": 0.5,
                                           "mask_noise_steps": 7}, schedule=schedule, checkpoint_every=100)

    def moments(trainer) -> list[torch.Tensor]:
        return [t for o in trainer.opt.chained_optimizers for st in o.optimizer.state.values()
                for t in (st["exp_avg"], st["exp_avg_sq"])]

    whole, one_run = run(base | {"steps": 12}, tmp_path / "whole")
    for carry in ("init_state", "init_checkpoint"):
        history, previous = [], None
        for phase, (start, end) in spans.items():
            stage = base | {"name": phase, "steps": (end - start) // per_step, "schedule_offset_tokens": start}
            if previous:
                if carry == "init_state":
                    stage["init_state"] = str(previous)
                else:  # the weights only, consolidated
                    stage["init_checkpoint"] = consolidate(previous, f"{previous}-c", whole.model.cfg,
                                                           load_tokenizer(f"{pretrain}/tokenizer"), {})
            trainer, part = run(stage, tmp_path / carry / phase)
            history += part
            previous = trainer.save(tmp_path / carry / f"{phase}-final")
        losses = [h["loss"] for h in history]
        if carry == "init_state":
            assert losses == pytest.approx([h["loss"] for h in one_run], abs=1e-6)
            assert [h["samples"] for h in history] == [h["samples"] for h in one_run]
            assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(moments(trainer), moments(whole), strict=True))
        else:  # fresh Adam and data from the start at each node: another trajectory
            assert losses[6] != pytest.approx(one_run[6]["loss"], abs=1e-4)
