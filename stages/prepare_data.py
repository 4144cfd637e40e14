"""Stage: tokenize + pack a pretraining corpus into fixed-length rows (`llada data prepare`).

Contract: DST/manifest.json + DST/{train,val}/part-RRRRR-KKKKK.parquet with `input_ids` and `doc_ids`
(list<int32>, length seq_len), DST/tokenizer/. See llada_core.data.packing for the row format.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from llada_core.cluster import ensure_ray
from llada_core.config import StrictModel
from llada_core.data.manifest import common_fields, content_key, merge_records
from llada_core.data.packing import PAD_DOC, RowPacker
from llada_core.data.ranges import RANGES, RangeJob, RangeSettings, Utf8Policy, flat_lists, prepare_ranges, split_of
from llada_core.data.shards import SPLITS, DatasetWriter
from llada_core.data.sources import (
    DataError,
    SourceFile,
    check_columns,
    check_input_exists,
    iter_records,
    list_sources,
)
from llada_core.data.tokenizer import LladaTokenizer, load_tokenizer, train_bpe

PACKED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_ids", pa.list_(pa.int32()))])


class TokenizerSpec(StrictModel):
    path: str | None = None  # tokenizer.json or HF tokenizer directory
    train: bool = False  # train a byte-level BPE on the input instead
    vocab_size: int = Field(8192, ge=264)
    add_mask_token: str | None = None  # token to add when a loaded tokenizer has no mask token
    train_max_bytes: int = Field(64 << 20, gt=0)  # cap on the text the BPE trainer sees
    # words a trained BPE keeps as one token each (e.g. " 9"); the recipe adds its built-in tasks' symbols
    single_tokens: list[str] = []

    _path_exists = field_validator("path")(check_input_exists)

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.path) == self.train:
            raise ValueError("path: give exactly one of tokenizer.path or tokenizer.train=true")
        if self.path and self.single_tokens:
            raise ValueError("single_tokens: only a trained tokenizer (train=true) can be given whole words")
        return self


class PretrainDataSettings(RangeSettings):
    """What a recipe's `data:` section sets; the recipe adds the wiring (PrepareDataConfig)."""

    tokenizer: TokenizerSpec = TokenizerSpec(train=True)
    val_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    on_bad_utf8: Literal["skip", "fail"] = "skip"
    rows_per_shard: int = Field(4096, ge=1)


class PrepareDataConfig(PretrainDataSettings):
    input: str  # file, directory, glob, s3:// URI, or `stdlib`
    out: str
    seq_len: int = Field(ge=2)
    seed: int = 0  # salts the train/val document hash
    num_workers: int = Field(2, ge=1)  # Ray Data actors, one range at a time each
    overwrite: bool = False
    verbose: bool = False

    _input_exists = field_validator("input")(check_input_exists)


def _training_texts(sources: list[SourceFile], max_bytes: int, on_bad_utf8: str):
    seen, utf8 = 0, Utf8Policy(on_bad_utf8)
    for src in sources:
        for record in iter_records(src, ("text",)):
            if utf8.is_bad(record, src.uri):
                continue
            yield record["text"]
            seen += len(record["text"])
            if seen >= max_bytes:
                return


def build_tokenizer(spec: TokenizerSpec, sources: list[SourceFile], on_bad_utf8: str) -> LladaTokenizer:
    if spec.path:
        return load_tokenizer(spec.path, add_mask_token=spec.add_mask_token)
    return train_bpe(_training_texts(sources, spec.train_max_bytes, on_bad_utf8), spec.vocab_size,
                     single_tokens=spec.single_tokens)


