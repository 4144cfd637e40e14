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
from llada_core.data.synthetic import INDEPENDENT  # noqa: E402
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
    """What the tiny recipe should show (the issue "The tiny recipe shows what a diffusion LM is for"),
    each with its numbers and whether it was shown; the criteria are the issue's, never tuned to a run."""
    out = []
    sft, cap, dpo = (results.get(k, {}) for k in ("sft", "cap", "dpo"))
    if "tasks" in sft:
        acc, base = sft["tasks"]["accuracy"], sft["tasks"].get("copy_baseline", 0.0)
        pre = results.get("merged", {}).get("tasks", {}).get("accuracy")
        out.append({"claim": "SFT exact match >= 0.9 on the held-out tasks",
                    "numbers": f"SFT {acc:.3f} (copy-the-input baseline {base:.3f}"
                               + (f", pre-SFT model {pre:.3f}" if pre is not None else "") + ")",
                    "shown": acc >= 0.9})
    if "tasks" in sft and "one_token" in sft:
        from llada_core.evaluate import pooled  # the eval's own pooling of per-task counts

        par, one = (pooled(sft[m]["per_task"], INDEPENDENT) for m in ("tasks", "one_token"))
        if par["n"] and one["n"]:
            speed = par["tokens_per_s"] / max(one["tokens_per_s"], 1e-9)
            out.append({"claim": "Parallel decoding (threshold 0.95) on the independent-position tasks: TPF >= 3, "
                                 "accuracy within 2 points of one token per forward, decode tokens/s >= 2.5x",
                        "numbers": f"SFT: TPF {par['tpf']:.2f} vs {one['tpf']:.2f}, accuracy {par['accuracy']:.3f} "
                                   f"vs {one['accuracy']:.3f}, tokens/s {par['tokens_per_s']:.0f} vs "
                                   f"{one['tokens_per_s']:.0f} ({speed:.2f}x)",
                        "shown": par["tpf"] >= 3 and par["accuracy"] >= one["accuracy"] - 0.02 and speed >= 2.5})
    if "tasks" in sft and "tasks" in cap:
        s_, c = sft["tasks"], cap["tasks"]
        gain = c["tpf"] / max(s_["tpf"], 1e-9)
        out.append({"claim": "CAP raises TPF over SFT by >= 1.3x at <= 2 points accuracy loss",
                    "numbers": f"TPF {s_['tpf']:.2f} -> {c['tpf']:.2f} ({gain:.2f}x), "
                               f"accuracy {s_['accuracy']:.3f} -> {c['accuracy']:.3f}",
                    "shown": gain >= 1.3 and c["accuracy"] >= s_["accuracy"] - 0.02})
    if "preference_accuracy" in cap and "preference_accuracy" in dpo:
        p0, p1 = cap["preference_accuracy"], dpo["preference_accuracy"]
        a0, a1 = cap.get("tasks", {}).get("accuracy"), dpo.get("tasks", {}).get("accuracy")
        tasks_ok = a0 is None or a1 is None or a1 >= a0 - 0.02
        out.append({"claim": "DPO over its reference (CAP): preference accuracy up >= 10 points, task accuracy "
                             "down <= 2 points",
                    "numbers": f"preference accuracy {p0:.3f} -> {p1:.3f}"
                               + (f", task accuracy {a0:.3f} -> {a1:.3f}" if a0 is not None and a1 is not None else ""),
                    "shown": p1 >= p0 + 0.10 and tasks_ok})
    return out


