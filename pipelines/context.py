"""What a stage function gets besides its config: where to write, where to log (its MLflow run, the
pipeline's parent run, metrics per step, metrics of an input model on an input dataset), and the
driver's console for progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class NodeContext:
    """What a stage function gets besides its config."""

    run_id: str
    node: str
    cache_key: str
    out_dir: str  # this node's output directory (local path or s3:// URI)
    train_storage: str  # Ray Train storage_path for training nodes (in the run store)
    tracking_uri: str
    mlflow_run: str
    parent_run: str | None = None  # the pipeline run's MLflow run
    info: dict = field(default_factory=dict)  # stage facts kept on the node record (e.g. first step)
    progress_queue: object = None  # to the driver's console (pipelines.progress)
    # each upstream output this node reads, by its URI: name (NODE.OUTPUT), digest, model_id if a model
    inputs: dict = field(default_factory=dict)
    _client: object = None
    _last_step: int | None = None
    _last_progress: float = float("-inf")

    def report_progress(self, step: int, total: int, **values) -> None:
        """step / total (and loss, tokens_per_s) for the driver's console, at most every 2 s."""
        now = time.monotonic()
        if self.progress_queue is None or (now - self._last_progress < 2.0 and step < total):
            return
        self._last_progress = now
        self.progress_queue.put((self.node, step, total, values))

    def _tracker(self):
        if self._client is None:
            from mlflow import MlflowClient
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def log_metrics(self, step: int, metrics: dict) -> None:
        """Per-step metrics into the node's MLflow run. Steps already logged by an interrupted
        attempt (redone after restoring an older checkpoint) are skipped: no duplicates, no gap."""
        from pipelines.tracking import metric_name

        if self._last_step is None:
            history = self._tracker().get_metric_history(self.mlflow_run, "loss")
            self._last_step = max((m.step for m in history), default=0)
        if step <= self._last_step:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool)]
        self._tracker().log_batch(self.mlflow_run, metrics=items)
        self._last_step = step

    def log_model_metrics(self, model_uri: str, metrics: dict[str, float], dataset_uri: str) -> None:
        """Metrics of an input model measured on an input dataset, on this node's run, linked to the
        model's logged model and to the dataset (name and digest); a model input that is no logged
        model (made outside the pipeline) gets the run metrics only."""
        from mlflow.entities import Metric

        from pipelines.tracking import metric_name

        model, data = self.inputs.get(model_uri.rstrip("/"), {}), self.inputs.get(dataset_uri.rstrip("/"), {})
        ts = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), ts, 0, model_id=model.get("model_id"),
                        dataset_name=data.get("name"), dataset_digest=(data.get("digest") or "")[:36] or None)
                 for k, v in metrics.items()]
        if items:
            self._tracker().log_batch(self.mlflow_run, metrics=items)

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Metrics that summarize the whole pipeline run (e.g. each model's eval results), on its
        parent MLflow run: the experiment's runs table and compare view show them side by side."""
        from mlflow.entities import Metric

        from pipelines.tracking import metric_name

        ts = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), ts, 0) for k, v in metrics.items()]
        if self.parent_run and items:
            self._tracker().log_batch(self.parent_run, metrics=items)
