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


def test_models_are_logged_models_measured_on_datasets_and_the_final_one_a_registered_version(tmp_path, ray_local,
                                                                                              capsys):
    from mlflow import MlflowClient

    from pipelines.cli import main

    counter = str(tmp_path / "counter.txt")

    def node(name, stage, inputs=(), **extra):
        cfg = {"text": name, "out": "${out}", "counter": counter, "inputs": [f"${{{i}.value}}" for i in inputs]}
        return {"name": name, "stage": f"tests.dag_stages:{stage}", "config": cfg | extra.pop("config", {})} | extra

    nodes = [node("data", "write"), node("m", "write_model", ["data"]), node("broken", "write_model", ["data"],
                                                                             config={"fail": True}),
             {"name": "score", "stage": "tests.dag_stages:score",
              "config": {"model": "${m.value}", "data": "${data.value}", "out": "${out}"}},
             node("final", "write_model", ["m"], registered_model="toy-model")]
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"name": "models", "workdir": str(tmp_path / "work"), "nodes": nodes}))
    with pytest.raises(dag.DagError, match="registered_model='x' needs a stage with one model output"):
        dag.validate([dag.Node("a", STAGE, {"text": "x", "out": "${out}", "counter": counter}, registered_model="x")])

    run_id, store, rec = runs.start(str(path), say=quiet)
    assert states(rec)["broken"] == "FAILED" and states(rec)["final"] == "SUCCEEDED"
    client = MlflowClient(RunStore(store).run(run_id)["tracking_uri"])
    m = client.get_logged_model(rec["m"]["models"]["value"])
    assert (m.status.to_string() if hasattr(m.status, "to_string") else str(m.status)).endswith("READY")
    assert m.source_run_id == rec["m"]["mlflow_run_id"] and m.params["text"] == "m"
    assert m.tags["llada.uri"] == rec["m"]["outputs"]["value"]["uri"] and m.tags["llada.node"] == "m"
    broken = client.get_logged_model(rec["broken"]["models"]["value"])
    assert str(broken.status).endswith("FAILED")
    (length,) = [x for x in m.metrics if x.key == "length"]  # measured by `score`, linked to the model
    assert (length.value, length.dataset_name) == (len("data+m"), "data.value")
    assert length.dataset_digest == rec["data"]["outputs"]["value"]["digest"][:36]
    (version,) = client.search_model_versions("name = 'toy-model'")
    final = rec["final"]["models"]["value"]
    assert version.tags["llada.model_id"] == final and version.run_id == rec["final"]["mlflow_run_id"]
    assert json.loads(client.get_logged_model(final).tags["mlflow.modelVersions"]) == [{"name": "toy-model",
                                                                                         "version": 1}]
    assert {version.tags[k] for k in ("llada.run_id", "llada.node", "llada.store", "llada.cache_key")} == {
        run_id, "final", store, rec["final"]["cache_key"]}

    capsys.readouterr()
    assert main(["lineage", "models:/toy-model/1", "--tracking-uri", client.tracking_uri, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run_id"] == run_id and set(doc["nodes"]) == {"final", "m", "data"}
    assert doc["nodes"]["final"]["cache_key"] == version.tags["llada.cache_key"]
    assert main(["lineage", "models:/toy-model/9", "--tracking-uri", client.tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: models:/toy-model/9: not found")
