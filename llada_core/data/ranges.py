"""Prepare a dataset in parallel by ranges of input files, each range resumable on its own.

The sorted input files are cut into contiguous ranges of about `range_bytes` (`plan_ranges`: a
function of the files alone, never of the worker count). Each range is one call of a Ray Data actor
(one tokenizer per actor, `num_workers` actors): it reads its files, encodes them, assigns documents
to train/val, turns them into rows (`RangeJob.rows`: packing for pretraining, one example per row
for SFT / DPO) and writes its own shards, `SPLIT/part-RRRRR-KKKK.parquet`, straight to the output
(local or s3://), then its record `ranges/RRRRR.json` (shards with sha256, per-file statistics and
digests), last. The driver handles only the plan and these records: no token passes through it.

A range is done iff its record exists, was made with the same key (config, tokenizer, files, code)
and its shards match their sha256: a prepare interrupted at 90% redoes only the missing ranges. The
output is the same whatever the number of workers, and byte-identical across runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from pydantic import Field

from llada_core import storage
from llada_core.config import StrictModel
from llada_core.data.shards import ShardWriter
from llada_core.data.sources import DataError, SourceFile, iter_records
from llada_core.data.tokenizer import LladaTokenizer

RANGES = "ranges"
ENCODE_BATCH = 256  # records per tokenizer call


class RangeSettings(StrictModel):
    """The knob every parallel prepare has."""

    # input bytes per range: the unit of parallel work and of resume; each range's last row per split
    # is padded (CHOICE: no state crosses ranges, so any worker count gives the same rows)
    range_bytes: int = Field(64 << 20, ge=1)


def split_of(key: str, seed: int, val_fraction: float) -> bool:
    """True iff the document/example with this key belongs to the validation split."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\0".encode() + key.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < val_fraction


def plan_ranges(sources: list[SourceFile], range_bytes: int) -> list[list[int]]:
    """Contiguous groups of file numbers of about `range_bytes` each (a larger file is a range alone)."""
    ranges, current, size = [], [], 0
    for i, src in enumerate(sources):
        if current and size + src.size > range_bytes:
            ranges.append(current)
            current, size = [], 0
        current.append(i)
        size += src.size
    return ranges + ([current] if current else [])


@dataclass
class RangeJob:
    """What a range's worker builds rows with: `builder(tok, **kwargs)` has `rows(records, file_no, uri)`
    (a batch of records -> (split, row columns) pairs), `finish()` (what is left at the range's end)
    and `summary()` (its statistics, JSON); it raises DataError for a record the policy refuses."""

    schema: pa.Schema
    rows_per_shard: int
    builder: type
    kwargs: dict


class Utf8Policy:
    """What a builder does with a record that is not valid UTF-8 (`on_bad_utf8`: skip or fail)."""

    def __init__(self, on_bad_utf8: str):
        self.on_bad_utf8, self.skipped, self.first_in = on_bad_utf8, 0, None

    def is_bad(self, record: dict, uri: str) -> bool:
        """True for a record to skip; raises DataError under `fail`."""
        if not record.get("__bad_utf8__"):
            return False
        if self.on_bad_utf8 == "fail":
            raise DataError(f"{uri}: not valid UTF-8 (on_bad_utf8=fail)")
        self.skipped += 1
        self.first_in = self.first_in or uri
        return True


def range_key(index: int, files: list[SourceFile], content: str) -> str:
    doc = {"index": index, "files": [[f.uri, f.size, f.mtime_ns] for f in files], "content": content}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def record_path(root: str, index: int) -> str:
    return f"{root}/{RANGES}/{index:05d}.json"


def finished_record(fs, root: str, index: int, key: str) -> dict | None:
    """The range's record when it is done with this key and every shard it lists is intact."""
    try:
        record = json.loads(storage.read_bytes(fs, record_path(root, index)))
    except (FileNotFoundError, ValueError):
        return None
    if record.get("key") != key:
        return None
    for shard in (s for shards in record["shards"].values() for s in shards):
        try:
            if hashlib.sha256(storage.read_bytes(fs, f"{root}/{shard['path']}")).hexdigest() != shard["sha256"]:
                return None
        except FileNotFoundError:
            return None
    return record


