"""The durable DAG on a real local Ray: caching across runs, --no-cache, --from-stage, a failing
branch, the lock, deleted/corrupted artifacts, MLflow child runs; bad recipes fail before running."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines import dag, runs
from pipelines.run_store import LockedError, RunStore

STAGE = "tests.dag_stages:write"


def recipe(tmp_path, fail=(), extra=None, name="toy"):
    counter = str(tmp_path / "counter.txt")

    def node(n, text, inputs=()):
        cfg = {"text": text, "out": "${out}", "counter": counter, "inputs": [f"${{{i}.value}}" for i in inputs],
               "fail": n in fail}
        return {"name": n, "stage": STAGE, "config": cfg}

    nodes = [node("a", "A"), node("b", "B"), node("c", "C", ["a", "b"]), node("d", "D", ["a"])] + (extra or [])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "workdir": str(tmp_path / "work"), "nodes": nodes}))
    return str(path)


def executions(tmp_path) -> list[str]:
    path = tmp_path / "counter.txt"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def states(records):
    return {k: v["state"] for k, v in records.items()}


def quiet(_msg):
    pass


def test_bad_recipes_fail_naming_the_node(tmp_path):
    ok = {"text": "x", "out": "${out}", "counter": "c"}
    cases = [
        ([dag.Node("a", STAGE, ok | {"inputs": ["${b.value}"]}), dag.Node("b", STAGE, ok | {"inputs": ["${a.value}"]})],
         "cycle"),
        ([dag.Node("a", "tests.dag_stages:nope", ok)], "unknown stage"),
        ([dag.Node("a", STAGE, ok | {"inputs": ["${ghost.value}"]})], "no node 'ghost'"),
        ([dag.Node("a", STAGE, ok), dag.Node("b", STAGE, ok | {"inputs": ["${a.weights}"]})], "no output 'weights'"),
        ([dag.Node("a", STAGE, ok | {"colour": 1})], "config error"),
        ([dag.Node("a", STAGE, ok, after=["zzz"])], "not in the recipe"),
    ]
    for nodes, needle in cases:
        with pytest.raises(dag.DagError, match=needle) as err:
            dag.validate(nodes)
        assert "node 'a'" in str(err.value) or "node 'b'" in str(err.value)
    with pytest.raises(dag.DagError, match="from-stage"):
        runs.start(recipe(tmp_path), from_stage="zz", say=quiet)
    assert executions(tmp_path) == []


def test_cache_no_cache_from_stage_and_lineage_of_digests(tmp_path, ray_local):
    path = recipe(tmp_path)
    run1, store, rec1 = runs.start(path, say=quiet)
    assert states(rec1) == dict.fromkeys("abcd", "SUCCEEDED")
    out_c = Path(rec1["c"]["outputs"]["value"]["uri"], "value.txt").read_text()
    assert out_c == "A+B+C"
    assert sorted(executions(tmp_path)) == ["a", "b", "c", "d"]

    run2, _, rec2 = runs.start(path, say=quiet)  # a new run of the same recipe: all cached
    assert states(rec2) == dict.fromkeys("abcd", "SKIPPED-CACHED")
    assert rec2["c"]["cached_from"] == {"run_id": run1, "node": "c"}
    assert len(executions(tmp_path)) == 4

    _, _, rec3 = runs.start(path, from_stage="b", say=quiet)
    assert states(rec3) == {"a": "SKIPPED-CACHED", "b": "SUCCEEDED", "c": "SUCCEEDED", "d": "SKIPPED-CACHED"}
    _, _, rec4 = runs.start(path, no_cache=True, say=quiet)
    assert states(rec4) == dict.fromkeys("abcd", "SUCCEEDED")
    assert sorted(executions(tmp_path)) == sorted(["a", "b", "c", "d", "b", "c", "a", "b", "c", "d"])

    # a changed config changes the node's key and its dependents' (their input digest changes)
    _, _, rec5 = runs.start(path, overrides=["nodes.b.config.text=BB"], say=quiet)
    assert states(rec5) == {"a": "SKIPPED-CACHED", "b": "SUCCEEDED", "c": "SUCCEEDED", "d": "SKIPPED-CACHED"}
    assert Path(rec5["c"]["outputs"]["value"]["uri"], "value.txt").read_text() == "A+BB+C"

    # MLflow: one parent per run, one child per node, params + cache-key tags + per-step metrics
    from mlflow import MlflowClient

    doc = RunStore(store).run(run1)
    client = MlflowClient(doc["tracking_uri"])
    exp = client.get_experiment_by_name(doc["experiment"])
    children = client.search_runs([exp.experiment_id], f"tags.`llada.run_id` = '{run1}' and tags.`llada.kind` = 'node'")
    assert sorted(r.data.tags["llada.node"] for r in children) == ["a", "b", "c", "d"]
    c = next(r for r in children if r.data.tags["llada.node"] == "c")
    assert c.data.tags["mlflow.parentRunId"] == doc["mlflow_parent_run"]
    assert c.data.tags["llada.cache_key"] == rec1["c"]["cache_key"]
    assert c.data.params["text"] == "C"
    assert [m.step for m in client.get_metric_history(c.info.run_id, "loss")] == [1, 2, 3]
    assert c.info.artifact_uri.startswith(str(tmp_path / "work" / "mlartifacts"))  # not ./mlruns of the cwd
    assert [a.path for a in client.list_artifacts(c.info.run_id, "outputs/value")] == ["outputs/value/value.txt"]
    assert sorted(i.dataset.name for i in client.get_run(c.info.run_id).inputs.dataset_inputs) == ["a.value", "b.value"]


def test_failed_branch_stops_dependents_only_and_resume_keeps_finished_nodes(tmp_path, ray_local, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value-123")
    extra = [{"name": "e", "stage": STAGE, "config": {"text": "sekrit-value-123", "out": "${out}",
                                                      "counter": str(tmp_path / "counter.txt"), "fail": True}}]
    path = recipe(tmp_path, fail=("b",), extra=extra)
    run_id, store, rec = runs.start(path, say=quiet)
    assert states(rec) == {"a": "SUCCEEDED", "b": "FAILED", "c": "PENDING", "d": "SUCCEEDED", "e": "FAILED"}
    node_b = RunStore(store).node(run_id, "b")
    assert "told to fail" in node_b["error"] and "RuntimeError" in node_b["traceback"]
    assert "sekrit" not in json.dumps(RunStore(store).node(run_id, "e")["error"])
    from mlflow import MlflowClient

    doc = RunStore(store).run(run_id)
    client = MlflowClient(doc["tracking_uri"])
    for r in client.search_runs([client.get_experiment_by_name(doc["experiment"]).experiment_id]):
        assert "sekrit" not in json.dumps({**r.data.params, **r.data.tags})
    before = executions(tmp_path)
    rec2 = runs.resume(store, run_id, say=quiet)  # b still fails; a and d are never run again
    assert states(rec2)["a"] == "SUCCEEDED" and states(rec2)["b"] == "FAILED"
    again = executions(tmp_path)[len(before):]
    assert sorted(again) == ["b", "e"]
    assert RunStore(store).node(run_id, "b")["attempts"] == 2


def test_deleted_or_corrupted_artifact_is_a_miss_for_it_and_its_dependents(tmp_path, ray_local):
    path = recipe(tmp_path)
    _, _, rec = runs.start(path, say=quiet)
    shutil.rmtree(rec["a"]["outputs"]["value"]["uri"])
    _, _, rec2 = runs.start(path, say=quiet)
    assert states(rec2) == {"a": "SUCCEEDED", "b": "SKIPPED-CACHED", "c": "SUCCEEDED", "d": "SUCCEEDED"}
    Path(rec2["b"]["outputs"]["value"]["uri"], "value.txt").write_text("tampered")
    _, _, rec3 = runs.start(path, say=quiet)
    assert states(rec3) == {"a": "SKIPPED-CACHED", "b": "SUCCEEDED", "c": "SUCCEEDED", "d": "SKIPPED-CACHED"}


def test_lock_refuses_a_second_driver_and_takes_over_a_dead_one(tmp_path, ray_local):
    path = recipe(tmp_path)
    store = RunStore(str(tmp_path / "work" / "store"))
    with store.lock("held"):
        with pytest.raises(LockedError, match="another driver"):
            runs.start(path, run_id="held", say=quiet)
    assert executions(tmp_path) == []
    lock = Path(store.root, "runs", "held", "lock.json")
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 7, "heartbeat": 0, "token": "x"}))
    _, _, rec = runs.start(path, run_id="held", say=quiet)  # the holder's pid is gone: taken over
    assert states(rec) == dict.fromkeys("abcd", "SUCCEEDED")
    assert not lock.exists()


def test_a_nodes_resources_reach_its_ray_task_and_an_unplaceable_one_fails_before_any_node(tmp_path, ray_local):
    from llada_core.cluster import ClusterError

    def extra(resources):
        return [{"name": "e", "stage": "tests.dag_stages:assigned", "config": {"out": "${out}"},
                 "resources": resources}]

    _, _, rec = runs.start(recipe(tmp_path, extra=extra({"num_cpus": 1, "memory": 100 << 20})), say=quiet)
    got = json.loads(Path(rec["e"]["outputs"]["value"]["uri"], "resources.json").read_text())
    assert got["CPU"] == 1 and got["memory"] == 100 << 20
    assert sorted(executions(tmp_path)) == ["a", "b", "c", "d"]
    with pytest.raises(ClusterError, match=r"node 'e' asks Ray for memory 1048576.0 GiB in one task, but no node of "
                                           r"the cluster has that much \(largest: memory [0-9.]+ GiB\)"):
        runs.start(recipe(tmp_path, extra=extra({"memory": 1 << 50}), name="huge"), say=quiet)
    assert sorted(executions(tmp_path)) == ["a", "b", "c", "d"]  # nothing ran
    with pytest.raises(dag.DagError, match=r"node 'e': resources \{'gpus': 1.0\}"):
        runs.start(recipe(tmp_path, extra=extra({"gpus": 1}), name="typo"), say=quiet)
