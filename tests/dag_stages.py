"""Cheap stages for DAG tests: each run appends a line to a counter file, so tests can count executions."""

from __future__ import annotations

import os
import time
from pathlib import Path

from llada_core.config import StrictModel
from pipelines.dag import Stage


class WriteConfig(StrictModel):
    text: str
    out: str
    counter: str
    inputs: list[str] = []
    fail: bool = False
    sleep: float = 0.0


def _write(cfg: WriteConfig, ctx) -> dict:
    with open(cfg.counter, "a") as fh:
        fh.write(f"{ctx.node} {os.getpid()}\n")
    time.sleep(cfg.sleep)
    if cfg.fail:
        raise RuntimeError(f"{ctx.node} was told to fail")
    parts = [Path(p, "value.txt").read_text() for p in cfg.inputs] + [cfg.text]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "value.txt").write_text("+".join(parts))
    for step in range(1, 4):
        ctx.log_metrics(step, {"loss": 1.0 / step})
    return {"value": str(out)}


write = Stage(_write, WriteConfig, outputs=("value",))


class AssignedConfig(StrictModel):
    out: str


def _assigned(cfg: AssignedConfig, ctx) -> dict:
    """Writes the Ray resources its task was given."""
    import json

    import ray

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resources.json").write_text(json.dumps(ray.get_runtime_context().get_assigned_resources()))
    return {"value": str(out)}


assigned = Stage(_assigned, AssignedConfig, outputs=("value",))


write_model = Stage(_write, WriteConfig, outputs=("value",), models=("value",))  # its output is a model


class ScoreConfig(StrictModel):
    model: str
    data: str
    out: str


def _score(cfg: ScoreConfig, ctx) -> dict:
    """Measures an input model on an input dataset (the length of its value)."""
    value = Path(cfg.model, "value.txt").read_text()
    ctx.log_model_metrics(cfg.model, {"length": len(value)}, cfg.data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "score.txt").write_text(str(len(value)))
    return {"value": str(out)}


score = Stage(_score, ScoreConfig, outputs=("value",))
