"""Read + tokenize in parallel on Ray Data; the driver consumes encoded records in input order.

Stage 1 (tasks): each input file is read and split into records (streamed, never a whole
corpus in memory). Stage 2 (an actor pool of `num_workers` tokenizers): records are encoded and
assigned to train/val by a hash of the document. The driver iterates the result in input order
(`preserve_order`), which is what makes packing deterministic; packing itself is a cheap streaming
fold (llada_core.data.packing) that has to be sequential by definition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray

from llada_core.data.chat import encode_example, encode_prompt, encode_response, to_messages
from llada_core.data.sources import SourceFile, iter_records
from llada_core.data.tokenizer import LladaTokenizer

READ_BATCH = 256  # records per block out of a reader task
ENCODE_BATCH = 32  # records per tokenizer call: small enough that blocks stream to the packing driver


def split_of(key: str, seed: int, val_fraction: float) -> bool:
    """True iff the document/example with this key belongs to the validation split."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\0".encode() + key.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < val_fraction


def _read_files(batch: dict) -> Iterator[dict]:
    for file_no, uri, fmt, size, cols in zip(
        batch["file_no"], batch["uri"], batch["fmt"], batch["size"], batch["columns"], strict=True
    ):
        src = SourceFile(str(uri), str(fmt), int(size))
        out: dict[str, list] = {"file_no": [], "record": [], "bad_utf8": []}
        for record in iter_records(src, tuple(json.loads(cols))):
            bad = record.pop("__bad_utf8__", False)
            out["file_no"].append(int(file_no))
            out["record"].append("" if bad else json.dumps(record, ensure_ascii=False))
            out["bad_utf8"].append(bool(bad))
            if len(out["record"]) >= READ_BATCH:
                yield out
                out = {"file_no": [], "record": [], "bad_utf8": []}
        if out["record"]:
            yield out


def _lists(rows: list[list[int]]) -> pa.Array:
    return pa.array(rows, type=pa.list_(pa.int32()))


class Encoder:
    """Ray Data callable class: one tokenizer per actor. `kind` is pretrain | sft | dpo."""

    def __init__(self, tokenizer_json: str, special: dict, kind: str, seed: int, val_fraction: float):
        self.tok = LladaTokenizer.from_json(tokenizer_json, special)
        self.kind, self.seed, self.val_fraction = kind, seed, val_fraction

    def __call__(self, batch: pa.Table) -> pa.Table:
        good = [(i, json.loads(r)) for i, (r, bad) in enumerate(zip(batch["record"].to_pylist(),
                                                                    batch["bad_utf8"].to_pylist(), strict=True))
                if not bad]
        cols: dict[str, list] = {"file_no": batch["file_no"].to_pylist(), "bad_utf8": batch["bad_utf8"].to_pylist()}
        n = batch.num_rows
        if self.kind == "pretrain":
            ids: list[list[int]] = [[] for _ in range(n)]
            is_val = [False] * n
            texts = [rec["text"] for _, rec in good]
            for (i, rec), enc in zip(good, self.tok.encode_batch(texts), strict=True):
                ids[i] = enc
                is_val[i] = split_of(rec["text"], self.seed, self.val_fraction)
            return pa.table(cols | {"input_ids": _lists(ids), "is_val": is_val})
        out: dict[str, list] = {"error": [""] * n, "is_val": [False] * n, "prompt_len": [0] * n}
        seq_cols = ("input_ids",) if self.kind == "sft" else ("chosen_ids", "rejected_ids")
        for c in seq_cols:
            out[c] = [[] for _ in range(n)]
        for i, rec in good:
            try:
                if self.kind == "sft":
                    messages = to_messages(rec)
                    out["input_ids"][i], out["prompt_len"][i] = encode_example(self.tok, messages)
                else:
                    prompt = encode_prompt(self.tok, [{"role": "user", "content": rec["prompt"]}])
                    out["chosen_ids"][i] = prompt + encode_response(self.tok, rec["chosen"])
                    out["rejected_ids"][i] = prompt + encode_response(self.tok, rec["rejected"])
                    out["prompt_len"][i] = len(prompt)
                    messages = [{"role": "user", "content": rec["prompt"]}]
                key = json.dumps(messages[:-1] if self.kind == "sft" else messages, sort_keys=True)
                out["is_val"][i] = split_of(key, self.seed, self.val_fraction)
            except (ValueError, KeyError, TypeError) as exc:
                out["error"][i] = f"{type(exc).__name__}: {exc}"
        return pa.table(cols | {k: _lists(v) if k in seq_cols else v for k, v in out.items()})


def stream_encoded(
    sources: list[SourceFile],
    columns: dict[str, tuple[str, ...]],
    tok: LladaTokenizer,
    kind: str,
    seed: int,
    val_fraction: float,
    num_workers: int,
    verbose: bool = False,
) -> Iterator[pa.Table]:
    """Encoded records of all sources, in source order, as pyarrow tables (one per block)."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    items = [
        {"file_no": i, "uri": s.uri, "fmt": s.fmt, "size": s.size, "columns": json.dumps(columns[s.uri])}
        for i, s in enumerate(sources)
    ]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 64))
    # Logical CPU reservations (0.25 per reader task, 0.75 per tokenizer actor) leave room for the
    # I/O-light readers to run beside the actors; otherwise N actors on N cores starve the readers.
    ds = ds.map_batches(_read_files, batch_size=1, num_cpus=0.25)
    ds = ds.map_batches(
        Encoder,
        batch_format="pyarrow",
        batch_size=ENCODE_BATCH,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=num_workers),
        num_cpus=0.75,
        fn_constructor_kwargs={
            "tokenizer_json": tok.to_json(),
            "special": tok.special,
            "kind": kind,
            "seed": seed,
            "val_fraction": val_fraction,
        },
    )
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def flat_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list<int32> column, zero-copy where possible."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy()
    return arr.values.to_numpy(zero_copy_only=False), offsets
