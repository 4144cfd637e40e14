"""Tokens/s of `llada data prepare` (ranges on Ray Data actors) vs a plain single-process loop, same
tokenizer and corpus, side by side in one run; and the driver's peak RSS at two corpus sizes.

  .venv/bin/python bench/data_throughput.py [--copies 18] [--seq-len 1024] [--workers 1 2] [--range-bytes N]

The corpus is the embedded stdlib corpus copied `--copies` times (~11 MB each) so that fixed costs
do not dominate. Ray is started before timing (cluster start-up is charged to neither side). The
plain loop reads, tokenizes and packs; each prepare row also hashes the sources, writes Parquet and
runs Ray Data (actor start-up, scheduling): the ratio is what a user gets, end to end. The driver's
peak RSS is its high-water mark during the prepare (Linux `clear_refs` restarts it before each).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from llada_core.cluster import ensure_ray  # noqa: E402
from llada_core.data.packing import RowPacker  # noqa: E402
from llada_core.data.sources import iter_records, list_sources, stdlib_files  # noqa: E402
from llada_core.data.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from stages.prepare_data import PrepareDataConfig, TokenizerSpec, run  # noqa: E402


def plain_loop(spec: str, tok_dir: str, seq_len: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    tok = load_tokenizer(tok_dir)
    packer = RowPacker(seq_len, tok.id_of("eos"), tok.id_of("pad"))
    for src in list_sources(spec):
        for record in iter_records(src, ("text",)):
            if record.get("__bad_utf8__"):
                continue
            ids = np.asarray(tok.encode_batch([record["text"]])[0], np.int32)  # same encode path as the stage
            if len(ids):
                sum(1 for _ in packer.add_batch(ids, np.array([0, len(ids)])))
    sum(1 for _ in packer.flush())
    return packer.tokens, time.perf_counter() - t0


def make_corpus(root: Path, copies: int) -> str:
    """`copies` copies of the stdlib corpus (each file under its own copy's directory)."""
    files = stdlib_files()
    base = os.path.commonpath(files)
    for c in range(copies):
        for f in files:
            dst = root / f"copy{c:03d}" / os.path.relpath(f, base)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
    return str(root)


def high_water_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(spec: str, out: str, tok_dir: str, seq_len: int, workers: int,
            range_bytes: int) -> tuple[int, float, float]:
    Path("/proc/self/clear_refs").write_text("5")  # the driver's high-water mark restarts here
    cfg = PrepareDataConfig(input=spec, out=out, seq_len=seq_len, tokenizer=TokenizerSpec(path=tok_dir),
                            num_workers=workers, range_bytes=range_bytes)
    t0 = time.perf_counter()
    manifest = run(cfg)
    secs = time.perf_counter() - t0
    return sum(s["tokens"] for s in manifest["splits"].values()), secs, high_water_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=18)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--range-bytes", type=int, default=PrepareDataConfig.model_fields["range_bytes"].default)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llada-bench-"))
    try:
        big = make_corpus(work / "big", args.copies)
        small = make_corpus(work / "small", max(1, args.copies // 4))
        sources = list_sources(big)
        texts = (r["text"] for s in list_sources("stdlib") for r in iter_records(s, ("text",)) if "text" in r)
        tok_dir = str(work / "tok")
        train_bpe(texts, args.vocab_size).save(tok_dir)
        ensure_ray()
        tokens, secs = plain_loop(big, tok_dir, args.seq_len)
        base = tokens / secs
        print(f"corpus: stdlib x {args.copies}: {len(sources)} files, {sum(s.size for s in sources) / 1e6:.0f} MB, "
              f"{tokens:,} tokens; cpus={os.cpu_count()}; range_bytes {args.range_bytes / 2**20:.0f} MiB")
        print(f"{'path':<34}{'seconds':>9}{'tokens/s':>12}{'vs plain':>10}{'driver peak MB':>16}")
        print(f"{'plain loop (1 process)':<34}{secs:>9.2f}{base:>12,.0f}{1.0:>10.2f}{'':>16}")
        rates = {}
        for n in args.workers:
            got, secs, peak = prepare(big, str(work / f"out{n}"), tok_dir, args.seq_len, n, args.range_bytes)
            assert got == tokens, (got, tokens)  # both paths see the same tokens
            rates[n] = got / secs
            print(f"{f'llada data prepare, {n} worker(s)':<34}{secs:>9.2f}{got / secs:>12,.0f}"
                  f"{got / secs / base:>10.2f}{peak:>16.0f}", flush=True)
        small_sources = list_sources(small)
        got, secs, peak = prepare(small, str(work / "small-out"), tok_dir, args.seq_len, max(args.workers),
                                  args.range_bytes)
        print(f"{f'  same, 1/4 of the corpus, {max(args.workers)} w.':<34}{secs:>9.2f}{got / secs:>12,.0f}"
              f"{got / secs / base:>10.2f}{peak:>16.0f}  ({sum(s.size for s in small_sources) / 1e6:.0f} MB)")
        if len(rates) > 1:
            lo, hi = min(rates), max(rates)
            per_worker = (rates[hi] - rates[lo]) / (hi - lo)
            print(f"projection: ~{rates[lo] - per_worker * lo:,.0f} + {per_worker:,.0f} tokens/s per worker "
                  f"(while workers have their own cores and the storage keeps up)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
