"""`make demo` / `llada demo`: the whole LLaDA2.0 recipe on the embedded default, then its report.

  llada run tiny-cpu   (the DAG: data -> AR base -> CPT warm-up/stable/decay -> merge -> SFT -> CAP
                        -> DPO -> eval -> HF export; see llada_recipe/build.py)
  + llada_recipe/report.py (claims with numbers, loss curves, accuracy vs TPF) logged to MLflow
"""

from __future__ import annotations

import time

from mlflow import MlflowClient

from llada_recipe.build import start
from llada_recipe.report import write_report
from pipelines.run_store import RunStore


def baseline_run(store: RunStore, run_id: str) -> str | None:
    """For a run with token editing: the latest finished run of the same recipe without it (the
    non-editing model of the same budget, e.g. the last `make demo`), else None."""
    mine = store.run(run_id)
    if not mine.get("recipe_config", {}).get("token_editing"):
        return None
    for other in reversed(store.runs()):
        doc = store.run(other)
        same = {k: v for k, v in doc.get("recipe_config", {}).items() if k != "token_editing"} == {
            k: v for k, v in mine["recipe_config"].items() if k != "token_editing"}
        if other != run_id and same and not doc["recipe_config"].get("token_editing") and \
                store.node(other, "eval").get("state") in ("SUCCEEDED", "SKIPPED-CACHED"):
            return other
    return None


def run_demo(recipe: str = "tiny-cpu", overrides: list[str] = (), say=print) -> dict:
    t0 = time.perf_counter()
    run_id, store_root, records = start(recipe, list(overrides), say=say)
    store = RunStore(store_root)
    doc = store.run(run_id)
    out = store.node_output(run_id, "report")
    baseline = baseline_run(store, run_id)
    report = (write_report(store, run_id, out, baseline) if "eval" in records and records["eval"]["state"] != "FAILED"
              else None)
    return {"run_id": run_id, "store": store_root, "records": records, "report": report, "baseline": baseline,
            "seconds": time.perf_counter() - t0, "tracking_uri": doc["tracking_uri"], "experiment": doc["experiment"],
            "experiment_id": MlflowClient(doc["tracking_uri"]).get_experiment_by_name(doc["experiment"]).experiment_id}


def format_summary(result: dict) -> str:
    lines = ["", f"run {result['run_id']} finished in {result['seconds'] / 60:.1f} min"]
    for name, rec in result["records"].items():
        lines.append(f"  {name:<18}{rec['state']:<16}{rec.get('seconds') or '':>8}")
    report = result["report"]
    if report:
        lines += ["", "what the tiny recipe showed" + (f" (token editing against run {result['baseline']})"
                                                        if result.get("baseline") else "") + ":"]
        for c in report["claims"]:
            lines.append(f"  [{'shown' if c['shown'] else 'NOT shown'}] {c['claim']}: {c['numbers']}")
        lines += ["", f"report:  {report['report']}"]
    export = result["records"].get("export", {}).get("outputs", {}).get("hf")
    if export:  # the model a server loads (config.json names the architecture)
        lines.append(f"export:  {export['uri']}")
    lines += [f"status:  llada status {result['run_id']} --store {result['store']}",
              f"lineage: llada lineage {result['run_id']} --store {result['store']}",
              f"MLflow:  mlflow ui --backend-store-uri {result['tracking_uri']}, then open "
              f"http://127.0.0.1:5000/#/experiments/{result['experiment_id']}?workflowType=machine_learning "
              f"(experiment {result['experiment']}; the link opens the runs table, not the GenAI overview)"]
    return "\n".join(lines)
