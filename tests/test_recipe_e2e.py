"""The LLaDA2.0 recipe end to end on a real local Ray, shortened: every node runs (AR base -> CPT
warm-up / stable / decay -> top-k merge -> SFT -> CAP -> DPO -> eval -> HF export), every model is
evaluated, the report and the lineage of the exported model are complete, and SFT - at the
recipe's own settings (steps, lr, task count) - takes exact-match accuracy on held-out tasks far
above the trivial baseline (the report's claim, same criterion). Everything before SFT is cut to a
few steps: the tasks are learnable from a barely trained model."""

import pytest

from pipelines import runs
from pipelines.lineage import lineage
from pipelines.report import claims, write_report
from pipelines.run_store import RunStore

pytestmark = pytest.mark.slow

SHORT = [
    "base.steps=4", "schedule.warmup_tokens_per_block=4096", "schedule.stable_tokens=4096",
    "schedule.decay_tokens_per_block=4096", "schedule.lr_warmup_tokens=0", "cpt.candidates_every=2",
    "cap.steps=2", "dpo.steps=2", "eval.n_tasks=40", "eval.max_rows=8", "eval.sweep=[]",
    "training.checkpoint_every=100",
]


def test_tiny_recipe_end_to_end(tmp_path):
    run_id, store_root, records = runs.start("tiny-cpu", SHORT + [f"workdir={tmp_path}"], say=lambda m: None)
    assert {r["state"] for r in records.values()} == {"SUCCEEDED"}, {k: r.get("error") for k, r in records.items()}
    store = RunStore(store_root)
    report = write_report(store, run_id, tmp_path / "report")
    results = report["data"]["eval"]
    assert set(results) == {"base", "cpt_warmup", "cpt_stable", "cpt_decay", "merged", "sft", "cap", "dpo"}
    assert all(0 < r["elbo_ppl"] < float("inf") for r in results.values())
    assert {k for k, r in results.items() if "tasks" in r} == {"merged", "sft", "cap", "dpo"}
    assert all(0 <= results[k]["tasks"]["accuracy"] <= 1 and results[k]["tasks"]["n"] == 40 for k in ("sft", "cap", "dpo"))
    found = claims(results)
    assert [c["claim"].split()[0] for c in found] == ["SFT", "CAP", "DPO"] and all(c["numbers"] for c in found)
    sft = results["sft"]["tasks"]
    assert found[0]["shown"], found[0]["numbers"]  # SFT accuracy >= trivial baseline + 0.2
    assert sft["accuracy"] > results["merged"]["tasks"]["accuracy"] + 0.2
    assert (tmp_path / "report" / "report.md").read_text().count("|") > 20
    assert (tmp_path / "report" / "cpt_loss.png").stat().st_size > 1000
    doc = lineage(store, run_id, "export")
    assert set(doc["nodes"]) == set(records) - {"eval"}  # every upstream node of the exported model
    merge = store.node(run_id, "merge")
    assert len(merge["info"]["merged_from"]) == 3
