"""End-to-end breakdown of a finished run (default: the newest in work/store, e.g. after `make demo`):
per node wall time, time inside training steps, the rest (Ray task + worker-group start-up,
checkpointing, export, MLflow) and the training workers' peak RSS. Not a timed test.

  python bench/e2e.py [--store work/store] [--run RUN_ID]
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="work/store")
    ap.add_argument("--run")
    args = ap.parse_args()
    from llada_recipe.report import collect
    from pipelines.run_store import RunStore

    store = RunStore(args.store)
    run_id = args.run or store.runs()[-1]
    data = collect(store, run_id)
    print(f"run {run_id}")
    print(f"{'node':<18}{'state':<16}{'wall s':>8}{'loop s':>8}{'overhead s':>11}{'overhead %':>11}{'peak RSS MB':>12}")
    total = loop_total = 0.0
    for name, n in data["nodes"].items():
        wall, loop = n["seconds"] or 0.0, n["loop_seconds"]
        rss = max((v for _, v in n["history"].get("peak_rss_mb", [])), default=float("nan"))
        total, loop_total = total + wall, loop_total + loop
        share = f"{100 * (wall - loop) / wall:.0f}" if wall and loop else "-"
        print(f"{name:<18}{n['state']:<16}{wall:>8.1f}{loop:>8.1f}{wall - loop:>11.1f}{share:>11}{rss:>12.0f}")
    print(f"{'sum of nodes':<34}{total:>8.1f}{loop_total:>8.1f}{total - loop_total:>11.1f}"
          f"{100 * (total - loop_total) / max(total, 1e-9):>11.0f}")


if __name__ == "__main__":
    main()
