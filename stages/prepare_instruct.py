"""Stages: chat-templated SFT examples and DPO pairs (`llada data prepare-sft|prepare-dpo`).

Output rows are unpadded (padding to a multiple of the block size happens at train time):
  sft: input_ids list<int32> (prompt + response), prompt_len int32
  dpo: chosen_ids, rejected_ids list<int32> (each prompt + response), prompt_len int32
Examples longer than `max_len` are an error or dropped (`on_too_long`), counted in the manifest.
"""

from __future__ import annotations

import sys
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from llada_core.cluster import ensure_ray
from llada_core.config import StrictModel
from llada_core.data.manifest import common_fields
from llada_core.data.ray_pipeline import stream_encoded
from llada_core.data.shards import DatasetWriter
from llada_core.data.sources import DataError, check_columns, check_input_exists, list_sources
from llada_core.data.tokenizer import load_tokenizer

COLUMNS = {"sft": [("prompt", "response"), ("messages",)], "dpo": [("prompt", "chosen", "rejected")]}
SEQ_COLUMNS = {"sft": ("input_ids",), "dpo": ("chosen_ids", "rejected_ids")}


def schema_of(kind: str) -> pa.Schema:
    return pa.schema([(c, pa.list_(pa.int32())) for c in SEQ_COLUMNS[kind]] + [("prompt_len", pa.int32())])


class InstructDataSettings(StrictModel):
    """What a recipe's `instruct:` section sets of both instruction data stages."""

    max_len: int = Field(2048, ge=4)
    on_too_long: Literal["error", "drop"] = "drop"
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    on_bad_utf8: Literal["skip", "fail"] = "skip"
    rows_per_shard: int = Field(8192, ge=1)


class PrepareInstructConfig(InstructDataSettings):
    kind: Literal["sft", "dpo"]
    input: str  # jsonl/parquet file, directory, glob or s3:// URI
    out: str
    tokenizer: str  # the pretraining dataset's tokenizer dir (DST/tokenizer) or any HF tokenizer
    add_mask_token: str | None = None
    seed: int = 0
    num_workers: int = Field(2, ge=1)
    overwrite: bool = False
    verbose: bool = False

    _paths_exist = field_validator("input", "tokenizer")(check_input_exists)


def run(cfg: PrepareInstructConfig) -> dict:
    sources = list_sources(cfg.input)
    columns = check_columns(sources, COLUMNS[cfg.kind])
    schema = schema_of(cfg.kind)
    writer = DatasetWriter(cfg.out, schema, cfg.rows_per_shard, cfg.overwrite)
    writer.check_target()
    tok = load_tokenizer(cfg.tokenizer, add_mask_token=cfg.add_mask_token)
    ensure_ray()

    seq_cols = SEQ_COLUMNS[cfg.kind]
    per_source = [{"examples": 0} for _ in sources]
    splits = {s: {"examples": 0, "tokens": 0} for s in ("train", "val")}
    skipped = {"bad_utf8": 0, "too_long": 0}
    max_seen = 0
    writer.open()
    try:
        for name, data in tok.files().items():
            writer.write_file(f"tokenizer/{name}", data)
        for table in stream_encoded(sources, columns, tok, cfg.kind, cfg.seed, cfg.val_fraction, cfg.num_workers,
                                    cfg.verbose):
            file_nos = table["file_no"].to_pylist()
            errors = table["error"].to_pylist()
            for i, err in enumerate(errors):
                if err:
                    raise DataError(f"{sources[file_nos[i]].uri}: bad record: {err}")
            bad = table["bad_utf8"].to_numpy(zero_copy_only=False)
            if bad.any():
                uri = sources[file_nos[int(bad.argmax())]].uri
                if cfg.on_bad_utf8 == "fail":
                    raise DataError(f"{uri}: not valid UTF-8 (on_bad_utf8=fail)")
                skipped["bad_utf8"] += int(bad.sum())
                print(f"warning: skipping non-UTF-8 record in {uri}", file=sys.stderr)
            lengths = [pc.list_value_length(table[c]).to_numpy(zero_copy_only=False) for c in seq_cols]
            longest = lengths[0] if len(lengths) == 1 else lengths[0].clip(min=lengths[1])
            too_long = (longest > cfg.max_len) & ~bad
            if too_long.any():
                if cfg.on_too_long == "error":
                    i = int(too_long.argmax())
                    raise DataError(
                        f"{sources[file_nos[i]].uri}: an example has {int(longest[i])} tokens > max_len={cfg.max_len} "
                        "(set on_too_long=drop to skip such examples)"
                    )
                skipped["too_long"] += int(too_long.sum())
            keep = ~bad & ~too_long
            is_val = table["is_val"].to_numpy(zero_copy_only=False)
            rows = {c: table[c].to_pylist() for c in (*seq_cols, "prompt_len")}
            for i in keep.nonzero()[0]:
                split = "val" if is_val[i] else "train"
                writer.add(split, **{c: rows[c][i] for c in rows})
                splits[split]["examples"] += 1
                splits[split]["tokens"] += int(sum(lg[i] for lg in lengths))
                per_source[file_nos[i]]["examples"] += 1
                max_seen = max(max_seen, int(longest[i]))
        if not sum(s["examples"] for s in splits.values()):
            raise DataError(f"input {cfg.input} yields no usable example (skipped: {skipped})")
        return writer.commit(
            {
                "format": f"llada-{cfg.kind}-v1",
                "kind": cfg.kind,
                "max_len": cfg.max_len,
                "longest_example": max_seen,
                "splits": {s: dict(v, rows=writer.rows.get(s, 0)) for s, v in splits.items()},
                "skipped": skipped,
                **common_fields(cfg, sources, per_source, tok, trained=False),
            }
        )
    except BaseException:
        writer.abort()
        raise
