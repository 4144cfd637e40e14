"""Per-file digests of a training checkpoint, so a restore can tell an intact checkpoint from one a
crash tore (e.g. a truncated .distcp left by an interrupted upload).

Each rank writes `digest-rankNNNNN.json` last, listing the files it wrote (its DCP shards
`__RANK_*.distcp`; rank 0 also the metadata, trainer state and metrics) with size and sha256. A
checkpoint is intact when every rank's digest is there and every listed file matches it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llada_core.storage import file_sha256

PREFIX = "digest-rank"


def write_digest(directory: str | Path, rank: int, world: int) -> None:
    directory = Path(directory)
    names = sorted(n for n in os.listdir(directory) if not n.startswith(PREFIX))
    mine = [n for n in names if n.startswith(f"__{rank}_")] + (
        [n for n in names if not n.endswith(".distcp")] if rank == 0 else [])
    files = {n: {"bytes": (directory / n).stat().st_size, "sha256": file_sha256(directory / n)} for n in mine}
    target = directory / f"{PREFIX}{rank:05d}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"world": world, "files": files}, sort_keys=True))
    os.replace(tmp, target)


def problem(directory: str | Path) -> str | None:
    """Why the checkpoint at `directory` cannot be trusted, or None when it is intact."""
    directory = Path(directory)
    parts = sorted(directory.glob(f"{PREFIX}*.json"))
    if not parts:
        return "no per-file digests (written last: the checkpoint was never finished)"
    docs = [json.loads(p.read_text()) for p in parts]
    if len(docs) != docs[0]["world"]:
        return f"digests of {len(docs)} of {docs[0]['world']} ranks"
    for doc in docs:
        for name, want in doc["files"].items():
            path = directory / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != want["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, its digest says {want['bytes']} (truncated)"
            if file_sha256(path) != want["sha256"]:
                return f"{name}: sha256 differs from its digest (corrupted)"
    return None
