"""What the durable-DAG layer costs, measured side by side in one run (not a timed test):

(a) a fully cached re-run of a finished pipeline: wall time (and it must train nothing);
(b) per-node overhead = node wall time - time inside the training steps, for a training node run by
    the DAG, next to a bare `TorchTrainer.fit()` (run_training) of the same stage config.

  python bench/orchestration.py [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    from llada_core.trainer.config import TrainingConfig
    from llada_core.trainer.ray_launch import run_training
    from pipelines import runs
    from pipelines.run_store import RunStore

    root = Path(tempfile.mkdtemp(prefix="llada-bench-orch-"))
    corpus = root / "corpus"
    corpus.mkdir()
    import inspect
    import json

    (corpus / "a.txt").write_text(inspect.getsource(json) * 3)
    stage = {"name": "cpt", "objective": {"kind": "cpt", "block_size": 32}, "data": "${prepare.dataset}",
             "steps": args.steps, "micro_batch": 4, "checkpoint_every": 10, "model": "tiny"}
    nodes = [
        {"name": "prepare", "stage": "stages.llada:prepare_pretrain",
         "config": {"input": str(corpus), "out": "${out}", "seq_len": 128,
                    "tokenizer": {"train": True, "vocab_size": 1024}, "val_fraction": 0.05, "num_workers": 1}},
        {"name": "train", "stage": "stages.llada:train",
         "config": {"training": stage, "out": "${out}", "cpus_per_worker": 2}},
    ]
    recipe = root / "bench.yaml"
    recipe.write_text(yaml.safe_dump({"name": "bench", "workdir": str(root / "work"), "nodes": nodes}))

    t0 = time.perf_counter()
    run1, store_root, rec = runs.start(str(recipe), say=lambda m: None)
    first = time.perf_counter() - t0
    from mlflow import MlflowClient

    store = RunStore(store_root)
    doc = store.run(run1)
    client = MlflowClient(doc["tracking_uri"])
    loop = sum(m.value for m in client.get_metric_history(rec["train"]["mlflow_run_id"], "step_time"))
    dag_node = rec["train"]["seconds"]

    def bare_fit(name: str) -> tuple[float, float]:
        cfg = TrainingConfig.model_validate(stage | {"data": rec["prepare"]["outputs"]["dataset"]["uri"], "name": name})
        step_times = []
        t0 = time.perf_counter()
        run_training(cfg, str(root / "bare"), cpus_per_worker=2, progress=False,
                  on_metrics=lambda step, m: step_times.append(m["step_time"]))
        return time.perf_counter() - t0, sum(step_times)

    bare, bare_steps = bare_fit("bare")  # with the local poll interval (llada_core.cluster)
    local_poll = os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "2.0"  # Ray's default, read at each fit()
    slow, slow_steps = bare_fit("bare-default-poll")
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = local_poll

    t0 = time.perf_counter()
    run2, _, rec2 = runs.start(str(recipe), say=lambda m: None)
    cached = time.perf_counter() - t0
    assert {r["state"] for r in rec2.values()} == {"SKIPPED-CACHED"}, rec2

    print(f"pipeline first run: {first:.1f} s (2 nodes); fully cached re-run: {cached:.1f} s, trained nothing")
    print(f"training node via the DAG: {dag_node:.1f} s wall, {loop:.1f} s in steps "
          f"-> overhead {dag_node - loop:.1f} s")
    print(f"bare TorchTrainer.fit():   {bare:.1f} s wall, {bare_steps:.1f} s in steps "
          f"-> overhead {bare - bare_steps:.1f} s")
    print(f"overhead ratio DAG / bare: {(dag_node - loop) / max(bare - bare_steps, 1e-9):.2f}x "
          f"(the DAG adds the node task, MLflow logging, consolidated export and output digests)")
    print(f"bare fit with Ray's default 2 s controller poll instead of {local_poll} s: {slow:.1f} s wall, "
          f"overhead {slow - slow_steps:.1f} s -> ratio local poll / default "
          f"{(bare - bare_steps) / max(slow - slow_steps, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
