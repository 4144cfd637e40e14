"""MLflow 3 logged models for node outputs that are models (a stage's `models`), and the Model
Registry entry of a node that names one (`Node.registered_model`).

A model is created PENDING when its node starts (source run = the node's run, params = the node's
config), tagged with its artifact URI and digest and set READY when the node succeeds (FAILED when
it fails). The weights stay where the node wrote them (local or s3://); MLflow holds the record. A
registered version carries the lineage as tags (run id, node, cache key, code version, run store,
every upstream dataset's digest), which `llada lineage models:/NAME/VERSION` walks back from.
`model_id` is always passed explicitly: MLflow 3.5+ silently drops the link when a stale active run
is around (MLflow #21836).
"""

from __future__ import annotations

import json

from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from pipelines.tracking import Tracker, redact

TAG_RUN, TAG_NODE, TAG_STORE, TAG_MODEL = "llada.run_id", "llada.node", "llada.store", "llada.model_id"


def start(tracker: Tracker, node: str, outputs: tuple[str, ...], run: str, params: dict[str, str],
          tags: dict[str, str]) -> dict[str, str]:
    """{output: model_id} of new PENDING models, one per model output of the node."""
    ids = {}
    for output in outputs:
        model = tracker.client.create_logged_model(
            tracker.experiment_id, name=f"{node}.{output}" if len(outputs) > 1 else node, source_run_id=run,
            params=dict(list(params.items())[:100]), tags={k: redact(str(v)) for k, v in tags.items()})
        ids[output] = model.model_id
    return ids


def abandon(tracker: Tracker, ids: dict[str, str]) -> None:
    """FAILED for the models of an attempt that never finished (its driver was killed): those still
    PENDING, when the node runs again; a READY one (a finished attempt re-run by force) stays READY."""
    for model_id in ids.values():
        if tracker.client.get_logged_model(model_id).status == LoggedModelStatus.PENDING:
            tracker.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)


def finish(tracker: Tracker, ids: dict[str, str], run: str, outputs: dict[str, dict] | None) -> None:
    """READY with the output's URI and digest, linked to the run as its output; FAILED when `outputs`
    is None (the node failed)."""
    for output, model_id in ids.items():
        if outputs is None:
            tracker.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            continue
        out = outputs[output]
        tracker.client.set_logged_model_tags(model_id, {"llada.uri": redact(out["uri"]), "llada.digest": out["digest"]})
        tracker.client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    if outputs is not None and ids:
        tracker.client.log_outputs(run, [LoggedModelOutput(model_id, step=0) for model_id in ids.values()])


def register(tracker: Tracker, name: str, model_id: str, run: str, tags: dict[str, str]) -> str:
    """A new version of registered model `name` (created on first use); returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        tracker.client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # the source as the model's own location: a models:/ source is looked up through MLflow's global
    # tracking URI, not this client's. The SQL registry keeps no model_id: the link both ways is a tag
    # (the version's llada.model_id; the model's mlflow.modelVersions, as mlflow.register_model sets it)
    model = tracker.client.get_logged_model(model_id)
    version = tracker.client.create_model_version(
        name, source=model.artifact_location, run_id=run, model_id=model_id,
        tags={k: redact(str(v)) for k, v in tags.items()} | {TAG_MODEL: model_id})
    linked = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS, "[]")) + [{"name": name, "version": version.version}]
    tracker.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})
    return str(version.version)


def lineage_tags(doc: dict, store_root: str, run_id: str, node: str) -> dict[str, str]:
    """What a registered version records of where it came from (doc: pipelines.lineage.lineage)."""
    me = doc["nodes"][node]
    tags = {TAG_RUN: run_id, TAG_NODE: node, TAG_STORE: store_root, "llada.cache_key": me["cache_key"],
            "llada.config_hash": me["config_hash"], "llada.git_sha": str((me["code_version"] or {}).get("git_sha"))}
    for name, rec in doc["nodes"].items():
        for ds in rec["datasets"]:
            tags[f"llada.dataset.{name}.{ds['output']}"] = ds["digest"]
    return tags


def resolve(uri: str, tracking_uri: str) -> tuple[str, str, str]:
    """models:/NAME/VERSION -> (run store, run id, node) from the version's lineage tags."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, _, version = uri.removeprefix("models:/").rpartition("/")
    if not name or not version.isdigit():
        raise KeyError(f"{uri}: expected models:/NAME/VERSION")

    try:
        tags = MlflowClient(tracking_uri).get_model_version(name, version).tags
    except MlflowException as exc:
        raise KeyError(f"{uri}: not found in {redact(tracking_uri)} ({exc.message.splitlines()[0]})") from None
    missing = [t for t in (TAG_STORE, TAG_RUN, TAG_NODE) if t not in tags]
    if missing:
        raise KeyError(f"{uri} has no lineage tags {missing}: it was not registered by a llada run")
    return tags[TAG_STORE], tags[TAG_RUN], tags[TAG_NODE]
