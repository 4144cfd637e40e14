"""Stages: chat-templated SFT examples and DPO pairs (`llada data prepare-sft|prepare-dpo`).

Output rows are unpadded (padding to a multiple of the block size happens at train time):
  sft: input_ids list<int32> (prompt + response), prompt_len int32
  dpo: chosen_ids, rejected_ids list<int32> (each prompt + response), prompt_len int32
Examples longer than `max_len` are an error or dropped (`on_too_long`), counted in the manifest.
"""

from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator

from llada_core.cluster import ensure_ray
from llada_core.data.chat import encode_example, encode_prompt, encode_response, to_messages
from llada_core.data.manifest import common_fields, content_key, merge_records
from llada_core.data.ranges import RANGES, RangeJob, RangeSettings, Utf8Policy, prepare_ranges, split_of
from llada_core.data.shards import SPLITS, DatasetWriter
from llada_core.data.sources import DataError, check_columns, check_input_exists, list_sources
from llada_core.data.tokenizer import LladaTokenizer, load_tokenizer

COLUMNS = {"sft": [("prompt", "response"), ("messages",)], "dpo": [("prompt", "chosen", "rejected")]}
SEQ_COLUMNS = {"sft": ("input_ids",), "dpo": ("chosen_ids", "rejected_ids")}


def schema_of(kind: str) -> pa.Schema:
    return pa.schema([(c, pa.list_(pa.int32())) for c in SEQ_COLUMNS[kind]] + [("prompt_len", pa.int32())])


class InstructDataSettings(RangeSettings):
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


class ExampleBuilder:
    """One range's rows: one chat-templated example (SFT) or pair (DPO) per row."""

    def __init__(self, tok: LladaTokenizer, kind: str, seed: int, val_fraction: float, max_len: int,
                 on_too_long: str, on_bad_utf8: str):
        self.tok, self.kind, self.seed, self.val_fraction = tok, kind, seed, val_fraction
        self.max_len, self.on_too_long, self.utf8 = max_len, on_too_long, Utf8Policy(on_bad_utf8)
        self.files: dict[str, dict] = {}
        self.splits = {s: {"examples": 0, "tokens": 0} for s in SPLITS}
        self.too_long = self.longest = 0

    def _encode(self, rec: dict) -> tuple[dict, str]:
        """(row columns, the key its split is drawn from: the prompt messages)."""
        if self.kind == "sft":
            messages = to_messages(rec)
            ids, prompt_len = encode_example(self.tok, messages)
            return {"input_ids": ids, "prompt_len": prompt_len}, json.dumps(messages[:-1], sort_keys=True)
        messages = [{"role": "user", "content": rec["prompt"]}]
        prompt = encode_prompt(self.tok, messages)
        row = {"chosen_ids": prompt + encode_response(self.tok, rec["chosen"]),
               "rejected_ids": prompt + encode_response(self.tok, rec["rejected"]), "prompt_len": len(prompt)}
        return row, json.dumps(messages, sort_keys=True)

    def rows(self, records: list[dict], file_no: int, uri: str):
        stats = self.files.setdefault(str(file_no), {"examples": 0})
        for rec in records:
            if self.utf8.is_bad(rec, uri):
                continue
            try:
                row, key = self._encode(rec)
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{uri}: bad record: {type(exc).__name__}: {exc}") from None
            lengths = [len(row[c]) for c in SEQ_COLUMNS[self.kind]]
            if max(lengths) > self.max_len:
                if self.on_too_long == "error":
                    raise DataError(f"{uri}: an example has {max(lengths)} tokens > max_len={self.max_len} "
                                    "(set on_too_long=drop to skip such examples)")
                self.too_long += 1
                continue
            split = "val" if split_of(key, self.seed, self.val_fraction) else "train"
            self.splits[split]["examples"] += 1
            self.splits[split]["tokens"] += sum(lengths)
            stats["examples"] += 1
            self.longest = max(self.longest, max(lengths))
            yield split, row

    def finish(self):
        return iter(())

    def summary(self) -> dict:
        return {"files": self.files, "skipped": {"bad_utf8": self.utf8.skipped, "too_long": self.too_long},
                "splits": self.splits, "longest": self.longest, "bad_utf8_in": self.utf8.first_in}


def run(cfg: PrepareInstructConfig) -> dict:
    """Ranges of the input are encoded in parallel and a re-run continues an interrupted one
    (llada_core.data.ranges)."""
    sources = list_sources(cfg.input)
    columns = check_columns(sources, COLUMNS[cfg.kind])
    schema = schema_of(cfg.kind)
    writer = DatasetWriter(cfg.out, schema, cfg.rows_per_shard, cfg.overwrite)
    writer.check_target()
    tok = load_tokenizer(cfg.tokenizer, add_mask_token=cfg.add_mask_token)
    ensure_ray()
    writer.open(resumable=True)
    try:
        for name, data in tok.files().items():
            writer.write_file(f"tokenizer/{name}", data)
        job = RangeJob(schema, cfg.rows_per_shard, ExampleBuilder,
                       {"kind": cfg.kind, "seed": cfg.seed, "val_fraction": cfg.val_fraction, "max_len": cfg.max_len,
                        "on_too_long": cfg.on_too_long, "on_bad_utf8": cfg.on_bad_utf8})
        records = prepare_ranges(writer.staging_uri, writer.local, sources, columns, tok, job, content_key(cfg, tok),
                                 cfg.range_bytes, cfg.num_workers, cfg.verbose)
        merged = merge_records(records, sources)
        if not sum(s["examples"] for s in merged["splits"].values()):
            raise DataError(f"input {cfg.input} yields no usable example (skipped: {merged['skipped']})")
        return writer.commit(
            {
                "format": f"llada-{cfg.kind}-v1",
                "kind": cfg.kind,
                "max_len": cfg.max_len,
                "longest_example": merged["longest"],
                "splits": {s: dict(v, rows=merged["rows"].get(s, 0)) for s, v in merged["splits"].items()},
                "skipped": merged["skipped"],
                "ranges": len(records),
                **common_fields(cfg, sources, merged["per_source"], tok, trained=False, digests=merged["digests"]),
            },
            shards=merged["shards"], drop=(RANGES,),
        )
    except DataError:  # bad input: nothing to continue from
        writer.abort(discard=True)
        raise
    except BaseException:  # interrupted: the finished ranges stay for the next run
        writer.abort()
        raise
