"""Dataset directories: `DST/{split}/part-*.parquet` + `DST/manifest.json`, committed atomically.

A dataset is finished iff its manifest exists. Locally everything is written into a hidden
directory beside DST and renamed into place at commit (a crash leaves only that directory; a
resumable build, `open(resumable=True)`, names it `.DST.partial` and the next run continues it). On S3,
where there is no rename, shards go straight to their keys and the manifest (a single atomic PUT)
is written last; an overwrite deletes the old manifest first, so a half-rewritten prefix never
looks finished. Shards are byte-identical for identical inputs (fixed writer options, no
timestamps) and each one's sha256 is recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from llada_core import storage
from llada_core.data.sources import DataError

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
_PARQUET_OPTS = {"compression": "zstd", "compression_level": 3, "write_statistics": False}


def _list_array(rows: list[np.ndarray]) -> pa.ListArray:
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.concatenate(rows).astype(np.int32) if rows else np.empty(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))


class ShardWriter:
    """Rows of each split, written `rows_per_shard` at a time as `SPLIT/PREFIX-KKKKK.parquet` under
    `root` (a path of `fs`); `close()` -> {split: [{path, rows, bytes, sha256}]} in write order."""

    def __init__(self, fs: pafs.FileSystem, root: str, schema: pa.Schema, rows_per_shard: int, prefix: str = "part"):
        self.fs, self.root, self.schema, self.rows_per_shard, self.prefix = fs, root, schema, rows_per_shard, prefix
        self._buffers: dict[str, dict[str, list]] = {}
        self.shards: dict[str, list[dict]] = {}
        self.rows: dict[str, int] = {}

    def add(self, split: str, **columns) -> None:
        buf = self._buffers.setdefault(split, {name: [] for name in self.schema.names})
        for name in self.schema.names:
            buf[name].append(columns[name])
        self.rows[split] = self.rows.get(split, 0) + 1
        if len(buf[self.schema.names[0]]) >= self.rows_per_shard:
            self._flush(split)

    def close(self) -> dict[str, list[dict]]:
        for split in list(self._buffers):
            self._flush(split)
        return self.shards

    def delete_own(self) -> None:
        """Remove shards this writer's prefix names (an interrupted earlier attempt's)."""
        for split in SPLITS:
            listing = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{split}", allow_not_found=True))
            for info in listing:
                if info.base_name.startswith(self.prefix + "-"):
                    self.fs.delete_file(info.path)

    def _flush(self, split: str) -> None:
        buf = self._buffers.get(split)
        if not buf or not buf[self.schema.names[0]]:
            return
        arrays = []
        for field in self.schema:
            values = buf[field.name]
            arrays.append(_list_array(values) if pa.types.is_list(field.type) else pa.array(values, field.type))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **_PARQUET_OPTS)
        data = sink.getvalue().to_pybytes()
        relpath = f"{split}/{self.prefix}-{len(self.shards.get(split, [])):05d}.parquet"
        storage.write_bytes(self.fs, f"{self.root}/{relpath}", data)
        self.shards.setdefault(split, []).append(
            {"path": relpath, "rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
        self._buffers[split] = {name: [] for name in self.schema.names}


class DatasetWriter:
    def __init__(self, out_uri: str, schema: pa.Schema, rows_per_shard: int, overwrite: bool = False):
        self.out_uri, self.schema, self.rows_per_shard, self.overwrite = out_uri, schema, rows_per_shard, overwrite
        self.fs, self.out_path = storage.resolve(out_uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self._shards: ShardWriter | None = None
        self._staging: str | None = None
        self._resumable = False

    @property
    def rows(self) -> dict[str, int]:
        return self._shards.rows if self._shards else {}

    @property
    def staging_uri(self) -> str:
        """Where this dataset is built until commit (a local path, or the s3:// prefix itself)."""
        return self._staging if self.local else self.out_uri

    def check_target(self) -> None:
        """Fail before any compute when DST is already a finished dataset (unless overwriting)."""
        info = self.fs.get_file_info(self.out_path)
        if info.type == pafs.FileType.File:
            raise DataError(f"output {self.out_uri} is a file, not a directory")
        if storage.exists(self.fs, f"{self.out_path}/{MANIFEST}") and not self.overwrite:
            raise DataError(f"output {self.out_uri} already holds a dataset; pass --overwrite to replace it")
        if self.local and info.type == pafs.FileType.Directory and any(Path(self.out_path).iterdir()):
            if not storage.exists(self.fs, f"{self.out_path}/{MANIFEST}"):
                raise DataError(f"output {self.out_uri} exists and is not a dataset; refusing to replace it")

    def open(self, resumable: bool = False) -> None:
        """`resumable`: build in a fixed place (`.NAME.partial` beside DST; on S3 the prefix itself)
        that an interrupted run leaves behind and the next one continues."""
        self.check_target()
        if self.local:
            parent, name = os.path.split(self.out_path)
            os.makedirs(parent, exist_ok=True)
            tag = "partial" if resumable else f"tmp-{uuid.uuid4().hex[:8]}"
            self._resumable = resumable
            self._staging = os.path.join(parent, f".{name}.{tag}")
            os.makedirs(self._staging, exist_ok=resumable)
        else:
            self._staging = self.out_path
            if self.overwrite and storage.exists(self.fs, f"{self.out_path}/{MANIFEST}"):
                self.fs.delete_file(f"{self.out_path}/{MANIFEST}")
                self.fs.delete_dir_contents(self.out_path, missing_dir_ok=True)
        self._shards = ShardWriter(self.fs, self._staging, self.schema, self.rows_per_shard)

    def write_file(self, relpath: str, data: bytes) -> None:
        storage.write_bytes(self.fs, f"{self._staging}/{relpath}", data)

    def add(self, split: str, **columns) -> None:
        self._shards.add(split, **columns)

    def commit(self, manifest: dict, shards: dict[str, list[dict]] | None = None, drop: tuple[str, ...] = ()) -> dict:
        """Write the manifest (last) and publish. `shards`: the dataset's shards when others wrote them
        (parallel ranges); else the rows added here. `drop`: build-time directories left out."""
        manifest = dict(manifest, shards=shards if shards is not None else self._shards.close())
        for name in drop:
            if storage.exists(self.fs, f"{self._staging}/{name}"):
                self.fs.delete_dir(f"{self._staging}/{name}")
        self.write_file(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
        if self.local:
            old = None
            if os.path.exists(self.out_path):
                old = f"{self._staging}.old"
                os.rename(self.out_path, old)
            os.rename(self._staging, self.out_path)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        self._staging = None
        return manifest

    def abort(self, discard: bool = False) -> None:
        """After a failure: a resumable build keeps its finished parts for the next run, unless
        `discard` (bad input: a re-run with the same input would fail the same way)."""
        if self._staging and self.local and (discard or not self._resumable):
            shutil.rmtree(self._staging, ignore_errors=True)
        elif self._staging and discard:
            self.fs.delete_dir_contents(self._staging, missing_dir_ok=True)
        self._staging = None


def read_manifest(uri: str) -> dict:
    fs, path = storage.resolve(uri)
    try:
        return json.loads(storage.read_bytes(fs, f"{path}/{MANIFEST}"))
    except FileNotFoundError:
        raise DataError(f"{uri} is not a finished dataset (no {MANIFEST})") from None


def read_split(uri: str, split: str) -> pa.Table:
    """Read one split of a finished dataset, verifying every shard's sha256 against the manifest."""
    manifest = read_manifest(uri)
    fs, path = storage.resolve(uri)
    tables = []
    for shard in manifest["shards"].get(split, []):
        data = storage.read_bytes(fs, f"{path}/{shard['path']}")
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise DataError(f"{uri}/{shard['path']}: sha256 does not match the manifest (corrupted shard)")
        tables.append(pq.read_table(pa.BufferReader(data)))
    if not tables:
        raise DataError(f"{uri} has no '{split}' rows")
    return pa.concat_tables(tables)
