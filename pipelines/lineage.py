"""What produced an artifact: walk back from a run's final nodes (or from the node that wrote a given
artifact URI) through every upstream node, following cache hits to the run that really computed
them, and report stage, config hash, cache key, code version, MLflow run and input digests."""

from __future__ import annotations

import hashlib
import json

from llada_core import storage
from pipelines import dag
from pipelines.run_store import RunStore


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def find_artifact(store: RunStore, uri: str) -> tuple[str, str]:
    """(run id, node) whose output is `uri` or contains it."""
    target = storage.resolve(uri)[1] if not storage.is_s3(uri) else uri
    for run_id in reversed(store.runs()):
        for node in dag.from_json(store.run(run_id)["nodes"]):
            rec = store.node(run_id, node.name)
            if rec.get("state") != "SUCCEEDED":
                continue
            for out in rec.get("outputs", {}).values():
                have = out["uri"] if storage.is_s3(out["uri"]) else storage.resolve(out["uri"])[1]
                if target == have or target.startswith(have.rstrip("/") + "/"):
                    return run_id, node.name
    raise KeyError(f"no node in the run store {store.root} produced {uri}")


def _datasets(rec: dict) -> list[dict]:
    """Source URIs + digests of the datasets a node wrote (data-stage manifests)."""
    from llada_core.data.shards import read_manifest

    found = []
    for name, out in rec.get("outputs", {}).items():
        try:
            manifest = read_manifest(out["uri"])
        except Exception:  # not a dataset
            continue
        found.append({"output": name, "digest": out["digest"], "tokenizer": manifest.get("tokenizer", {}).get("digest"),
                      "sources": [{"uri": s.get("uri", s.get("path")), "sha256": s.get("sha256")}
                                  for s in manifest.get("sources", [])]})
    return found


def lineage(store: RunStore, run_id: str, node: str | None = None) -> dict:
    run = store.run(run_id)
    nodes = {n.name: n for n in dag.from_json(run["nodes"])}
    if node is None:  # the run's final nodes: nobody depends on them
        used = {u for n in nodes.values() for u in n.upstream()}
        roots = [name for name in nodes if name not in used]
    else:
        roots = [node]
    seen: dict[str, dict] = {}

    def visit(name: str) -> None:
        if name in seen:
            return
        rec = store.node(run_id, name)
        computed_in = rec.get("cached_from") or {"run_id": run_id, "node": name}
        source = store.node(computed_in["run_id"], computed_in["node"]) if rec.get("cached_from") else rec
        source_run = store.run(computed_in["run_id"]) if rec.get("cached_from") else run
        seen[name] = {
            "node": name, "stage": nodes[name].stage, "state": store.node_state(run_id, rec),
            "cache_key": rec.get("cache_key"),
            "config_hash": _config_hash(nodes[name].config), "computed_in": computed_in,
            "code_version": source.get("code_version") or source_run.get("code_version"),
            "mlflow_run_id": rec.get("mlflow_run_id"), "computed_mlflow_run_id": source.get("mlflow_run_id"),
            "outputs": rec.get("outputs", {}),
            "inputs": rec.get("inputs", {}), "upstream": nodes[name].upstream(), "datasets": _datasets(rec),
        }
        for up in nodes[name].upstream():
            visit(up)

    for name in roots:
        visit(name)
    return {"run_id": run_id, "recipe": run.get("recipe"), "targets": roots, "nodes": seen}


def format_lineage(doc: dict) -> str:
    lines = [f"run {doc['run_id']} (recipe {doc['recipe']})"]

    def show(name: str, depth: int) -> None:
        n = doc["nodes"][name]
        pad = "  " * depth
        where = "" if n["computed_in"]["run_id"] == doc["run_id"] else f" (cached from {n['computed_in']['run_id']})"
        code = n["code_version"] or {}
        lines.append(f"{pad}{name} [{n['stage']}] {n['state']}{where}")
        lines.append(f"{pad}  config {n['config_hash'][:12]}  key {str(n['cache_key'])[:12]}  "
                     f"code {str(code.get('git_sha'))[:10]}{'+dirty' if code.get('git_dirty') else ''}  "
                     f"mlflow {n['mlflow_run_id']}")
        for out, o in n["outputs"].items():
            lines.append(f"{pad}  -> {out}: {o['uri']} sha256:{o['digest'][:16]}")
        for ds in n["datasets"]:
            for src in ds["sources"]:
                lines.append(f"{pad}  <- source {src['uri']} sha256:{str(src['sha256'])[:16]}")
        for up in n["upstream"]:
            show(up, depth + 1)

    for target in doc["targets"]:
        show(target, 0)
    return "\n".join(lines)
