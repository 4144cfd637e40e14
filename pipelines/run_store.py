"""The run store: the source of truth of every pipeline run, a directory on local disk or S3.

  ROOT/runs/RUN_ID/run.json          the recipe, its DAG, the MLflow parent run, created/updated
  ROOT/runs/RUN_ID/nodes/NODE.json   state, cache key, attempts, timestamps, outputs, error, MLflow run
  ROOT/runs/RUN_ID/lock.json         held by the driver running the run (create-if-absent)
  ROOT/runs/RUN_ID/train/...         Ray Train checkpoints of the run's training nodes
  ROOT/cache/KEY.json                a SUCCEEDED node's outputs + digests, found by cache key
  ARTIFACT_ROOT/RUN_ID/NODE/         a node's outputs (ARTIFACT_ROOT: the run's, local or s3://)

These paths are spelled here and nowhere else (RunStore.node_output / train_storage / run_exists).

Every write is atomic (temp + rename locally; one PUT on S3). A cache entry is used only after its
outputs are found again with the recorded digests: a deleted or corrupted artifact is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime

import pyarrow.fs as pafs

from llada_core import storage

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "SKIPPED-CACHED")
DONE = ("SUCCEEDED", "SKIPPED-CACHED")
STALE_LOCK_S = 120.0  # a lock whose heartbeat is older than this belongs to a dead driver


class LockedError(RuntimeError):
    pass


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id(recipe: str) -> str:
    return f"{recipe}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def artifact_digest(uri: str) -> str | None:
    """sha256 of a file, or of a directory's (relative path, size, sha256) listing; None if absent."""
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.File:
        return storage.sha256_of(fs, path)
    digest = hashlib.sha256()
    files = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.type == pafs.FileType.File]
    for f in sorted(files, key=lambda f: f.path):
        rel = f.path[len(path):].lstrip("/")
        digest.update(f"{rel}\0{f.size}\0{storage.sha256_of(fs, f.path)}\n".encode())
    return digest.hexdigest() if files else None


class RunStore:
    def __init__(self, root: str):
        self.root = str(root).rstrip("/") if storage.is_s3(str(root)) else os.path.abspath(root)
        self.fs, self.base = storage.resolve(self.root)

    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    # -- where a run's things live --------------------------------------------------------------
    def train_storage(self, run_id: str) -> str:
        """Ray Train's storage_path for the run's training nodes."""
        return self.uri("runs", run_id, "train")

    def node_output(self, run_id: str, node: str) -> str:
        return storage.join(self.run(run_id)["artifact_root"], run_id, node)

    def run_exists(self, run_id: str) -> bool:
        return self.read(("runs", run_id, "run.json")) is not None

    def exists(self) -> bool:
        return self.fs.get_file_info(self._path("runs")).type != pafs.FileType.NotFound

    def node_state(self, run_id: str, rec: dict) -> str:
        """A node's state as a reader should see it: RUNNING only while a live driver holds the run."""
        if rec["state"] != "RUNNING":
            return rec["state"]
        holder = self.read(("runs", run_id, "lock.json"))
        return "RUNNING" if holder and not _stale(holder) else "INTERRUPTED"

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def write(self, parts: tuple[str, ...], doc: dict) -> None:
        storage.write_bytes(self.fs, self._path(*parts), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def read(self, parts: tuple[str, ...]) -> dict | None:
        path = self._path(*parts)
        return json.loads(storage.read_bytes(self.fs, path)) if storage.exists(self.fs, path) else None

    # -- runs and nodes -------------------------------------------------------------------------
    def run(self, run_id: str) -> dict:
        doc = self.read(("runs", run_id, "run.json"))
        if doc is None:
            raise KeyError(f"no run {run_id!r} in the run store {self.root}")
        return doc

    def write_run(self, run_id: str, doc: dict) -> None:
        self.write(("runs", run_id, "run.json"), doc | {"updated": now()})

    def node(self, run_id: str, name: str) -> dict:
        return self.read(("runs", run_id, "nodes", f"{name}.json")) or {"name": name, "state": "PENDING", "attempts": 0}

    def write_node(self, run_id: str, doc: dict) -> None:
        assert doc["state"] in STATES, doc["state"]
        self.write(("runs", run_id, "nodes", f"{doc['name']}.json"), doc)

    def runs(self) -> list[str]:
        selector = pafs.FileSelector(self._path("runs"), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.Directory)

    # -- cache ----------------------------------------------------------------------------------
    def cache_put(self, key: str, entry: dict) -> None:
        self.write(("cache", f"{key}.json"), entry)

    def cache_get(self, key: str) -> dict | None:
        entry = self.read(("cache", f"{key}.json"))
        return entry if entry and outputs_intact(entry["outputs"]) else None

    # -- the lock -------------------------------------------------------------------------------
    @contextmanager
    def lock(self, run_id: str):
        """One driver per run. A lock left by a killed driver (its pid gone on this host, or its
        heartbeat older than STALE_LOCK_S) is taken over; a live one raises LockedError."""
        parts = ("runs", run_id, "lock.json")
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        if not self._create(parts, me | {"heartbeat": time.time()}):
            holder = self.read(parts) or {}
            if not _stale(holder):
                raise LockedError(f"run {run_id} is being run by another driver (host {holder.get('host')}, "
                                  f"pid {holder.get('pid')}); wait for it or stop it first")
            self.fs.delete_file(self._path(*parts))
            if not self._create(parts, me | {"heartbeat": time.time()}):
                raise LockedError(f"run {run_id}: another driver took the lock first")
        stop = threading.Event()

        def beat():
            while not stop.wait(STALE_LOCK_S / 4):
                self.write(parts, me | {"heartbeat": time.time()})

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if (self.read(parts) or {}).get("token") == me["token"]:
                self.fs.delete_file(self._path(*parts))

    def _create(self, parts: tuple[str, ...], doc: dict) -> bool:
        """Create-if-absent: O_EXCL locally, a conditional PUT (If-None-Match) on S3."""
        body = json.dumps(doc).encode()
        if isinstance(self.fs, pafs.LocalFileSystem):
            path = self._path(*parts)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            return True
        import boto3
        from botocore.exceptions import ClientError

        bucket, _, key = self._path(*parts).partition("/")
        client = boto3.client("s3",
                              endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True


def _stale(holder: dict) -> bool:
    if not holder:
        return True
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError):
            pass
    return time.time() - float(holder.get("heartbeat", 0)) > STALE_LOCK_S


def outputs_intact(outputs: dict[str, dict]) -> bool:
    return all(artifact_digest(o["uri"]) == o["digest"] for o in outputs.values())
