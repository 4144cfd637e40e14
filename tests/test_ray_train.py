"""A real Ray Train run: 2 CPU workers (DP=2), one killed mid-run, finished via FailureConfig from
the latest registered checkpoint, with the same final loss as the uninterrupted 1-rank run."""

import pytest
from trainer_fixtures import make_dataset, run_worker, stage_dict

from llada_core.trainer.config import TrainingConfig

pytestmark = pytest.mark.slow  # Ray cluster + Ray Train worker groups


def spawn_one_rank(stage: dict, out):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_worker, args=(1, port, stage, str(out), "run"), nprocs=1, join=True)
    return json.loads((out / "history-run.json").read_text())


def test_worker_killed_mid_run_finishes_via_failure_config(ray_local, tmp_path):
    from llada_core.trainer.ray_launch import run_training

    data = make_dataset(str(tmp_path))
    stage = TrainingConfig.model_validate(stage_dict(data, name="ray-dp2", steps=4, checkpoint_every=1, micro_batch=2,
                                                  layout={"world_size": 2}))
    marker = tmp_path / "killed-once"

    def kill_rank_1_once_at_step_3(trainer, metrics):  # nested: Ray pickles it by value to the workers
        import os

        import torch.distributed as dist

        if dist.get_rank() == 1 and trainer.step == 3 and not os.path.exists(marker):
            open(marker, "w").close()  # fail once: the restarted group must get past this step
            os._exit(1)

    seen, replayed = [], []
    result = run_training(stage, str(tmp_path / "runs"), max_failures=1, on_step=kill_rank_1_once_at_step_3,
                       on_metrics=lambda step, m: (replayed if m.get("replayed") else seen).append(step))
    assert set(seen) == {1, 2, 3, 4} and seen[-1] == 4  # every step reached the driver (redone ones again)
    # the restarted group replays the restored checkpoint's metrics (a dead driver's logging gap), then goes on
    r = len(replayed)  # the restored checkpoint's step
    assert r >= 1 and replayed == list(range(1, r + 1)) and seen[-(4 - r):] == list(range(r + 1, 5))
    assert marker.exists()  # the worker really died once
    assert result.error is None and result.metrics["step"] == 4
    assert result.checkpoint is not None
    uninterrupted = spawn_one_rank(stage.model_dump(mode="json") | {"layout": {"world_size": 1}, "micro_batch": 4},
                                   tmp_path)
    assert result.metrics["loss"] == pytest.approx(uninterrupted[-1]["loss"], abs=1e-5)
    with result.checkpoint.as_directory() as d:
        import json
        import os

        state = json.loads(open(os.path.join(d, "trainer_state.json")).read())
        assert state["step"] == 4 and state["samples"] == 4 * 8
        assert any(name.endswith(".distcp") for name in os.listdir(d))


@pytest.mark.parametrize("layout, overrides, message", [
    ({"world_size": 4, "pp": 4}, ["num_layers=6"], "num_layers=6 is not divisible by pp=4"),
    ({"world_size": 2, "ep": 2}, ["num_experts=15", "router_num_groups=null", "router_group_topk=null"],
     "num_experts=15 is not divisible by ep=2"),
    ({"world_size": 4, "tp": 4}, ["num_kv_heads=2"], "num_kv_heads=2 is not divisible by tp=4"),
])
def test_bad_layout_fails_before_any_worker_starts(tmp_path, monkeypatch, layout, overrides, message):
    import ray

    from llada_core.trainer import ray_launch

    monkeypatch.setattr(ray_launch, "TorchTrainer", lambda *a, **k: pytest.fail("a worker group was created"))
    stage = TrainingConfig.model_validate(stage_dict(make_dataset(str(tmp_path)), layout=layout,
                                                     model_overrides=overrides))
    started = ray.is_initialized()
    with pytest.raises(ValueError, match=message):
        ray_launch.run_training(stage, str(tmp_path / "runs"))
    assert ray.is_initialized() == started  # failed before even connecting to Ray
