"""Tokens/s of `llada data prepare` (Ray Data) vs a plain single-process loop, same tokenizer and
corpus, measured side by side in one run; and how it changes with the number of Ray workers.

  .venv/bin/python bench/data_throughput.py [--input stdlib] [--seq-len 1024] [--workers 1 2 4]

Ray is started once before timing (cluster start-up is not charged to either side); each Ray row
includes Ray Data's per-execution overhead, source hashing and Parquet writing, which the plain
loop does not do (it only reads, tokenizes and packs) — so the ratio is a lower bound on the
speed of the tokenize+pack part.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from llada_core.cluster import ensure_ray  # noqa: E402
from llada_core.data.packing import RowPacker  # noqa: E402
from llada_core.data.sources import iter_records, list_sources  # noqa: E402
from llada_core.data.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from stages.prepare_data import PrepareDataConfig, TokenizerSpec, run  # noqa: E402


def plain_loop(spec: str, tok_dir: str, seq_len: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    tok = load_tokenizer(tok_dir)
    packer = RowPacker(seq_len, tok.id_of("eos"), tok.id_of("pad"))
    rows = 0
    for src in list_sources(spec):
        for record in iter_records(src, ("text",)):
            if record.get("__bad_utf8__"):
                continue
            ids = np.asarray(tok.encode_batch([record["text"]])[0], np.int32)  # same encode path as the stage
            if len(ids):
                rows += sum(1 for _ in packer.add_batch(ids, np.array([0, len(ids)])))
    rows += sum(1 for _ in packer.flush())
    return packer.tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default="stdlib")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="llada-bench-")
    sources = list_sources(args.input)
    texts = (r["text"] for s in sources for r in iter_records(s, ("text",)) if "text" in r)
    tok_dir = os.path.join(work, "tok")
    train_bpe(texts, args.vocab_size).save(tok_dir)
    ensure_ray()

    tokens, secs = plain_loop(args.input, tok_dir, args.seq_len)
    base = tokens / secs
    print(f"corpus {args.input}: {len(sources)} files, {sum(s.size for s in sources) / 1e6:.1f} MB, {tokens:,} tokens; "
          f"cpus={os.cpu_count()}")
    print(f"{'path':<28}{'seconds':>9}{'tokens/s':>12}{'vs plain':>10}")
    print(f"{'plain loop (1 process)':<28}{secs:>9.2f}{base:>12,.0f}{1.0:>10.2f}")
    for n in args.workers:
        cfg = PrepareDataConfig(input=args.input, out=os.path.join(work, f"ray{n}"), seq_len=args.seq_len,
                                tokenizer=TokenizerSpec(path=tok_dir), num_workers=n)
        t0 = time.perf_counter()
        manifest = run(cfg)
        secs = time.perf_counter() - t0
        got = sum(s["tokens"] for s in manifest["splits"].values())
        assert got == tokens, (got, tokens)  # both paths must see the same tokens
        print(f"{f'llada data prepare, {n} worker(s)':<28}{secs:>9.2f}{got / secs:>12,.0f}{got / secs / base:>10.2f}")


if __name__ == "__main__":
    main()
