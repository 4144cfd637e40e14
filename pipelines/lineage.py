"""What produced an artifact: walk back from a run's final nodes (or from the node that wrote a given
artifact URI) through every upstream node, following cache hits to the run that really computed
them, and report stage, config hash, cache key, code version, MLflow run and input digests."""

from __future__ import annotations

import hashlib
import json
import os

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
        sources = [{"uri": s.get("uri", s.get("path")), "sha256": s.get("sha256"), "bytes": s.get("bytes")}
                   for s in manifest.get("sources", [])]
        found.append({"output": name, "digest": out["digest"], "tokenizer": manifest.get("tokenizer", {}).get("digest"),
                      "sources": sources})
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
            "inputs": rec.get("inputs", {}), "reads": [f"{u}.{o}" for u, o in nodes[name].refs()],
            "upstream": nodes[name].upstream(), "datasets": _datasets(rec),
        }
        for up in nodes[name].upstream():
            visit(up)

    for name in roots:
        visit(name)
    return {"run_id": run_id, "recipe": run.get("recipe"), "targets": roots, "nodes": seen}


def _order(doc: dict) -> list[str]:
    """The lineage's nodes, each after its upstreams (stable: first seen first)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for up in doc["nodes"][name]["upstream"]:
                visit(up)
            order.append(name)

    for target in doc["targets"]:
        visit(target)
    return order


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _root(uris: list[str]) -> str:
    if not uris:
        return "-"
    prefix = os.path.commonprefix(uris)
    return prefix if len(uris) == 1 else prefix[: prefix.rfind("/") + 1] or "/"


def format_lineage(doc: dict, sources: bool = False) -> str:
    """Each node once (upstreams first): stage, state, config hash, cache key, code version, MLflow run
    and its inputs by node; then each dataset summarized (all its source files with `sources`)."""
    order = _order(doc)
    lines = [f"run {doc['run_id']} (recipe {doc['recipe']}): {len(order)} nodes behind {', '.join(doc['targets'])}"]
    width = max(len(n) for n in order)
    for name in order:
        n = doc["nodes"][name]
        code = n["code_version"] or {}
        cached = "" if n["computed_in"]["run_id"] == doc["run_id"] else f" (cached from {n['computed_in']['run_id']})"
        inputs = ", ".join(n["reads"]) or "-"
        lines.append(f"{name:<{width}}  {n['stage'].rsplit(':', 1)[-1]:<21} {n['state']}{cached}  "
                     f"config {n['config_hash'][:10]}  key {str(n['cache_key'])[:10]}  "
                     f"code {str(code.get('git_sha'))[:10]}{'+dirty' if code.get('git_dirty') else ''}  "
                     f"mlflow {str(n['mlflow_run_id'])[:12]}  <- {inputs}")
    for name in order:
        for ds in doc["nodes"][name]["datasets"]:
            uris = [str(s["uri"]) for s in ds["sources"]]
            total = sum(s.get("bytes") or 0 for s in ds["sources"])
            lines.append(f"dataset {name}.{ds['output']} sha256:{ds['digest'][:16]}: {len(uris)} source file(s), "
                         f"{_size(total)} under {_root(uris)}")
            if sources:
                lines += [f"  {s['uri']} sha256:{str(s['sha256'])[:16]}" for s in ds["sources"]]
    for target in doc["targets"]:
        for out, o in doc["nodes"][target]["outputs"].items():
            lines.append(f"artifact {target}.{out}: {o['uri']} sha256:{o['digest'][:16]}")
    return "\n".join(lines)


def to_graph(doc: dict, fmt: str) -> str:
    """The lineage as a Mermaid flowchart or a Graphviz digraph (edges labelled with the output used)."""
    order = _order(doc)
    ident = {name: f"n{i}" for i, name in enumerate(order)}
    edges = [(up_out.split(".", 1)[0], up_out.split(".", 1)[1], name)
             for name in order for up_out in doc["nodes"][name]["reads"]]
    edges += [(up, "", name) for name in order for up in doc["nodes"][name]["upstream"]
              if not any(e[0] == up and e[2] == name for e in edges)]
    label = {name: f"{name}\\n{doc['nodes'][name]['stage'].rsplit(':', 1)[-1]} · {doc['nodes'][name]['state']}"
             for name in order}
    if fmt == "mermaid":
        lines = ["flowchart LR"] + [f'  {ident[n]}["{label[n].replace(chr(92) + "n", "<br/>")}"]' for n in order]
        lines += [f"  {ident[a]} -->{'|' + out + '|' if out else ''} {ident[b]}" for a, out, b in edges]
    elif fmt == "dot":
        lines = ["digraph lineage {", "  rankdir=LR;", "  node [shape=box];"]
        lines += [f'  {ident[n]} [label="{label[n]}"];' for n in order]
        lines += [f'  {ident[a]} -> {ident[b]}{f" [label={json.dumps(out)}]" if out else ""};' for a, out, b in edges]
        lines.append("}")
    else:
        raise ValueError(f"unknown graph format {fmt!r} (mermaid or dot)")
    return "\n".join(lines)
