"""Runs a DAG durably on Ray: each node is a Ray task (its heavy work - Ray Data, a Ray Train worker
group - is scheduled by the stage itself), independent nodes run concurrently, every state change
is written to the run store before the next thing happens, and MLflow gets one child run per node.

A node is reused (never re-run) when a SUCCEEDED record with the same cache key exists - in this run
or any earlier one - and its outputs are still there with the recorded digests. A failed node stops
its dependents only; independent branches finish. `resume` = the same loop over a stored run.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray

from llada_core import storage
from llada_core.cluster import ClusterError, alive_nodes, check_placeable, ensure_ray
from llada_core.version import code_version
from pipelines import dag, models
from pipelines.context import NodeContext
from pipelines.errors import summary
from pipelines.progress import Progress
from pipelines.run_store import DONE, RunStore, artifact_digest, now, outputs_intact
from pipelines.tracking import Tracker, flatten, redact

MLFLOW_COPY_MAX_BYTES = 64 << 20  # node outputs up to this size are copied into MLflow as artifacts


def _execute_node(stage_path: str, config: dict, ctx: NodeContext) -> dict:
    """Runs inside a Ray task. Returns {"outputs": {name: {uri, digest}}, "info": {...}}."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # never let an inherited run id redirect logging
    stage = dag.load_stage(stage_path)
    outputs = stage.fn(stage.config.model_validate(config), ctx)
    missing = sorted(set(stage.outputs) - set(outputs))
    if missing:
        raise RuntimeError(f"stage {stage_path} returned no output(s) {missing}")
    described = {}
    for name, uri in outputs.items():
        digest = artifact_digest(uri)
        if digest is None:
            raise RuntimeError(f"stage {stage_path}: output {name!r} at {uri} does not exist or is empty")
        described[name] = {"uri": uri, "digest": digest}
    for name, out in described.items():  # small outputs go to MLflow too, logged here, where they are
        if storage.size_of(out["uri"]) <= MLFLOW_COPY_MAX_BYTES:
            local = storage.local_copy(out["uri"])
            if local.is_dir():
                ctx._tracker().log_artifacts(ctx.mlflow_run, str(local), f"outputs/{name}")
            else:
                ctx._tracker().log_artifact(ctx.mlflow_run, str(local), f"outputs/{name}")
    return {"outputs": described, "info": ctx.info}


@dataclass
class Options:
    no_cache: bool = False
    force: set[str] = field(default_factory=set)  # nodes that must run (--from-stage and descendants)
    max_parallel: int = 4


