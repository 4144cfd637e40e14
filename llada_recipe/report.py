"""The run's report: what the recipe did, as measured numbers and plots (markdown + PNG), written
next to the run's artifacts and logged to the parent MLflow run. The recipe's claims at toy scale
are checked here and reported with their numbers, shown or not."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from llada_core import storage  # noqa: E402
from pipelines import dag  # noqa: E402
from pipelines.lineage import format_lineage, lineage, to_graph  # noqa: E402
from pipelines.run_store import RunStore  # noqa: E402

TRAINING = ("base", "cpt_warmup", "cpt_stable", "cpt_decay", "sft", "cap", "dpo")
MODEL_ORDER = ["base", "cpt_warmup", "cpt_stable", "cpt_decay", "merged", "sft", "cap", "dpo"]


def _histories(client: MlflowClient, run_id: str | None, keys: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    if not run_id:
        return {}
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def collect(store: RunStore, run_id: str) -> dict:
    run = store.run(run_id)
    client = MlflowClient(run["tracking_uri"])
    nodes = {}
    for node in dag.from_json(run["nodes"]):
        rec = store.node(run_id, node.name)
        source = rec.get("cached_from") or {"run_id": run_id, "node": node.name}
        computed = store.node(source["run_id"], source["node"]) if rec.get("cached_from") else rec
        hist = _histories(client, computed.get("mlflow_run_id"), ("loss", "block_size", "step_time", "peak_rss_mb",
                                                                  "tokens_per_s")) if node.name in TRAINING else {}
        loop_s = sum(v for _, v in hist.get("step_time", []))
        nodes[node.name] = {"state": rec["state"], "seconds": computed.get("seconds"), "loop_seconds": loop_s,
                            "history": hist, "cached": bool(rec.get("cached_from")), "outputs": rec.get("outputs", {})}
    eval_out = nodes.get("eval", {}).get("outputs", {}).get("results")
    results = json.loads(storage.read_bytes(*storage.resolve(eval_out["uri"]))) if eval_out else {}
    return {"run_id": run_id, "recipe": run["recipe"], "nodes": nodes, "eval": results}


def claims(results: dict) -> list[dict]:
    """The three things the tiny recipe should show (issue: SFT >> trivial, CAP TPF > SFT TPF at a small
    accuracy cost, DPO preference accuracy > CAP's), each with its numbers and whether it was shown."""
    out = []
    sft, cap, dpo = (results.get(k, {}) for k in ("sft", "cap", "dpo"))
    if "tasks" in sft:
        acc, base = sft["tasks"]["accuracy"], sft["tasks"].get("copy_baseline", 0.0)
        pre = results.get("merged", {}).get("tasks", {}).get("accuracy")
        out.append({"claim": "SFT task accuracy far above the trivial baseline",
                    "numbers": f"SFT {acc:.3f} vs copy-the-input baseline {base:.3f}"
                               + (f" and pre-SFT model {pre:.3f}" if pre is not None else ""),
                    "shown": acc >= base + 0.2})
    if "tasks" in sft and "tasks" in cap:
        s, c = sft["tasks"], cap["tasks"]
        out.append({"claim": "CAP raises TPF over SFT at a small accuracy cost (<= 5 points)",
                    "numbers": f"TPF {s['tpf']:.2f} -> {c['tpf']:.2f}, "
                               f"accuracy {s['accuracy']:.3f} -> {c['accuracy']:.3f}",
                    "shown": c["tpf"] > s["tpf"] and c["accuracy"] >= s["accuracy"] - 0.05})
    if "preference_accuracy" in cap and "preference_accuracy" in dpo:
        out.append({"claim": "DPO preference accuracy above the CAP model's",
                    "numbers": f"{cap['preference_accuracy']:.3f} -> {dpo['preference_accuracy']:.3f}",
                    "shown": dpo["preference_accuracy"] > cap["preference_accuracy"]})
    return out


def _plot_cpt(data: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    ax2 = ax.twinx()
    offset = 0
    for name in ("base", "cpt_warmup", "cpt_stable", "cpt_decay"):
        hist = data["nodes"].get(name, {}).get("history", {})
        loss = hist.get("loss", [])
        if not loss:
            continue
        xs = [offset + s for s, _ in loss]
        ax.plot(xs, [v for _, v in loss], label=name)
        if hist.get("block_size"):
            ax2.step([offset + s for s, _ in hist["block_size"]], [v for _, v in hist["block_size"]], "k--",
                     where="post", lw=0.8)
        ax.axvline(offset, color="grey", lw=0.5)
        offset = xs[-1]
    ax.set_xlabel("optimizer step (AR base, then CPT warm-up / stable / decay)")
    ax.set_ylabel("training loss")
    ax2.set_ylabel("block size (dashed)")
    ax2.set_yscale("log", base=2)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_post(data: dict, path: Path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("sft", "cap", "dpo"):
        loss = data["nodes"].get(name, {}).get("history", {}).get("loss", [])
        if loss:
            a1.plot([s for s, _ in loss], [v for _, v in loss], label=name)
    a1.set_xlabel("step")
    a1.set_ylabel("training loss")
    a1.legend()
    for name in ("sft", "cap", "dpo"):
        r = data["eval"].get(name, {})
        if "tasks" not in r:
            continue
        points = sorted([(float(t), v) for t, v in r.get("sweep", {}).items()]
                        + [(r["tasks"]["threshold"], r["tasks"])])
        a2.plot([p["tpf"] for _, p in points], [p["accuracy"] for _, p in points], "o-", label=name)
        for t, p in points:
            a2.annotate(f"{t:g}", (p["tpf"], p["accuracy"]), fontsize=7)
    a2.set_xlabel("TPF (tokens per forward pass)")
    a2.set_ylabel("exact-match accuracy")
    a2.set_title("threshold sweep")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(store: RunStore, run_id: str, out_dir: str | Path) -> dict:
    """The report into `out_dir` (local or s3://), also logged to the run's MLflow parent."""
    data = collect(store, run_id)
    found = claims(data["eval"])
    doc = lineage(store, run_id)
    with storage.output_dir(str(out_dir)) as out:
        (out / "lineage.txt").write_text(format_lineage(doc) + "\n", encoding="utf-8")
        (out / "lineage.mmd").write_text(to_graph(doc, "mermaid") + "\n", encoding="utf-8")
        _write_files(run_id, data, found, out)
        run = store.run(run_id)
        if run.get("mlflow_parent_run"):  # the run's summary, next to the eval metrics the eval node put there
            client = MlflowClient(run["tracking_uri"])
            client.log_artifacts(run["mlflow_parent_run"], str(out), "report")
            for c in found:
                client.log_metric(run["mlflow_parent_run"], f"claim.{c['claim'].split()[0].lower()}_shown",
                                  float(c["shown"]))
    return {"claims": found, "report": storage.join(str(out_dir), "report.md"), "data": data}


def _write_files(run_id: str, data: dict, found: list[dict], out: Path) -> None:
    _plot_cpt(data, out / "cpt_loss.png")
    _plot_post(data, out / "post_training.png")
    lines = [f"# Run {run_id} (recipe {data['recipe']})", "", "## What the recipe showed", "",
             "| claim | numbers | shown |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['numbers']} | {'yes' if c['shown'] else '**no**'} |" for c in found]
    lines += ["", "## Models", "",
              "| model | ELBO ppl (val, block 32) | accuracy | TPF | decode tok/s | preference acc |",
              "|---|---|---|---|---|---|"]
    for label, r in sorted(data["eval"].items(),
                           key=lambda kv: MODEL_ORDER.index(kv[0]) if kv[0] in MODEL_ORDER else 99):
        t = r.get("tasks", {})
        lines.append(f"| {label} | {r['elbo_ppl']:.1f} | {t.get('accuracy', float('nan')):.3f} | "
                     f"{t.get('tpf', float('nan')):.2f} | "
                     f"{t.get('tokens_per_s', float('nan')):.0f} | {r.get('preference_accuracy', float('nan')):.3f} |")
    lines += ["", "## Nodes (wall time; loop = time inside training steps; the rest is Ray / worker-group / "
              "checkpoint overhead)",
              "", "| node | state | seconds | loop s | overhead s | peak RSS MB |", "|---|---|---|---|---|---|"]
    for name, n in data["nodes"].items():
        rss = max((v for _, v in n["history"].get("peak_rss_mb", [])), default=float("nan"))
        secs = n["seconds"] or 0.0
        loop = n["loop_seconds"]
        lines.append(f"| {name} | {n['state']}{' (cached)' if n['cached'] else ''} | {secs:.1f} | {loop:.1f} | "
                     f"{secs - loop:.1f} | {rss:.0f} |")
    lines += ["", "![CPT loss and block size](cpt_loss.png)", "", "![SFT / CAP / DPO](post_training.png)", "",
              "## Lineage (`llada lineage RUN_ID` for the text, lineage.txt here)", "", "```mermaid",
              (out / "lineage.mmd").read_text(encoding="utf-8").rstrip(), "```", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"claims": found, "eval": data["eval"],
                                                 "nodes": {k: {kk: vv for kk, vv in v.items() if kk != "history"}
                                                           for k, v in data["nodes"].items()}}, indent=2, default=str))
