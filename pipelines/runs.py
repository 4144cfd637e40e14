"""Pipeline runs: start a recipe, resume a run, and the settings every recipe shares.

The engine itself reads a recipe file that lists its `nodes:` (a plain DAG of stages); a recipe
package (e.g. llada_recipe) hands `start` a loader that builds the nodes from its own config. Every
config needs the settings fields of GraphRecipe (workdir, store, artifact_root, tracking, ray).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from llada_core import storage
from llada_core.config import StrictModel, canonical_json, load_config
from llada_core.version import code_version
from pipelines import dag
from pipelines.executor import Executor, Options
from pipelines.run_store import RunStore, new_run_id, now
from pipelines.tracking import Tracker, default_tracking_uri

DEFAULT_STORE = os.environ.get("LLADA_STORE", "work/store")


class NodeSpec(StrictModel):
    name: str
    stage: str
    config: dict[str, Any] = {}
    after: list[str] = []
    resources: dict[str, float] = {}  # Ray task options: num_cpus, num_gpus, memory (bytes)
    registered_model: str | None = None  # Model Registry name for the node's model output


class GraphRecipe(StrictModel):
    """A recipe that spells out its nodes (tests, custom pipelines)."""

    name: str
    workdir: str = "work"
    store: str | None = None
    artifact_root: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    ray: Literal["auto", "cluster"] = "auto"  # cluster: never start a local Ray for this run
    nodes: list[NodeSpec]

    @property
    def needs_cluster(self) -> bool:
        return self.ray == "cluster"


def settings(cfg) -> dict:
    """Where a recipe's run store, artifacts and MLflow live (defaults inside its workdir), as absolute
    paths or URIs: resolved here, on the driver, never by a worker against its own cwd."""
    work = storage.absolute(cfg.workdir)
    tracking = cfg.tracking_uri or default_tracking_uri(work)
    local_mlflow = tracking.startswith(("sqlite:", "file:")) or "://" not in tracking
    return {"store": storage.absolute(cfg.store or storage.join(work, "store")),
            "artifact_root": storage.absolute(cfg.artifact_root or storage.join(work, "artifacts")),
            "ray": "cluster" if cfg.needs_cluster else "auto",
            "tracking_uri": tracking, "experiment": cfg.experiment or f"llada-{cfg.name}",
            # a database-backed MLflow would put artifacts in ./mlruns of whatever directory runs it
            "mlflow_artifact_location": str(Path(work).resolve() / "mlartifacts") if local_mlflow else None}


def load_graph(path: str, overrides: list[str] = ()) -> tuple[GraphRecipe, list[dag.Node]]:
    """A YAML that lists its `nodes:` (validated: a bad recipe fails here, before anything runs)."""
    cfg = load_config(GraphRecipe, path, overrides=overrides)
    return cfg, dag.validate([dag.Node(n.name, n.stage, n.config, list(n.after), dict(n.resources), n.registered_model)
                       for n in cfg.nodes])


def is_graph(path: str | Path) -> bool:
    """A YAML that lists its nodes. One that cannot be read is not: load_config then says why, in one line."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "nodes" in raw


Loader = Callable[[str, list[str]], tuple[Any, list[dag.Node]]]


def _executor(store: RunStore, run_id: str, say) -> Executor:
    doc = store.run(run_id)
    tracker = Tracker(doc["tracking_uri"], doc["experiment"], doc.get("mlflow_artifact_location"))
    return Executor(store, run_id, tracker, say=say)


def start(recipe: str, overrides: list[str] = (), run_id: str | None = None, no_cache: bool = False,
          from_stage: str | None = None, say: Callable[[str], None] = print,
          load: Loader = load_graph) -> tuple[str, str, dict]:
    """Run a recipe: `load(recipe, overrides)` gives its config and nodes (default: a YAML listing its
    nodes; a recipe package such as llada_recipe passes its own loader)."""
    cfg, nodes = load(recipe, list(overrides))
    dag.check_inputs(nodes)
    where = settings(cfg)
    if from_stage and from_stage not in {n.name for n in nodes}:
        raise dag.DagError(f"--from-stage {from_stage!r}: no such node (nodes: {[n.name for n in nodes]})")
    store = RunStore(where["store"])
    run_id = run_id or new_run_id(cfg.name)
    existing = store.run(run_id) if store.run_exists(run_id) else None
    if existing and existing["nodes"] != dag.to_json(nodes):
        raise dag.DagError(f"run {run_id} exists with a different recipe; "
                           f"use a new --run-id or `llada resume {run_id}`")
    doc = existing or {"run_id": run_id, "recipe": cfg.name, "recipe_config": _jsonable(cfg),
                       "nodes": dag.to_json(nodes), "created": now(), "code_version": code_version(), **where}
    doc["options"] = {"no_cache": no_cache, "from_stage": from_stage}
    store.write_run(run_id, doc)
    if not existing:  # every node is listed (PENDING) from the start
        for node in nodes:
            store.write_node(run_id, store.node(run_id, node.name))
    force = dag.descendants(nodes, {from_stage}) if from_stage else set()
    records = _executor(store, run_id, say).execute(Options(no_cache=no_cache, force=force))
    return run_id, where["store"], records


def resume(store_root: str, run_id: str, say: Callable[[str], None] = print) -> dict:
    """Finish a run: SUCCEEDED nodes are kept, failed or interrupted ones run again (training
    nodes continue from their latest checkpoint)."""
    store = RunStore(store_root)
    opts = store.run(run_id).get("options", {})
    return _executor(store, run_id, say).execute(Options(no_cache=bool(opts.get("no_cache"))))


def _jsonable(cfg) -> dict:
    import json

    return json.loads(canonical_json(cfg))