class Executor:
    def __init__(self, store: RunStore, run_id: str, tracker: Tracker, say: Callable[[str], None] = print):
        self.store, self.run_id, self.tracker, self.say = store, run_id, tracker, say
        self.run_doc = store.run(run_id)
        self.nodes = dag.validate(dag.from_json(self.run_doc["nodes"]))
        self.by_name = {n.name: n for n in self.nodes}

    def execute(self, opts: Options) -> dict[str, dict]:
        with self.store.lock(self.run_id):
            ensure_ray(require_cluster=self.run_doc.get("ray") == "cluster")
            _check_tracking_reachable(self.tracker.tracking_uri)
            check_placeable({n.name: dag.task_options(n, dag.load_stage(n.stage)) for n in self.nodes})
            from ray.util.queue import Queue

            self.queue, progress = Queue(), Progress(self.say)
            parent = self.tracker.parent_run(self.run_id, {"llada.recipe": self.run_doc["recipe"], **_code_tags()})
            self.run_doc |= {"mlflow_parent_run": parent, "ray_job_id": ray.get_runtime_context().get_job_id()}
            self.store.write_run(self.run_id, self.run_doc)
            self.tracker.log_params(parent, flatten(self.run_doc.get("recipe_config", {})))
            records = {n.name: self.store.node(self.run_id, n.name) for n in self.nodes}
            running: dict[ray.ObjectRef, str] = {}
            while True:
                for node in self.nodes:
                    rec = records[node.name]
                    if node.name in running.values() or rec.get("_settled") or len(running) >= opts.max_parallel:
                        continue
                    ups = [records[u] for u in node.upstream()]
                    if any(u.get("_settled") in ("blocked", "failed") for u in ups):
                        rec["_settled"] = "blocked"
                        continue
                    if not all(u.get("_settled") == "done" for u in ups):
                        continue
                    ref = self._start(node, rec, records, opts)
                    if ref is not None:
                        running[ref] = node.name
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                progress.drain(self.queue)
                if not ready:
                    continue
                name = running.pop(ready[0])
                progress.finished(name)
                self._finish(self.by_name[name], records[name], ready[0])
            self.queue.shutdown()
            self._log_lineage(parent)
            self.tracker.end(parent, "FAILED" if any(r["state"] == "FAILED" for r in records.values()) else "FINISHED")
            return {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in records.items()}

    def _log_lineage(self, parent: str) -> None:
        """The run's lineage (text + Mermaid picture) on its parent MLflow run, refreshed after each run."""
        import tempfile

        from pipelines.lineage import format_lineage, lineage, to_graph

        try:
            doc = lineage(self.store, self.run_id)
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "lineage.txt").write_text(format_lineage(doc) + "\n", encoding="utf-8")
                Path(tmp, "lineage.mmd").write_text(to_graph(doc, "mermaid") + "\n", encoding="utf-8")
                self.tracker.log_artifacts(parent, tmp, "lineage")
        except Exception as exc:  # the run's outcome never depends on this copy: `llada lineage` reads the store
            self.say(f"warning: the lineage was not logged to MLflow: {summary(exc)}")

    # -- one node -------------------------------------------------------------------------------
    def _inputs(self, node: dag.Node, records: dict) -> tuple[dict[str, str], dict[str, str]]:
        uris, digests = {}, {}
        for up, output in node.refs():
            out = records[up]["outputs"][output]
            uris[f"${{{up}.{output}}}"], digests[f"{up}.{output}"] = out["uri"], out["digest"]
        return uris, digests

    def _start(self, node: dag.Node, rec: dict, records: dict, opts: Options) -> ray.ObjectRef | None:
        stage = dag.load_stage(node.stage)
        uris, digests = self._inputs(node, records)
        key = dag.cache_key(node, stage, digests)
        forced = node.name in opts.force
        if rec["state"] in DONE and rec.get("cache_key") == key and not forced and outputs_intact(rec["outputs"]):
            rec["_settled"] = "done"  # finished earlier in this run: never run again
            return None
        hit = None if (forced or opts.no_cache) else self.store.cache_get(key)
        tags = {"llada.cache_key": key, "llada.stage": node.stage,
                "llada.ray_job_id": str(self.run_doc.get("ray_job_id")),
                "llada.upstream_runs": ",".join(records[u].get("mlflow_run_id", "") for u in node.upstream()),
                **_code_tags()}
        mlflow_run = self.tracker.child_run(self.run_doc["mlflow_parent_run"], self.run_id, node.name, tags)
        rec |= {"cache_key": key, "mlflow_run_id": mlflow_run, "inputs": dict(digests),
                "stage": node.stage}
        if hit:
            rec |= {"state": "SKIPPED-CACHED", "outputs": hit["outputs"], "cached_from": hit["source"],
                    "models": hit.get("models", {}), "ended": now(), "_settled": "done", "error": None}
            self.store.write_node(self.run_id, _public(rec))
            self.tracker.set_tags(mlflow_run, {"llada.state": "SKIPPED-CACHED",
                                               "llada.cached_from": str(hit["source"])})
            self.tracker.end(mlflow_run, "FINISHED")
            self.say(f"[{node.name}] cached (from {hit['source']['run_id']})")
            return None
        # recomputed outputs are new artifacts: whatever was built on the old ones is recomputed too
        opts.force |= dag.descendants(self.nodes, {node.name}) - {node.name}
        out_dir = self.store.node_output(self.run_id, node.name)
        resolved = dag.substitute(node.config, lambda ref: out_dir if ref == dag.OUT else uris.get(ref))
        params = flatten(node.config)
        self.tracker.log_params(mlflow_run, params)
        if rec.get("attempts", 0) == 0:
            for up, output in node.refs():
                name = f"{up}.{output}"
                self.tracker.log_dataset(mlflow_run, name, uris[f"${{{name}}}"], digests[name], context=output)
        attempts = rec.get("attempts", 0) + 1
        models.abandon(self.tracker, rec.get("models", {}))
        rec["models"] = models.start(self.tracker, node.name, stage.models, mlflow_run, params,
                                     {"llada.run_id": self.run_id, "llada.node": node.name, "llada.cache_key": key})
        rec |= {"state": "RUNNING", "attempts": attempts, "started": now(), "ended": None, "error": None,
                "traceback": None, "outputs": {}, "config": resolved, "code_version": code_version()}
        self.store.write_node(self.run_id, _public(rec))
        self.tracker.set_tags(mlflow_run, {"llada.state": "RUNNING", "llada.attempts": str(attempts)})
        self.say(f"[{node.name}] running (attempt {attempts})")
        inputs = {uris[f"${{{up}.{output}}}"].rstrip("/"): {
            "name": f"{up}.{output}", "digest": digests[f"{up}.{output}"],
            "model_id": records[up].get("models", {}).get(output)} for up, output in node.refs()}
        ctx = NodeContext(self.run_id, node.name, key, out_dir, self.store.train_storage(self.run_id),
                          self.tracker.tracking_uri, mlflow_run, parent_run=self.run_doc["mlflow_parent_run"],
                          progress_queue=self.queue, inputs=inputs)
        task = ray.remote(_execute_node).options(**dag.task_options(node, stage), max_retries=0,
                                                 name=f"llada:{node.name}")
        rec["_t0"] = time.time()
        return task.remote(node.stage, resolved, ctx)

    def _finish(self, node: dag.Node, rec: dict, ref: ray.ObjectRef) -> None:
        seconds = round(time.time() - rec.pop("_t0"), 2)
        try:
            result = ray.get(ref)
        except Exception as exc:  # the stage's exception, wrapped by Ray
            rec |= {"state": "FAILED", "ended": now(), "seconds": seconds, "_settled": "failed",
                    "error": redact(summary(exc))[:2000],
                    "traceback": redact("".join(traceback.format_exception(exc)))[-20000:]}
            self.store.write_node(self.run_id, _public(rec))
            self.tracker.set_tags(rec["mlflow_run_id"], {"llada.state": "FAILED", "llada.error": rec["error"][:500]})
            models.finish(self.tracker, rec.get("models", {}), rec["mlflow_run_id"], None)
            self.tracker.end(rec["mlflow_run_id"], "FAILED")
            self.say(f"[{node.name}] FAILED after {seconds}s: {rec['error'].splitlines()[0][:300]}")
            return
        out_tags = {f"llada.output.{k}": v["uri"] for k, v in result["outputs"].items()}
        out_tags |= {f"llada.output.{k}.digest": v["digest"] for k, v in result["outputs"].items()}
        self.tracker.set_tags(rec["mlflow_run_id"],
                              out_tags | {"llada.state": "SUCCEEDED", "llada.seconds": str(seconds)})
        # the node record is the commit point: a driver killed before it re-runs the node on resume
        rec |= {"state": "SUCCEEDED", "ended": now(), "seconds": seconds, "outputs": result["outputs"],
                "info": result["info"], "_settled": "done"}
        self.store.write_node(self.run_id, _public(rec))
        self.store.cache_put(rec["cache_key"], {"outputs": result["outputs"], "models": rec.get("models", {}),
                                                "source": {"run_id": self.run_id, "node": node.name},
                                                "created": now()})
        models.finish(self.tracker, rec.get("models", {}), rec["mlflow_run_id"], result["outputs"])
        if node.registered_model:
            self._register(node, rec)
        self.tracker.end(rec["mlflow_run_id"], "FINISHED")
        self.say(f"[{node.name}] succeeded in {seconds}s")


    def _register(self, node: dag.Node, rec: dict) -> None:
        from pipelines.lineage import lineage

        tags = models.lineage_tags(lineage(self.store, self.run_id, node.name), self.store.root, self.run_id, node.name)
        (model_id,) = rec["models"].values()
        version = models.register(self.tracker, node.registered_model, model_id, rec["mlflow_run_id"], tags)
        uri = f"models:/{node.registered_model}/{version}"
        self.tracker.set_tags(rec["mlflow_run_id"], {"llada.registered_model": uri})
        self.say(f"[{node.name}] registered as {uri}")


def _check_tracking_reachable(tracking_uri: str) -> None:
    """Every node logs to MLflow itself: a file-backed tracking URI on several nodes would be a
    different file on each node's disk."""
    if alive_nodes() > 1 and (tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri):
        raise ClusterError(f"tracking_uri {tracking_uri!r} is a local file, but the Ray cluster has {alive_nodes()} "
                           "nodes: run an MLflow server (infra/mlflow) and set tracking_uri / MLFLOW_TRACKING_URI")


def _public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def _code_tags() -> dict[str, str]:
    v = code_version()
    return {"llada.git_sha": str(v["git_sha"]), "llada.git_dirty": str(v["git_dirty"]), "llada.package": v["package"]}
