"""Run a stage as a Ray Train worker group (Ray Train V2): one TorchTrainer, world size = layout.

Checkpoints: every worker writes its dist-checkpoint shard files into its own local temp dir and
reports it; Ray merges the files of all workers into one checkpoint under `storage_path/name`
(local or s3://, through pyarrow) and registers it only once every worker reported, so a torn write
is never picked up. After a worker failure (`FailureConfig(max_failures)`), Ray restarts the group
and `ray.train.get_checkpoint()` hands back the latest REGISTERED checkpoint, which may be older
than the newest one written: the loop simply redoes those steps (they are deterministic).
Per-step metrics go from rank 0 straight to the driver through a Ray queue, not through report();
each checkpoint also carries the latest steps' metrics, which a restore replays (marked
`replayed`), so steps a killed driver never logged are not lost.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, ControllerError, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue

from llada_core import storage
from llada_core.cluster import ClusterError, ensure_ray
from llada_core.config import canonical_json
from llada_core.trainer.config import TrainingConfig
from llada_core.trainer.digests import problem

METRICS_FILE, METRICS_REPLAY = "metrics_replay.json", 1000
START_TIMEOUT_ENV, MIN_PLACEMENT_WAIT_S = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 60.0  # Ray Train's default


def _worker_loop(config: dict) -> None:
    from llada_core.trainer.loop import Trainer

    cfg = TrainingConfig.model_validate_json(config["training"])
    trainer = Trainer(cfg)  # Ray Train already created the (gloo / nccl) process group
    rank = ray.train.get_context().get_world_rank()
    queue = config.get("metrics") if rank == 0 else None
    # The driver may not have logged every step a checkpoint covers when it dies; each checkpoint
    # carries the latest steps' metrics and a restore replays them (the driver skips logged steps).
    recent: deque[dict] = deque(maxlen=METRICS_REPLAY)
    recent.extend(_restore(trainer, ray.train.get_checkpoint()))
    for m in recent if queue is not None else ():
        queue.put(m | {"replayed": True})

    def save(trainer: Trainer, metrics: dict) -> None:
        local = tempfile.mkdtemp(prefix=f"llada-ckpt-{rank}-")
        trainer.save_shards(local, extra={METRICS_FILE: json.dumps(list(recent))} if rank == 0 else None)
        # report() only with checkpoints: each report waits for the controller's next poll
        # (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s), which per step would cap a tiny model at 0.5 steps/s
        # (a synchronous upload into storage_path; the local copy is removed after it, not left per rank)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local),
                         delete_local_checkpoint_after_upload=True)

    def on_step(trainer: Trainer, metrics: dict) -> None:
        recent.append(metrics)
        if config.get("on_step"):
            config["on_step"](trainer, metrics)

    trainer.run(save, on_metrics=(lambda step, m: queue.put(m)) if queue is not None else None, on_step=on_step)


def _restore(trainer, latest: ray.train.Checkpoint | None) -> list[dict]:
    """Load Ray Train's latest checkpoint or, when a crash tore it, the newest intact one beside it
    (saying which it skipped and why); returns the metrics it carries for replay. Each candidate is
    fetched and verified once (Trainer.load checks its digests before touching any state); none
    intact is one error naming them all."""
    if latest is None:
        return []
    import pyarrow.fs as pafs

    from llada_core.model.hf_config import CheckpointError

    fs, parent = latest.filesystem, os.path.dirname(latest.path.rstrip("/"))
    found = fs.get_file_info(pafs.FileSelector(parent))
    siblings = sorted((i.path for i in found if i.type == pafs.FileType.Directory
                       and i.base_name.startswith("checkpoint_")), reverse=True)
    reasons = []
    for path in [latest.path] + [p for p in siblings if p != latest.path]:
        with ray.train.Checkpoint(path, filesystem=fs).as_directory() as directory:
            try:
                trainer.load(directory)
            except CheckpointError as exc:
                reasons.append(f"{path}: {exc}")
                continue
            if reasons:
                print(f"warning: restored {path}; skipped {'; '.join(reasons)}", file=sys.stderr, flush=True)
            replay = os.path.join(directory, METRICS_FILE)
            if not os.path.exists(replay):
                return []
            with open(replay, encoding="utf-8") as fh:
                return json.load(fh)
    raise CheckpointError("no intact checkpoint to restore: " + "; ".join(reasons))


def _write_consolidated(directory: str, out: str, cfg: TrainingConfig) -> int | None:
    """The consolidated checkpoint of a local training checkpoint, streamed in this process (tensor
    by tensor: llada_core.consolidate), never gathered on a rank; an older copy (a redone node) is
    replaced. Returns its step, or None (saying why) when the checkpoint is torn."""
    from llada_core.consolidate import consolidate
    from llada_core.data.shards import read_manifest
    from llada_core.data.tokenizer import load_tokenizer
    from llada_core.trainer.config import STATE_FILE, resolve_model_config

    if reason := problem(directory):
        print(f"warning: checkpoint {directory} skipped: {reason}", file=sys.stderr, flush=True)
        return None
    step = json.loads(Path(directory, STATE_FILE).read_text())["step"]
    storage.delete(out)
    consolidate(directory, out, resolve_model_config(cfg, read_manifest(cfg.data)),
                load_tokenizer(storage.join(cfg.data, "tokenizer")), {"stage": cfg.name, "step": step})
    return step


def _export(result: ray.train.Result, cfg: TrainingConfig, export: str | None, candidates: str | None,
            state: str | None = None) -> None:
    """`export` from the final checkpoint; `state`: the final checkpoint itself (sharded, with the
    optimizer: what a next node continues from); under `candidates`, step-NNNNNNN from every intact
    checkpoint of the run (newest first: a redone step's latest copy)."""
    import pyarrow.fs as pafs

    from llada_core.model.hf_config import CheckpointError
    from llada_core.trainer.config import STATE_FILE

    if export or state:
        with result.checkpoint.as_directory() as directory:
            if export and _write_consolidated(directory, export, cfg) is None:
                raise CheckpointError(f"the final checkpoint {result.checkpoint.path} is torn")
            if state:
                with storage.output_dir(state) as tmp:
                    shutil.copytree(directory, tmp, dirs_exist_ok=True)
    if not candidates:
        return
    found = result.filesystem.get_file_info(pafs.FileSelector(result.path))
    done: set[int] = set()
    for path in sorted((i.path for i in found if i.type == pafs.FileType.Directory
                        and i.base_name.startswith("checkpoint_")), reverse=True):
        with ray.train.Checkpoint(path, filesystem=result.filesystem).as_directory() as directory:
            if reason := problem(directory):
                print(f"warning: checkpoint {path} skipped: {reason}", file=sys.stderr, flush=True)
                continue
            step = json.loads(Path(directory, STATE_FILE).read_text())["step"]
            if step not in done:
                _write_consolidated(directory, storage.join(candidates, f"step-{step:07d}"), cfg)
                done.add(step)


def _consume(queue: Queue, done: threading.Event, total: int, name: str, on_metrics, progress: bool) -> None:
    while not (done.is_set() and queue.empty()):
        try:
            m = queue.get(timeout=0.5)
        except Exception:  # ray.util.queue.Empty
            continue
        if on_metrics:
            on_metrics(int(m["step"]), m)
        if not progress:
            continue
        width = 30
        filled = int(width * m["step"] / total)
        sys.stderr.write(f"\r{name} [{'#' * filled}{'.' * (width - filled)}] step {m['step']}/{total} "
                         f"loss {m['loss']:.4f} lr {m['lr']:.2e} {m['tokens_per_s']:.0f} tok/s")
        sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")


def preflight(cfg: TrainingConfig, use_gpu: bool) -> None:
    """Everything about the layout that can fail, checked on the driver before any worker starts."""
    from llada_core.data.shards import read_manifest
    from llada_core.trainer.config import check_dataset, resolve_model_config, training_dtype

    if not use_gpu:  # the workers will have no CUDA: the precision is decidable here
        training_dtype(cfg)
    manifest = read_manifest(cfg.data)
    check_dataset(cfg, manifest)
    model_cfg = resolve_model_config(cfg, manifest)
    cfg.layout.check_model(model_cfg.num_layers, model_cfg.num_experts, model_cfg.num_heads,
                           model_cfg.num_kv_heads, model_cfg.vocab_size)


def check_schedulable(world: int, need: dict[str, float], wait_s: float = 0.0) -> None:
    """The connected cluster's nodes can hold `world` workers of `need` each, now or within `wait_s`
    (nodes an autoscaler adds); otherwise one error naming both, instead of a worker group that
    waits for ever."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        fits = sum(min(int(r.get(k, 0.0) // v) for k, v in need.items()) for r in nodes)
        if fits >= world:
            return
        if time.monotonic() >= deadline:
            have = "; ".join(", ".join(f"{k} {r.get(k, 0.0):g}" for k in need) for r in nodes)
            raise ClusterError(f"the worker group cannot be scheduled: {world} workers x "
                               f"{', '.join(f'{k} {v:g}' for k, v in need.items())} each, but the cluster's "
                               f"{len(nodes)} node(s) have [{have}] (room for {fits}); lower parallel.world_size "
                               "or training.cpus_per_worker, add nodes, or raise training.wait_for_resources_s")
        time.sleep(2.0)


def run_training(cfg: TrainingConfig, storage_path: str, max_failures: int = 0, use_gpu: bool = False,
                 cpus_per_worker: float = 1.0, on_step: Callable | None = None, wait_for_resources_s: float = 0.0,
              on_metrics: Callable[[int, dict], None] | None = None, progress: bool = True,
              export: str | None = None, candidates: str | None = None, state: str | None = None) -> ray.train.Result:
    """Run (or resume: same name + storage_path) a stage on the connected Ray cluster; at the end
    write the consolidated checkpoint `export` (and one under `candidates` per checkpoint step),
    streamed here from the sharded checkpoints after the worker group finished, and copy the final
    sharded checkpoint to `state` (what a next node's init_state continues from).
    Every step's metrics reach `on_metrics(step, metrics)` on the driver (steps redone after a
    restart are reported again) and a progress bar on stderr. `on_step(trainer, metrics)` runs in
    every worker after every step (tests inject faults there; it must be picklable by value)."""
    preflight(cfg, use_gpu)
    ensure_ray()
    check_schedulable(cfg.layout.world_size, {"CPU": cpus_per_worker} | ({"GPU": 1.0} if use_gpu else {}),
                      wait_for_resources_s)
    done = threading.Event()
    queue = Queue() if on_metrics or progress else None  # rank 0 sends per-step metrics only when read here
    consumer = threading.Thread(target=_consume, args=(queue, done, cfg.steps, cfg.name, on_metrics, progress),
                                daemon=True)
    if queue is not None:
        consumer.start()
    # Ray Train waits this long for the group's placement, then retries (for ever by default)
    os.environ[START_TIMEOUT_ENV] = str(max(wait_for_resources_s, MIN_PLACEMENT_WAIT_S))
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"training": canonical_json(cfg), "on_step": on_step, "metrics": queue},
        scaling_config=ScalingConfig(num_workers=cfg.layout.world_size, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage.resolve(storage_path)[1] if storage.is_s3(storage_path) else storage_path,
            # S3 through the project's filesystem: same endpoint / credential handling as the data stage
            storage_filesystem=storage.s3_filesystem() if storage.is_s3(storage_path) else None,
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=max_failures),
            # a candidates node keeps every checkpoint: each becomes a merge candidate
            checkpoint_config=CheckpointConfig(num_to_keep=None if candidates else cfg.keep_checkpoints),
        ),
    )
    try:
        result = trainer.fit()
    except ControllerError as exc:
        # by name: the class lives in Ray Train's internals
        if type(exc.controller_failure).__name__ == "WorkerGroupStartupTimeoutError":
            free = ray.available_resources()
            gpus = f" / GPU {free.get('GPU', 0.0):g}" if use_gpu else ""
            raise ClusterError(
                f"the worker group was not scheduled within {os.environ[START_TIMEOUT_ENV]} s "
                f"({max_failures + 1} attempt(s)): {cfg.layout.world_size} workers x CPU {cpus_per_worker:g}"
                f"{' + GPU 1' if use_gpu else ''} each, the cluster has CPU {free.get('CPU', 0.0):g}{gpus} "
                "free now (other jobs hold the rest); "
                "raise training.wait_for_resources_s or free the cluster") from None
        raise
    finally:
        done.set()
        if consumer.is_alive():
            consumer.join(timeout=30)
        if queue is not None:
            queue.shutdown()
    _export(result, cfg, export, candidates, state)
    return result
