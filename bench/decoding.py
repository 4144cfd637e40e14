"""Decoding speed, side by side in one run (not a timed test), for the SFT and the CAP models on the
same held-out tasks: the parallel decoder (threshold 0.95, block 32) over each task's prompts in one
batch (what the eval node runs), one token per forward left to right on the same batches (the
AR-style baseline), and the parallel decoder one prompt at a time with the KV cache of finished
blocks (what the eval ran before it was batched).

  python bench/decoding.py                    # the SFT / CAP models of the newest run in work/store
  python bench/decoding.py --sft CKPT --cap CKPT --tasks work/artifacts/RUN/make_tasks/sft_eval.jsonl
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def newest_run_outputs(store_root: str) -> dict:
    from pipelines.run_store import RunStore

    store = RunStore(store_root)
    for run_id in reversed(store.runs()):
        recs = {n: store.node(run_id, n) for n in ("sft", "cap", "make_tasks")}
        if all(r["state"] in ("SUCCEEDED", "SKIPPED-CACHED") for r in recs.values()):
            return {"sft": recs["sft"]["outputs"]["checkpoint"]["uri"],
                    "cap": recs["cap"]["outputs"]["checkpoint"]["uri"],
                    "tasks": os.path.join(recs["make_tasks"]["outputs"]["tasks"]["uri"], "sft_eval.jsonl")}
    raise SystemExit(f"no finished run with sft and cap nodes in {store_root}: run `make demo` first")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="work/store")
    ap.add_argument("--sft")
    ap.add_argument("--cap")
    ap.add_argument("--tasks")
    ap.add_argument("-n", type=int, default=50)
    args = ap.parse_args()
    paths = {"sft": args.sft, "cap": args.cap, "tasks": args.tasks}
    if not all(paths.values()):
        paths = newest_run_outputs(args.store) | {k: v for k, v in paths.items() if v}

    import time

    from llada_core.data.synthetic import check_answer
    from llada_core.evaluate import _read_jsonl, load_model, task_accuracy
    from llada_core.sampler import generate_text

    rows = {}
    for label in ("sft", "cap"):
        model, tok = load_model(paths[label])
        rows[(label, "batched parallel")] = task_accuracy(model, tok, paths["tasks"], args.n)
        rows[(label, "batched one-token")] = task_accuracy(model, tok, paths["tasks"], args.n, left_to_right=True)
        t0, hits, tokens, forwards = time.perf_counter(), 0, 0, 0
        tasks = _read_jsonl(paths["tasks"], args.n)
        for r in tasks:
            text, res = generate_text(model, tok, r["prompt"], max_new_tokens=32, max_len=model.cfg.max_position)
            hits += check_answer(r["prompt"], text.strip())
            tokens, forwards = tokens + len(res.tokens), forwards + res.forward_passes
        seconds = time.perf_counter() - t0
        rows[(label, "single + KV cache")] = {"accuracy": hits / len(tasks), "tpf": tokens / forwards,
                                              "tokens_per_s": tokens / seconds}
    print(f"{'model':<6}{'decoder':<20}{'accuracy':>9}{'TPF':>7}{'tok/s':>9}")
    for (label, mode), r in rows.items():
        print(f"{label:<6}{mode:<20}{r['accuracy']:>9.3f}{r['tpf']:>7.2f}{r['tokens_per_s']:>9.1f}")
    for label in ("sft", "cap"):
        par, one, single = (rows[(label, m)] for m in ("batched parallel", "batched one-token", "single + KV cache"))
        print(f"{label}: parallel vs one-token {par['tokens_per_s'] / one['tokens_per_s']:.2f}x tokens/s "
              f"(TPF {par['tpf']:.2f} vs {one['tpf']:.2f}); batched vs one prompt at a time "
              f"{par['tokens_per_s'] / single['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
