"""SIGKILL the driver while a training node runs; `llada resume` finishes the run: no node ran twice
(one MLflow child run per node), the training node continued from its checkpoint (first step after
the resume > 1), and its metric history has no gap or duplicate. On local disk the checkpoint Ray
Train would restore is also truncated (a torn upload): the resume falls back to the newest intact
one. Then (S3 only) a re-run is fully cached, the lock refuses a second driver, and lineage
names every node. Once on local disk + SQLite MLflow, once with the run store and Ray Train
checkpoints on S3 (moto server) and a real `mlflow server` process whose artifact store is that S3."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from services import mlflow_server, s3_server

from pipelines.run_store import LockedError, RunStore

# drivers with their own local Ray clusters, Ray Train worker groups
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_ray")]
STEPS = 30


def write_recipe(tmp_path, corpus_dir, tokenizer_dir, store, tracking_uri) -> str:
    stage = {"name": "cpt", "objective": {"kind": "cpt", "block_size": 16}, "data": "${prepare.dataset}",
             "steps": STEPS, "micro_batch": 2, "checkpoint_every": 3, "model": "tiny",
             "model_overrides": ["num_layers=2"]}
    nodes = [
        {"name": "prepare", "stage": "stages.llada:prepare_pretrain",
         "config": {"input": corpus_dir, "out": "${out}", "seq_len": 64, "tokenizer": {"path": tokenizer_dir},
                    "val_fraction": 0.1, "num_workers": 1}},
        {"name": "train", "stage": "stages.llada:train",
         "config": {"training": stage, "out": "${out}", "cpus_per_worker": 1}},
    ]
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump({"name": "resume", "workdir": str(tmp_path / "work"), "store": store,
                                    "tracking_uri": tracking_uri, "artifact_root": str(tmp_path / "artifacts"),
                                    "nodes": nodes}))
    return str(path)


def snapshot(backend, run_id: str) -> tuple[Path, dict]:
    runs = list(Path(backend["store"], "runs", run_id, "train").glob("train-*"))
    path = runs[0] / "checkpoint_manager_snapshot.json" if runs else None
    return (runs[0], json.loads(path.read_text())) if path and path.exists() else (None, {})


def registered(backend, run_id: str) -> int:
    return len(snapshot(backend, run_id)[1].get("checkpoint_results", []))


def tear_latest_checkpoint(backend, run_id: str) -> int:
    """Truncate the largest shard of the checkpoint Ray Train would restore; returns its step."""
    root, snap = snapshot(backend, run_id)
    latest = snap["latest_checkpoint_result"]
    shard = max((root / latest["checkpoint_dir_name"]).glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return int(latest["metrics"]["step"])


def llada(*args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def logged_steps(tracking_uri: str, run_id: str, node: str) -> list[int]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("llada-resume")
    if exp is None:
        return []
    found = client.search_runs([exp.experiment_id],
                               f"tags.`llada.run_id` = '{run_id}' and tags.`llada.node` = '{node}'")
    return [m.step for m in client.get_metric_history(found[0].info.run_id, "loss")] if found else []


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    if request.param == "local":
        yield {"store": str(tmp_path / "store"), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "env": {}}
        return
    with s3_server() as env, mlflow_server(tmp_path / "server.db", "s3://llada/mlartifacts", env) as uri:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            yield {"store": "s3://llada/store", "tracking_uri": uri, "env": env}


def test_sigkill_driver_then_resume(backend, corpus, tokenizer_dir, tmp_path):
    recipe = write_recipe(tmp_path, corpus[0], tokenizer_dir, backend["store"], backend["tracking_uri"])
    env = os.environ | backend["env"] | {"MLFLOW_RUN_ID": "an-inherited-run-id-that-must-not-be-used"}
    run_id = "resume-test"
    driver = llada("run", recipe, "--run-id", run_id, env=env)
    deadline = time.time() + 240
    local = not backend["store"].startswith("s3://")
    while time.time() < deadline and driver.poll() is None:
        logged = len(logged_steps(backend["tracking_uri"], run_id, "train"))
        if logged >= 7 and (not local or registered(backend, run_id) >= 2):  # local: an older checkpoint to fall to
            break
        time.sleep(0.3)
    assert driver.poll() is None, driver.stdout.read()
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    driver.wait()
    store = RunStore(backend["store"])
    assert store.node(run_id, "train")["state"] == "RUNNING"
    (killed_model,) = store.node(run_id, "train")["models"].values()
    killed_at = logged_steps(backend["tracking_uri"], run_id, "train")
    assert 7 <= len(killed_at) < STEPS
    if local:  # as an interrupted upload leaves it: the checkpoint Ray would restore, truncated
        torn = tear_latest_checkpoint(backend, run_id)
    status = subprocess.run([sys.executable, "-m", "pipelines.cli", "status", run_id, "--store", backend["store"],
                             "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert {n["node"]: n["state"] for n in json.loads(status.stdout)["nodes"]}["train"] == "INTERRUPTED"  # not RUNNING

    resumed = llada("resume", run_id, "--store", backend["store"], env=env)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    assert f"[train] step {STEPS}/{STEPS}  loss" in out  # the long node's progress reached the console
    prepare, train = store.node(run_id, "prepare"), store.node(run_id, "train")
    assert (prepare["state"], prepare["attempts"]) == ("SUCCEEDED", 1)  # never ran twice
    assert (train["state"], train["attempts"]) == ("SUCCEEDED", 2)
    assert 1 < train["info"]["first_step"]  # continued from a checkpoint, not step 0
    if local:  # ... from the newest intact checkpoint (on disk there may be newer ones Ray had not registered)
        assert train["info"]["first_step"] - 1 != torn
    # no gap, no duplicate: on 2 cores the driver logs behind the worker (killed with 9 steps logged,
    # the worker had a checkpoint at 18); the checkpoint's replayed metrics fill steps it never logged
    assert logged_steps(backend["tracking_uri"], run_id, "train") == list(range(1, STEPS + 1))

    from mlflow import MlflowClient

    client = MlflowClient(backend["tracking_uri"])
    (model,) = train["models"].values()  # the killed attempt's model is FAILED, not left PENDING
    assert [str(client.get_logged_model(m).status) for m in (killed_model, model)] == ["FAILED", "READY"]
    exp = client.get_experiment_by_name("llada-resume")
    children = client.search_runs([exp.experiment_id],
                                  f"tags.`llada.run_id` = '{run_id}' and tags.`llada.kind` = 'node'")
    assert sorted(r.data.tags["llada.node"] for r in children) == ["prepare", "train"]
    parent = store.run(run_id)["mlflow_parent_run"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in children)
    train_run = next(r for r in children if r.data.tags["llada.node"] == "train")
    assert {a.path for a in client.list_artifacts(train_run.info.run_id, "outputs/checkpoint")} >= {
        "outputs/checkpoint/meta.json", "outputs/checkpoint/weights"}
    if backend["store"].startswith("s3://"):  # MLflow's artifact store and the Ray Train checkpoints are on S3
        import boto3

        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="llada")["Contents"]]
        assert any(k.startswith("mlartifacts/") and k.endswith("meta.json") for k in keys)
        ray_train = [k for k in keys if k.startswith(f"store/runs/{run_id}/train/") and "checkpoint" in k]
        assert (any(k.endswith("trainer_state.json") for k in ray_train)
                and any(k.endswith(".distcp") for k in ray_train))

    if not backend["store"].startswith("s3://"):
        return  # the re-run, the lock and lineage are storage-agnostic logic (test_dag); checked once, on S3
    again = llada("run", recipe, env=env)  # a new run of the same recipe: nothing recomputed
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    new_run = [r for r in store.runs() if r != run_id][0]
    assert {store.node(new_run, n)["state"] for n in ("prepare", "train")} == {"SKIPPED-CACHED"}

    with store.lock(run_id):  # a second driver on a locked run gets a clear error
        with pytest.raises(LockedError):
            with store.lock(run_id):
                pass
    lineage = subprocess.run([sys.executable, "-m", "pipelines.cli", "lineage", new_run,
                              "--store", backend["store"], "--json"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert lineage.returncode == 0, lineage.stderr
    doc = json.loads(lineage.stdout)
    assert set(doc["nodes"]) == {"prepare", "train"}
    assert doc["nodes"]["train"]["computed_in"] == {"run_id": run_id, "node": "train"}
    assert doc["nodes"]["train"]["inputs"]["prepare.dataset"] == prepare["outputs"]["dataset"]["digest"]
    assert doc["nodes"]["prepare"]["datasets"][0]["sources"]
    assert Path(train["outputs"]["checkpoint"]["uri"], "meta.json").exists()
