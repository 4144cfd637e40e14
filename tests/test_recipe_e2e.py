"""The LLaDA2.0 recipe on a real local Ray, twice in one workdir:

1. end to end, shortened: every node runs (AR base -> CPT warm-up / stable / decay -> top-k merge ->
   SFT -> CAP -> DPO -> eval -> HF export), every model is evaluated, the report and the lineage of
   the exported model are complete;
2. the recipe's first claim, SFT task accuracy far above the trivial baseline, from a real run of
   the recipe's own nodes (make_tasks -> prepare_pretrain -> prepare_sft -> sft on a Ray Train worker
   group -> eval with the parallel decoder on the 100 held-out tasks the demo reports) with the
   recipe's SFT settings unchanged. One thing differs from `make demo`: the suite cannot afford ~10
   minutes of AR + CPT pretraining, so SFT starts from the tiny preset's initialisation (same shape,
   same tokenizer) instead of the merged CPT model. (Measured: after the few-step base/CPT of run 1,
   the same SFT reached 0.150 on 40 tasks, below the claim's 0.2; `make demo` reaches 0.280.) The
   criterion is the report's own (`llada_recipe.report.claims`), not a threshold chosen for this test.
   Its prepare_pretrain node is a cache hit from run 1 (same config, same store).
"""

import json

import pytest
import yaml

from llada_recipe import build as llada_recipe
from llada_recipe.report import claims, write_report
from pipelines import runs
from pipelines.lineage import lineage
from pipelines.run_store import RunStore

pytestmark = pytest.mark.slow

SHORT = [
    "base.steps=4", "schedule.warmup_tokens_per_block=4096", "schedule.stable_tokens=4096",
    "schedule.decay_tokens_per_block=4096", "schedule.lr_warmup_tokens=0", "cpt.candidates_every=2",
    "sft.steps=4", "cap.steps=2", "dpo.steps=2", "eval.n_tasks=4", "eval.max_rows=8", "eval.sweep=[]",
    "instruct.tasks.n=1200",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("recipe")


def test_tiny_recipe_end_to_end(workdir, tmp_path):
    run_id, store_root, records = llada_recipe.start("tiny-cpu", SHORT + [f"workdir={workdir}"], say=lambda m: None)
    assert {r["state"] for r in records.values()} == {"SUCCEEDED"}, {k: r.get("error") for k, r in records.items()}
    store = RunStore(store_root)
    report = write_report(store, run_id, tmp_path / "report")
    results = report["data"]["eval"]
    assert set(results) == {"base", "cpt_warmup", "cpt_stable", "cpt_decay", "merged", "sft", "cap", "dpo"}
    assert all(0 < r["elbo_ppl"] < float("inf") for r in results.values())
    assert {k for k, r in results.items() if "tasks" in r} == {"merged", "sft", "cap", "dpo"}
    assert all(0 <= results[k]["tasks"]["accuracy"] <= 1 and results[k]["tasks"]["n"] == 4
               for k in ("sft", "cap", "dpo"))
    found = claims(results)
    assert [c["claim"].split()[0] for c in found] == ["SFT", "Parallel", "CAP", "DPO"]
    assert all(c["numbers"] for c in found)
    assert (tmp_path / "report" / "report.md").read_text().count("|") > 20
    assert (tmp_path / "report" / "cpt_loss.png").stat().st_size > 1000
    doc = lineage(store, run_id, "export")
    assert set(doc["nodes"]) == set(records) - {"eval"}  # every upstream node of the exported model
    merge = store.node(run_id, "merge")
    assert len(merge["info"]["merged_from"]) == 3


def sft_claim_graph(workdir) -> dict:
    """The recipe's nodes for data -> SFT -> eval, with SFT initialised from the preset."""
    cfg, nodes = llada_recipe.load("tiny-cpu", [f"workdir={workdir}", "eval.sweep=[]", "eval.max_rows=8"])
    picked = {n.name: n for n in nodes if n.name in ("make_tasks", "prepare_pretrain", "prepare_sft", "sft", "eval")}
    sft = picked["sft"].config["training"]
    assert sft["steps"] == cfg.sft.steps and sft["optim"]["lr"] == cfg.sft.optim.lr  # the recipe's SFT, as in the demo
    sft |= {"init_checkpoint": None, "model": cfg.training.model, "model_overrides": cfg.training.model_overrides,
            "checkpoint_every": sft["steps"]}  # one save: checkpoint frequency does not change the numerics
    ev = picked["eval"].config
    ev |= {"models": {"sft": ev["models"]["sft"]}, "decode_models": ["sft"], "sweep_models": [],
           "preference_models": [], "dpo": ""}
    return {"name": "tiny-cpu-sft-claim", "workdir": str(workdir),
            "nodes": [{"name": n.name, "stage": n.stage, "config": n.config, "after": n.after}
                      for n in picked.values()]}


# 600 SFT steps: 194-410 s on this 2-core VM; over the suite's 600 s default when the host is slow
@pytest.mark.timeout(1500)
def test_sft_accuracy_far_above_the_trivial_baseline(workdir, tmp_path):
    recipe = tmp_path / "sft-claim.yaml"
    recipe.write_text(yaml.safe_dump(sft_claim_graph(workdir)))
    _, _, records = runs.start(str(recipe), say=lambda m: None)
    assert {r["state"] for r in records.values()} <= {"SUCCEEDED", "SKIPPED-CACHED"}, {
        k: r.get("error") for k, r in records.items()}
    results = json.loads(open(records["eval"]["outputs"]["results"]["uri"]).read())
    tasks = results["sft"]["tasks"]
    assert tasks["n"] == 100
    found = {c["claim"].split()[0]: c for c in claims(results)}
    print({k: (c["numbers"], c["shown"]) for k, c in found.items()})
    print({k: {m: (v["accuracy"], round(v["tpf"], 2)) for m, v in results["sft"][mode]["per_task"].items()}
           for k, mode in (("parallel", "tasks"), ("one_token", "one_token"))})
    assert found["SFT"]["shown"], found["SFT"]["numbers"]
