"""A recipe as a DAG of nodes; each node = a stage function (e.g. stages/llada.py) + its config.

Edges come from the config itself: a string value `${NODE.OUTPUT}` is an upstream node's output
(replaced by its URI when the node runs) and `${out}` is this node's own output directory. So a
recipe reads as plain configs, and the cache key can hash the *unresolved* config plus the digests
of the inputs: a node cached in one run is a hit in another even though its inputs live elsewhere.

Everything that can be wrong with a recipe (unknown stage, reference to a missing node or output,
a cycle, a config error) raises `DagError` naming the node, before anything runs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

REF = re.compile(r"^\$\{([A-Za-z0-9_\-]+)\.([A-Za-z0-9_\-]+)\}(/.*)?$")  # ${node.output}[/sub/path]
OUT = "${out}"
PLACEHOLDER = "/llada-upstream-output/"
RESOURCES = ("num_cpus", "num_gpus", "memory")  # a node's Ray task options


class DagError(ValueError):
    pass


@dataclass(frozen=True)
class Stage:
    """What a node runs: `fn(config, ctx) -> {output name: URI}`; `version` is part of the cache
    key (bump it when the stage's results change for the same config and inputs)."""

    fn: Callable[..., dict[str, str]]
    config: type[BaseModel]
    outputs: tuple[str, ...]
    version: str = "1"
    num_cpus: float = 0.0  # of the node's own Ray task; a launcher's workers reserve their own
    # checks a config against inputs that already exist (e.g. a dataset's manifest); the engine calls
    # it before any node runs, for each node that reads no upstream output
    check: Callable[[BaseModel], None] | None = None
    models: tuple[str, ...] = ()  # outputs that are models: each an MLflow logged model (pipelines.models)


@dataclass
class Node:
    name: str
    stage: str  # "module:attribute" of a Stage, e.g. "stages.llada:prepare_pretrain"
    config: dict[str, Any]
    after: list[str] = field(default_factory=list)  # ordering-only upstreams (no data passed)
    # Ray resources of the node's own task (num_cpus, num_gpus, memory in bytes), over the stage's
    # defaults; not part of the cache key (where a node runs does not change what it computes)
    resources: dict[str, float] = field(default_factory=dict)
    registered_model: str | None = None  # a Model Registry name: each run's model output becomes a version of it

    def refs(self) -> list[tuple[str, str]]:
        return sorted({(m.group(1), m.group(2)) for v in _strings(self.config) if (m := REF.match(v))})

    def upstream(self) -> list[str]:
        return sorted({n for n, _ in self.refs()} | set(self.after))


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def substitute(value, mapping: Callable[[str], str | None]):
    """Replace every `${...}` string (whole value, or `${out}/...`) for which `mapping` has an answer."""
    if isinstance(value, str):
        if value == OUT or value.startswith(OUT + "/"):
            base = mapping(OUT)
            return value if base is None else base.rstrip("/") + value[len(OUT):]
        m = REF.match(value)
        found = mapping(f"${{{m.group(1)}.{m.group(2)}}}") if m else None
        return value if found is None else found.rstrip("/") + (m.group(3) or "")
    if isinstance(value, dict):
        return {k: substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, mapping) for v in value]
    return value


def load_stage(path: str) -> Stage:
    module, _, attr = path.partition(":")
    try:
        stage = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise DagError(f"unknown stage {path!r} ({exc})") from None
    if not isinstance(stage, Stage):
        raise DagError(f"{path!r} is not a Stage")
    return stage


