"""Fields every dataset manifest carries: sources with digests, tokenizer, config, code version."""

from __future__ import annotations

import hashlib
import json
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


def common_fields(cfg: BaseModel, sources: list[SourceFile], per_source: list[dict], tok: LladaTokenizer,
                  trained: bool) -> dict:
    digests = source_digests(sources)
    config = json.dumps(cfg.model_dump(mode="json", exclude=NOT_CONTENT), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False)
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