class RangeWorker:
    """Ray Data callable class: each call prepares one range (batch_size=1)."""

    def __init__(self, tokenizer_json: str, special: dict, job: RangeJob, sources: list[SourceFile],
                 columns: dict[str, tuple[str, ...]], root_uri: str):
        self.tok = LladaTokenizer.from_json(tokenizer_json, special)
        self.job, self.sources, self.columns = job, sources, columns
        self.fs, self.root = storage.resolve(root_uri)

    def __call__(self, batch: dict) -> dict:
        index, key = int(batch["index"][0]), str(batch["key"][0])
        done = finished_record(self.fs, self.root, index, key)  # verified here, in parallel, not on the driver
        if done is not None:
            return {"index": [index], "record": [json.dumps(done | {"resumed": True})]}
        writer = ShardWriter(self.fs, self.root, self.job.schema, self.job.rows_per_shard, f"part-{index:05d}")
        writer.delete_own()  # an earlier attempt's shards of this range, if any
        builder = self.job.builder(self.tok, **self.job.kwargs)
        digests, error = {}, None
        try:
            for file_no in json.loads(batch["files"][0]):
                src = self.sources[file_no]
                digests[str(file_no)] = storage.sha256_of(*storage.resolve(src.uri))
                for records in _batches(iter_records(src, self.columns[src.uri])):
                    for split, row in builder.rows(records, file_no, src.uri):
                        writer.add(split, **row)
            for split, row in builder.finish():
                writer.add(split, **row)
        except DataError as exc:  # the driver fails the whole prepare with it, naming the file
            error = str(exc)
        record = {"key": key, "index": index, "shards": writer.close(), "digests": digests, "error": error,
                  **builder.summary()}
        if error is None:  # written last: the range is done
            storage.write_bytes(self.fs, record_path(self.root, index),
                                json.dumps(record, sort_keys=True, indent=1).encode())
        return {"index": [index], "record": [json.dumps(record)]}


def _batches(records: Iterator[dict]) -> Iterator[list[dict]]:
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) >= ENCODE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def run_ranges(todo: list[tuple[int, list[int], str]], worker_args: dict, num_workers: int, local_output: bool,
               verbose: bool = False) -> Iterator[dict]:
    """Prepare the ranges (index, file numbers, key) on an actor pool; yields each range's record."""
    if not todo:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    remote_args = {}
    if local_output:  # a local output lives on this node's disk: its writers must run here
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote_args["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                            soft=False)
    items = [{"index": i, "files": json.dumps(files), "key": key} for i, files, key in todo]  # small: no tokens
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(RangeWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=num_workers),
                        num_cpus=1, fn_constructor_kwargs=worker_args, **remote_args)
    for row in ds.iter_rows():
        yield json.loads(row["record"])


def flat_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list<int32> column, zero-copy where possible."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy()
    return arr.values.to_numpy(zero_copy_only=False), offsets


def prepare_ranges(staging_uri: str, local: bool, sources: list[SourceFile], columns: dict[str, tuple[str, ...]],
                   tok: LladaTokenizer, job: RangeJob, content: str, range_bytes: int, num_workers: int,
                   verbose: bool = False) -> list[dict]:
    """Every range's record, in range order: finished ones kept (their workers verify them), the rest
    prepared. Raises DataError with the first failed range's message."""
    plan = plan_ranges(sources, range_bytes)
    _forget_ranges_beyond(staging_uri, job, len(plan))
    todo = [(i, files, range_key(i, [sources[f] for f in files], content)) for i, files in enumerate(plan)]
    args = {"tokenizer_json": tok.to_json(), "special": tok.special, "job": job, "sources": sources,
            "columns": columns, "root_uri": staging_uri}
    records = {}
    for record in run_ranges(todo, args, num_workers, local, verbose):
        if record["error"]:
            raise DataError(record["error"])
        records[record["index"]] = record
    return [records[i] for i in range(len(plan))]


def _forget_ranges_beyond(staging_uri: str, job: RangeJob, n: int) -> None:
    """An earlier attempt of a different input may have left more ranges than this plan has."""
    fs, root = storage.resolve(staging_uri)
    for info in fs.get_file_info(pafs.FileSelector(f"{root}/{RANGES}", allow_not_found=True)):
        index = info.base_name.removesuffix(".json")
        if index.isdigit() and int(index) >= n:
            ShardWriter(fs, root, job.schema, 1, f"part-{int(index):05d}").delete_own()
            fs.delete_file(info.path)
