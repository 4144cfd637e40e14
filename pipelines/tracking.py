"""MLflow lineage: one parent run per pipeline run, one child run per node.

Only the explicit `MlflowClient` API is used (never the fluent `mlflow.start_run`), so an inherited
`MLFLOW_RUN_ID` cannot redirect a node's logging (MLflow #15713). Runs are found again by tags
before one is created, so a resumed pipeline logs into the same runs and a node never gets two.
Every string that leaves for MLflow goes through `redact` (no credential reaches params or tags).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
_SECRET_PATTERNS = [
    re.compile(r"(?i)((?:secret|token|password|passwd|api[_-]?key|access[_-]?key)[\w.-]*\s*[=:]\s*)[^\s,;'\"]+"),
    re.compile(r"(://[^/\s:@]+:)[^@\s/]+(@)"),  # user:password@ in URLs
]
# MLflow 3 opens an experiment in the view this tag names (without it, the GenAI view)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
PARAM_MAX = 6000


def redact(text: str) -> str:
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***" + (m.group(2) if m.lastindex == 2 else ""), text)
    return text


def flatten(doc, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow-acceptable names, redacted, length-capped values."""
    out: dict[str, str] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out |= flatten(v, f"{prefix}{k}.")
    else:
        out[_NAME.sub("_", prefix.rstrip("."))[:250]] = redact(str(doc))[:PARAM_MAX]
    return out


def metric_name(name: str) -> str:
    return _NAME.sub("_", name)[:250]


def default_tracking_uri(workdir: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location,
                                                               tags=dict([EXPERIMENT_KIND]))
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND[0] not in exp.tags:  # made by an older version, or by hand
                self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)

    def _find(self, tags: dict[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=2)
        return runs[0].info.run_id if runs else None

    def parent_run(self, run_id: str, tags: dict[str, str]) -> str:
        found = self._find({"llada.run_id": run_id, "llada.kind": "pipeline"})
        if found:
            self.client.update_run(found, status="RUNNING")
            return found
        run = self.client.create_run(self.experiment_id, run_name=run_id,
                                     tags={"llada.run_id": run_id, "llada.kind": "pipeline", **tags})
        return run.info.run_id

    def child_run(self, parent: str, run_id: str, node: str, tags: dict[str, str]) -> str:
        found = self._find({"llada.run_id": run_id, "llada.node": node})
        if found:
            self.client.update_run(found, status="RUNNING")
            return found
        run = self.client.create_run(self.experiment_id, run_name=node, tags={
            MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: node, "llada.run_id": run_id, "llada.node": node,
            "llada.kind": "node", **tags})
        return run.info.run_id

    def set_tags(self, run: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_params(self, run: str, params: dict[str, str]) -> None:
        existing = self.client.get_run(run).data.params
        items = [Param(k, v) for k, v in params.items() if k not in existing]  # a resume re-logs nothing
        for i in range(0, len(items), 100):
            self.client.log_batch(run, params=items[i:i + 100])

    def log_dataset(self, run: str, name: str, uri: str, digest: str, context: str) -> None:
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        # MLflow's own dataset digest covers part of the data only (MLflow #22275): ours is the full one
        source = HTTPDatasetSource(url=redact(uri))
        entity = MetaDataset(source=source, name=name, digest=digest[:36])._to_mlflow_entity()
        tags = [InputTag("mlflow.data.context", context), InputTag("llada.digest", digest)]
        self.client.log_inputs(run, datasets=[DatasetInput(entity, tags)])

    def log_artifacts(self, run: str, local_dir: str, artifact_path: str) -> None:
        self.client.log_artifacts(run, local_dir, artifact_path)

    def end(self, run: str, status: str) -> None:
        self.client.set_terminated(run, status)
