"""Fields every dataset manifest carries: sources with digests, tokenizer, config, code version."""

from __future__ import annotations

import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from llada_core import storage
from llada_core.data.sources import SourceFile
from llada_core.data.tokenizer import LladaTokenizer
from llada_core.version import code_version


def source_digests(sources: list[SourceFile]) -> list[str]:
    """Full-content sha256 of every input file (MLflow's dataset digest covers only part of it)."""

    def one(src: SourceFile) -> str:
        fs, path = storage.resolve(src.uri)
        return storage.sha256_of(fs, path)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, sources))


def tokenizer_manifest(tok: LladaTokenizer, trained: bool) -> dict:
    return {
        "digest": tok.digest,
        "vocab_size": tok.vocab_size,
        "special_tokens": {role: {"token": tok.special[role], "id": tok.id_of(role)} for role in tok.special},
        "added_roles": tok.added_roles,
        "trained": trained,
    }


# Where a dataset is written and how it is run change nothing in it: left out of its manifest, so the
# same inputs give the same dataset digest wherever (and with however many workers) it is written.
NOT_CONTENT = {"out", "overwrite", "verbose", "num_workers"}


def _config(cfg: BaseModel) -> str:
    return json.dumps(cfg.model_dump(mode="json", exclude=NOT_CONTENT), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def content_key(cfg: BaseModel, tok: LladaTokenizer) -> str:
    """What a prepared range depends on besides its files: the config's content, the tokenizer, the code."""
    return json.dumps({"config": _config(cfg), "tokenizer": tok.digest, "code": code_version()}, sort_keys=True)


def merge_records(records: list[dict], sources: list[SourceFile]) -> dict:
    """The dataset's shards and statistics from its ranges' records (in range order); warns once per
    range that skipped a non-UTF-8 document."""
    shards: dict[str, list[dict]] = {}
    rows: dict[str, int] = {}
    splits: dict[str, dict[str, int]] = {}
    skipped: dict[str, int] = {}
    files: dict[int, dict] = {}
    digests: dict[int, str] = {}
    for r in records:
        for split, entries in r["shards"].items():
            shards.setdefault(split, []).extend(entries)
            rows[split] = rows.get(split, 0) + sum(e["rows"] for e in entries)
        for split, stats in r["splits"].items():
            into = splits.setdefault(split, dict.fromkeys(stats, 0))
            for k, v in stats.items():
                into[k] += v
        for k, v in r["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        files |= {int(k): v for k, v in r["files"].items()}
        digests |= {int(k): v for k, v in r["digests"].items()}
        if r.get("bad_utf8_in"):
            print(f"warning: skipping non-UTF-8 record(s) in {r['bad_utf8_in']}", file=sys.stderr)
    zero = dict.fromkeys(next(iter(files.values()), {}), 0)
    return {"shards": shards, "rows": rows, "splits": splits, "skipped": skipped,
            "longest": max((r.get("longest", 0) for r in records), default=0),
            "per_source": [files.get(i, dict(zero)) for i in range(len(sources))],
            "digests": [digests[i] for i in range(len(sources))]}


def common_fields(cfg: BaseModel, sources: list[SourceFile], per_source: list[dict], tok: LladaTokenizer,
                  trained: bool, digests: list[str] | None = None) -> dict:
    """`digests`: each source's sha256 when the workers that read them computed it (else read here)."""
    digests = digests if digests is not None else source_digests(sources)
    config = _config(cfg)
    return {
        "sources": [
            {"uri": s.uri, "bytes": s.size, "sha256": d, **stats}
            for s, d, stats in zip(sources, digests, per_source, strict=True)
        ],
        "tokenizer": tokenizer_manifest(tok, trained),
        "config": config,
        "config_digest": hashlib.sha256(config.encode()).hexdigest(),
        "code_version": code_version(),
    }