class PackBuilder:
    """One range's rows: its documents (+EOS) packed per split (llada_core.data.packing)."""

    def __init__(self, tok: LladaTokenizer, seq_len: int, seed: int, val_fraction: float, on_bad_utf8: str):
        self.tok, self.seed, self.val_fraction, self.utf8 = tok, seed, val_fraction, Utf8Policy(on_bad_utf8)
        self.packers = {s: RowPacker(seq_len, tok.ids["eos"], tok.ids["pad"]) for s in SPLITS}
        self.files: dict[str, dict] = {}
        self.empty = 0
        self.pad = dict.fromkeys(SPLITS, 0)

    def rows(self, records: list[dict], file_no: int, uri: str):
        texts = [record["text"] for record in records if not self.utf8.is_bad(record, uri)]
        stats = self.files.setdefault(str(file_no), {"documents": 0, "tokens": 0})
        docs: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
        for text, ids in zip(texts, self.tok.encode_batch(texts) if texts else [], strict=True):
            if not ids:
                self.empty += 1
                continue
            stats["documents"] += 1
            stats["tokens"] += len(ids) + 1
            docs["val" if split_of(text, self.seed, self.val_fraction) else "train"].append(ids)
        for split, batch in docs.items():
            if batch:
                values, offsets = flat_lists(pa.array(batch, type=pa.list_(pa.int32())))
                for row_ids, row_docs in self.packers[split].add_batch(values, offsets):
                    yield split, {"input_ids": row_ids, "doc_ids": row_docs}

    def finish(self):
        for split, packer in self.packers.items():
            for row_ids, row_docs in packer.flush():
                self.pad[split] += int((row_docs == PAD_DOC).sum())
                yield split, {"input_ids": row_ids, "doc_ids": row_docs}

    def summary(self) -> dict:
        splits = {s: {"documents": p.documents, "tokens": p.tokens, "pad_tokens": self.pad[s]}
                  for s, p in self.packers.items()}
        return {"files": self.files, "skipped": {"bad_utf8": self.utf8.skipped, "empty": self.empty},
                "splits": splits, "bad_utf8_in": self.utf8.first_in}


def run(cfg: PrepareDataConfig) -> dict:
    """Run the stage; returns the manifest. Raises DataError before writing on bad input. Ranges of
    the input are packed in parallel and a re-run continues an interrupted one (llada_core.data.ranges)."""
    sources = list_sources(cfg.input)
    columns = check_columns(sources, [("text",)])
    writer = DatasetWriter(cfg.out, PACKED_SCHEMA, cfg.rows_per_shard, cfg.overwrite)
    writer.check_target()
    tok = build_tokenizer(cfg.tokenizer, sources, cfg.on_bad_utf8)
    ensure_ray()
    writer.open(resumable=True)
    try:
        for name, data in tok.files().items():
            writer.write_file(f"tokenizer/{name}", data)
        job = RangeJob(PACKED_SCHEMA, cfg.rows_per_shard, PackBuilder,
                       {"seq_len": cfg.seq_len, "seed": cfg.seed, "val_fraction": cfg.val_fraction,
                        "on_bad_utf8": cfg.on_bad_utf8})
        records = prepare_ranges(writer.staging_uri, writer.local, sources, columns, tok, job, content_key(cfg, tok),
                                 cfg.range_bytes, cfg.num_workers, cfg.verbose)
        merged = merge_records(records, sources)
        splits = merged["splits"]
        if not any(s["documents"] for s in splits.values()):
            raise DataError(f"input {cfg.input} has no non-empty UTF-8 document")
        manifest = writer.commit(
            {
                "format": "llada-packed-v1",
                "kind": "pretrain",
                "seq_len": cfg.seq_len,
                "splits": {s: dict(v, rows=merged["rows"].get(s, 0)) for s, v in splits.items()},
                "skipped": merged["skipped"],
                "ranges": len(records),
                **common_fields(cfg, sources, merged["per_source"], tok, trained=cfg.tokenizer.train,
                                digests=merged["digests"]),
            },
            shards=merged["shards"], drop=(RANGES,),
        )
    except DataError:  # bad input: nothing to continue from
        writer.abort(discard=True)
        raise
    except BaseException:  # interrupted: the finished ranges stay for the next run
        writer.abort()
        raise
    return manifest
