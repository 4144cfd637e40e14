"""Stage: tokenize + pack a pretraining corpus into fixed-length rows (`llada data prepare`).

Contract: DST/manifest.json + DST/{train,val}/part-NNNNN.parquet with `input_ids` and `doc_ids`
(list<int32>, length seq_len), DST/tokenizer/. See llada_core.data.packing for the row format.
"""

from __future__ import annotations

import sys
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from llada_core.cluster import ensure_ray
from llada_core.config import StrictModel
from llada_core.data.manifest import common_fields
from llada_core.data.packing import PAD_DOC, RowPacker
from llada_core.data.ray_pipeline import flat_lists, stream_encoded
from llada_core.data.shards import DatasetWriter
from llada_core.data.sources import (
    DataError,
    SourceFile,
    check_columns,
    check_input_exists,
    iter_records,
    list_sources,
)
from llada_core.data.tokenizer import LladaTokenizer, load_tokenizer, train_bpe

SPLITS = ("train", "val")
PACKED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_ids", pa.list_(pa.int32()))])


class TokenizerSpec(StrictModel):
    path: str | None = None  # tokenizer.json or HF tokenizer directory
    train: bool = False  # train a byte-level BPE on the input instead
    vocab_size: int = Field(8192, ge=264)
    add_mask_token: str | None = None  # token to add when a loaded tokenizer has no mask token
    train_max_bytes: int = Field(64 << 20, gt=0)  # cap on the text the BPE trainer sees

    _path_exists = field_validator("path")(check_input_exists)

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.path) == self.train:
            raise ValueError("path: give exactly one of tokenizer.path or tokenizer.train=true")
        return self


class PretrainDataSettings(StrictModel):
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
    num_workers: int = Field(2, ge=1)  # tokenizer actors
    overwrite: bool = False
    verbose: bool = False

    _input_exists = field_validator("input")(check_input_exists)


def _training_texts(sources: list[SourceFile], max_bytes: int, on_bad_utf8: str):
    seen = 0
    for src in sources:
        for record in iter_records(src, ("text",)):
            if record.get("__bad_utf8__"):
                if on_bad_utf8 == "fail":
                    raise DataError(f"{src.uri}: not valid UTF-8 (on_bad_utf8=fail)")
                continue
            yield record["text"]
            seen += len(record["text"])
            if seen >= max_bytes:
                return


def build_tokenizer(spec: TokenizerSpec, sources: list[SourceFile], on_bad_utf8: str) -> LladaTokenizer:
    if spec.path:
        return load_tokenizer(spec.path, add_mask_token=spec.add_mask_token)
    return train_bpe(_training_texts(sources, spec.train_max_bytes, on_bad_utf8), spec.vocab_size)


def run(cfg: PrepareDataConfig) -> dict:
    """Run the stage; returns the manifest. Raises DataError before writing on bad input."""
    sources = list_sources(cfg.input)
    columns = check_columns(sources, [("text",)])
    writer = DatasetWriter(cfg.out, PACKED_SCHEMA, cfg.rows_per_shard, cfg.overwrite)
    writer.check_target()
    tok = build_tokenizer(cfg.tokenizer, sources, cfg.on_bad_utf8)
    ensure_ray()

    ids = tok.ids
    packers = {s: RowPacker(cfg.seq_len, ids["eos"], ids["pad"]) for s in SPLITS}
    per_source = [{"documents": 0, "tokens": 0} for _ in sources]
    skipped = {"bad_utf8": 0, "empty": 0}
    writer.open()
    try:
        for name, data in tok.files().items():
            writer.write_file(f"tokenizer/{name}", data)
        for table in stream_encoded(sources, columns, tok, "pretrain", cfg.seed, cfg.val_fraction, cfg.num_workers,
                                    cfg.verbose):
            bad = table["bad_utf8"].to_numpy(zero_copy_only=False)
            if bad.any():
                first = sources[table["file_no"].to_pylist()[int(bad.argmax())]].uri
                if cfg.on_bad_utf8 == "fail":
                    raise DataError(f"{first}: not valid UTF-8 (on_bad_utf8=fail)")
                skipped["bad_utf8"] += int(bad.sum())
                print(f"warning: skipping non-UTF-8 document in {first}", file=sys.stderr)
            lengths = pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False)
            empty = (lengths == 0) & ~bad
            skipped["empty"] += int(empty.sum())
            keep = ~bad & ~empty
            for file_no, n in zip(table["file_no"].to_numpy(), lengths, strict=True):
                if n:
                    per_source[file_no]["documents"] += 1
                    per_source[file_no]["tokens"] += int(n) + 1
            is_val = table["is_val"].to_numpy(zero_copy_only=False)
            for split, mask in (("train", keep & ~is_val), ("val", keep & is_val)):
                if mask.any():
                    values, offsets = flat_lists(table.filter(pa.array(mask))["input_ids"])
                    for row_ids, row_docs in packers[split].add_batch(values, offsets):
                        writer.add(split, input_ids=row_ids, doc_ids=row_docs)
        splits = {}
        for split, packer in packers.items():
            pad = 0
            for row_ids, row_docs in packer.flush():
                pad += int((row_docs == PAD_DOC).sum())
                writer.add(split, input_ids=row_ids, doc_ids=row_docs)
            splits[split] = {"documents": packer.documents, "tokens": packer.tokens, "pad_tokens": pad}
        if not any(s["documents"] for s in splits.values()):
            raise DataError(f"input {cfg.input} has no non-empty UTF-8 document")
        manifest = writer.commit(
            {
                "format": "llada-packed-v1",
                "kind": "pretrain",
                "seq_len": cfg.seq_len,
                "splits": {s: dict(v, rows=writer.rows.get(s, 0)) for s, v in splits.items()},
                "skipped": skipped,
                **common_fields(cfg, sources, per_source, tok, trained=cfg.tokenizer.train),
            }
        )
    except BaseException:
        writer.abort()
        raise
    return manifest