def validate(nodes: list[Node], missing_paths_ok: bool = False) -> list[Node]:
    """Check the whole recipe; return the nodes in a topological order (stable: recipe order).
    `missing_paths_ok`: local input paths may be absent (planning a run for another machine)."""
    by_name: dict[str, Node] = {}
    for node in nodes:
        if node.name in by_name or node.name == "out":
            raise DagError(f"node {node.name!r}: duplicate or reserved name")
        by_name[node.name] = node
    for node in nodes:
        bad = {k: v for k, v in node.resources.items() if k not in RESOURCES or not isinstance(v, int | float) or v < 0}
        if bad:
            raise DagError(f"node {node.name!r}: resources {bad}: each must be one of {sorted(RESOURCES)}, >= 0")
        try:
            stage = load_stage(node.stage)
        except DagError as exc:
            raise DagError(f"node {node.name!r}: {exc}") from None
        if node.registered_model and len(stage.models) != 1:
            raise DagError(f"node {node.name!r}: registered_model={node.registered_model!r} needs a stage with one "
                           f"model output (its stage has {list(stage.models)})")
        for up, output in node.refs():
            if up not in by_name:
                raise DagError(f"node {node.name!r}: references ${{{up}.{output}}} but the recipe has no node {up!r}")
            if output not in load_stage(by_name[up].stage).outputs:
                raise DagError(f"node {node.name!r}: node {up!r} has no output {output!r} "
                               f"(it has {list(load_stage(by_name[up].stage).outputs)})")
        for up in node.after:
            if up not in by_name:
                raise DagError(f"node {node.name!r}: runs after {up!r}, which is not in the recipe")
        try:
            stage.config.model_validate(substitute(node.config, lambda ref: f"{PLACEHOLDER}{ref[2:-1]}"))
        except ValidationError as exc:
            # an upstream output does not exist yet: checks of such paths (e.g. "exists") wait for the run
            real = [e for e in exc.errors() if not str(e.get("input", "")).startswith(PLACEHOLDER)
                    and not (missing_paths_ok and "path does not exist" in str(e.get("msg", "")))]
            if real:
                raise DagError(f"node {node.name!r}: config error: {exc}") from None
    order, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise DagError(f"node {name!r}: cycle {' -> '.join(cycle)}")
        state[name] = "visiting"
        for up in by_name[name].upstream():
            visit(up, path + [name])
        state[name] = "done"
        order.append(by_name[name])

    for node in nodes:
        visit(node.name, [])
    return order


def check_inputs(nodes: list[Node]) -> None:
    """Every node whose inputs exist before the run (no upstream outputs) is checked against them now,
    so that a mismatch fails the run before the first node, not after hours of upstream work."""
    for node in nodes:
        stage = load_stage(node.stage)
        if stage.check is None or node.refs():
            continue
        try:
            stage.check(stage.config.model_validate(substitute(node.config, lambda ref: PLACEHOLDER + "out")))
        except (ValueError, OSError) as exc:
            raise DagError(f"node {node.name!r}: {exc}") from None


def descendants(nodes: list[Node], roots: set[str]) -> set[str]:
    found = set(roots)
    for node in nodes:  # topological order: one pass suffices
        if set(node.upstream()) & found:
            found.add(node.name)
    return found


def cache_key(node: Node, stage: Stage, input_digests: dict[str, str]) -> str:
    """sha256 of (stage, stage version, unresolved config, digest of every referenced output)."""
    doc = {"stage": node.stage, "version": stage.version, "config": node.config,
           "inputs": dict(sorted(input_digests.items()))}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def to_json(nodes: list[Node]) -> list[dict]:
    return [{"name": n.name, "stage": n.stage, "config": n.config, "after": n.after}
            | ({"resources": n.resources} if n.resources else {})
            | ({"registered_model": n.registered_model} if n.registered_model else {}) for n in nodes]


def from_json(rows: list[dict]) -> list[Node]:
    return [Node(r["name"], r["stage"], r["config"], list(r.get("after", [])), dict(r.get("resources", {})),
                 r.get("registered_model")) for r in rows]


def task_options(node: Node, stage: Stage) -> dict:
    """Ray options of the node's task: the stage's CPUs unless the node says otherwise."""
    return {"num_cpus": stage.num_cpus} | node.resources
