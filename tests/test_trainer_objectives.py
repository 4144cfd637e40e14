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