def editing_claims(results: dict, baseline: dict | None) -> list[dict]:
    """Token editing's goals (the issue "Beyond LLaDA2.0: token editing"): the editing-trained model in
    speed and quality modes against the non-editing model of the same budget (`baseline`: that run's
    eval results) decoded at the recipe's threshold; without a baseline run, against this model's own
    decoding without editing, and the claim says so."""
    label = next((m for m in ("cap", "sft") if "edit_speed" in results.get(m, {})), None)
    if label is None:
        return []
    mine = results[label]
    ref = (baseline or {}).get(label, {}).get("tasks")
    against = f"the non-editing {label.upper()} of the same budget" if ref else f"this {label.upper()} without editing"
    ref = ref or mine["tasks"]
    speed, quality = mine["edit_speed"], mine.get("edit_quality")
    out = [{"claim": f"Token editing, speed mode: TPF >= 1.5x {against} at threshold {ref['threshold']:g}, "
                     "accuracy within 2 points",
            "numbers": f"TPF {ref['tpf']:.2f} -> {speed['tpf']:.2f} ({speed['tpf'] / max(ref['tpf'], 1e-9):.2f}x), "
                       f"accuracy {ref['accuracy']:.3f} -> {speed['accuracy']:.3f}",
            "shown": speed["tpf"] >= 1.5 * ref["tpf"] and speed["accuracy"] >= ref["accuracy"] - 0.02}]
    if quality:
        out.append({"claim": f"Token editing, quality mode: accuracy >= {against} at no lower TPF",
                    "numbers": f"accuracy {ref['accuracy']:.3f} -> {quality['accuracy']:.3f}, "
                               f"TPF {ref['tpf']:.2f} -> {quality['tpf']:.2f}",
                    "shown": quality["accuracy"] >= ref["accuracy"] and quality["tpf"] >= ref["tpf"]})
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
        by_threshold = {float(t): v for t, v in r.get("sweep", {}).items()} | {r["tasks"]["threshold"]: r["tasks"]}
        points = sorted(by_threshold.items())
        line, = a2.plot([p["tpf"] for _, p in points], [p["accuracy"] for _, p in points], "o-", label=name)
        for t, p in points:
            a2.annotate(f"{t:g}", (p["tpf"], p["accuracy"]), fontsize=7)
        if "one_token" in r:  # the same model, one token per forward: the AR-style point
            a2.plot([r["one_token"]["tpf"]], [r["one_token"]["accuracy"]], "s", color=line.get_color())
        for mode in ("edit_speed", "edit_quality"):  # token editing's decoder modes
            if mode in r:
                a2.plot([r[mode]["tpf"]], [r[mode]["accuracy"]], "^", color=line.get_color())
                a2.annotate(mode.removeprefix("edit_"), (r[mode]["tpf"], r[mode]["accuracy"]), fontsize=7)
    a2.set_xlabel("TPF (tokens per forward pass)")
    a2.set_ylabel("exact-match accuracy")
    a2.set_title("threshold sweep\n(squares: one token per forward; triangles: token editing)", fontsize=10)
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(store: RunStore, run_id: str, out_dir: str | Path, baseline_run: str | None = None) -> dict:
    """The report into `out_dir` (local or s3://), also logged to the run's MLflow parent.
    `baseline_run`: a run of the same budget without token editing, for the editing claims."""
    data = collect(store, run_id)
    baseline = collect(store, baseline_run)["eval"] if baseline_run else None
    found = claims(data["eval"]) + editing_claims(data["eval"], baseline)
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
    lines += ["", "## Models (decoding: threshold 0.95 / one token per forward, left to right)", "",
              "| model | ELBO ppl (val, block 32) | accuracy | TPF | decode tok/s | one-token accuracy | "
              "one-token tok/s | preference acc |", "|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for label, r in sorted(data["eval"].items(),
                           key=lambda kv: MODEL_ORDER.index(kv[0]) if kv[0] in MODEL_ORDER else 99):
        t, o = r.get("tasks", {}), r.get("one_token", {})
        lines.append(f"| {label} | {r['elbo_ppl']:.1f} | {t.get('accuracy', nan):.3f} | {t.get('tpf', nan):.2f} | "
                     f"{t.get('tokens_per_s', nan):.0f} | {o.get('accuracy', nan):.3f} | "
                     f"{o.get('tokens_per_s', nan):.0f} | {r.get('preference_accuracy', nan):.3f} |")
    lines += ["", "## Per task (accuracy / TPF / decode tok/s; threshold 0.95, then one token per forward)", "",
              "| model | task | positions | accuracy | TPF | tok/s | one-token accuracy | one-token tok/s |",
              "|---|---|---|---|---|---|---|---|"]
    for label, r in data["eval"].items():
        for task, t in r.get("tasks", {}).get("per_task", {}).items():
            o = r.get("one_token", {}).get("per_task", {}).get(task, {})
            kind = "independent" if task in INDEPENDENT else "dependent"
            lines.append(f"| {label} | {task} | {kind} | {t['accuracy']:.3f} | {t['tpf']:.2f} | "
                         f"{t['tokens_per_s']:.0f} | {o.get('accuracy', nan):.3f} | {o.get('tokens_per_s', nan):.0f} |")
    edits = [(label, mode, r[mode]) for label, r in data["eval"].items() for mode in ("edit_speed", "edit_quality")
             if mode in r]
    if edits:
        lines += ["", "## Token editing (decoder modes; the same held-out tasks)", "",
                  "| model | mode | threshold / edit threshold / post-block steps | accuracy | TPF | tok/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {label} | {mode.removeprefix('edit_')} | {t['threshold']:g} / {t['edit_threshold']:g} / "
                  f"{t['edit_steps']} | {t['accuracy']:.3f} | {t['tpf']:.2f} | {t['tokens_per_s']:.0f} |"
                  for label, mode, t in edits]
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
