"""Decoding speed, side by side in one run (not a timed test): the parallel decoder (threshold 0.95,
block 32, KV cache of finished blocks) vs one-token-per-forward decoding of the same model (the
AR-style baseline: threshold 1.0, one token accepted per pass), for the SFT and the CAP models.

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

    from llada_core.evaluate import load_model, task_accuracy

    rows = {}
    for label in ("sft", "cap"):
        model, tok = load_model(paths[label])
        for mode, threshold in (("parallel (0.95)", 0.95), ("one token / pass", 1.0)):
            rows[(label, mode)] = task_accuracy(model, tok, paths["tasks"], args.n, threshold=threshold)
    print(f"{'model':<6}{'decoder':<18}{'accuracy':>9}{'TPF':>7}{'tok/s':>9}")
    for (label, mode), r in rows.items():
        print(f"{label:<6}{mode:<18}{r['accuracy']:>9.3f}{r['tpf']:>7.2f}{r['tokens_per_s']:>9.1f}")
    for label in ("sft", "cap"):
        par, one = rows[(label, "parallel (0.95)")], rows[(label, "one token / pass")]
        print(f"{label}: parallel vs one-token decoding: {par['tokens_per_s'] / one['tokens_per_s']:.2f}x tokens/s, "
              f"TPF {par['tpf']:.2f} vs {one['tpf']:.2f}")
    s, c = rows[("sft", "parallel (0.95)")], rows[("cap", "parallel (0.95)")]
    print(f"CAP vs no CAP (parallel decoder): TPF {s['tpf']:.2f} -> {c['tpf']:.2f} ({c['tpf'] / s['tpf']:.2f}x), "
          f"tokens/s {c['tokens_per_s'] / s['tokens_per_s']:.2f}x, accuracy {s['accuracy']:.3f} -> {c['accuracy']:.3f}")


if __name__ == "__main__":
    main()
