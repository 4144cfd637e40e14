"""The LLaDA2.0 recipe on a real local Ray, end to end, shortened: every node runs (AR base -> CPT
warm-up / stable / decay -> top-k merge -> SFT -> CAP -> DPO -> eval -> HF export), every model is
evaluated (parallel decoder and one token per forward, per task), the report with its claims and
the lineage of the exported model are complete.

Everything up to SFT runs with the recipe's own settings (AR base, CPT, merge, SFT 800 steps of 16
on the recipe's 4,000 tasks): only CAP and DPO are shortened, and the eval decodes 100 of the
held-out prompts instead of all. The test asserts the two claims the demo shows: SFT exact match
>= 0.9 and parallel decoding's TPF / accuracy / tokens/s against one token per forward. With the
base and CPT cut to a few steps, the same SFT reached 0.830 (parallel claim shown: TPF 11.00 vs 1.00,
10.9x), so the upstream stays as the recipe has it. CAP's and DPO's goals are not reached by the
recipe (README, "What make demo shows") and are only checked to be reported with their numbers.
"""

import json
from pathlib import Path

import pytest

from llada_core.data.synthetic import INDEPENDENT
from llada_recipe import build as llada_recipe
from llada_recipe.report import claims, write_report
from pipelines.lineage import lineage
from pipelines.run_store import RunStore

pytestmark = pytest.mark.slow

N_EVAL = 100
SHORT = [
    "cap.steps=2", "dpo.steps=2", f"eval.n_tasks={N_EVAL}", "eval.max_rows=8", "eval.sweep=[]",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("recipe")


# ~750 s on 2 cores (the shortened upstream: 416 s; CI's host has run up to ~1.6x slower)
@pytest.mark.timeout(2400)
def test_tiny_recipe_end_to_end(workdir, tmp_path, capsys):
    run_id, store_root, records = llada_recipe.start("tiny-cpu", SHORT + [f"workdir={workdir}"], say=lambda m: None)
    assert {r["state"] for r in records.values()} == {"SUCCEEDED"}, {k: r.get("error") for k, r in records.items()}
    store = RunStore(store_root)
    report = write_report(store, run_id, tmp_path / "report")
    results = report["data"]["eval"]
    assert set(results) == {"base", "cpt_warmup", "cpt_stable", "cpt_decay", "merged", "sft", "cap", "dpo"}
    assert all(0 < r["elbo_ppl"] < float("inf") for r in results.values())
    assert {k for k, r in results.items() if "tasks" in r} == {"merged", "sft", "cap", "dpo"}
    assert all(0 <= results[k]["tasks"]["accuracy"] <= 1 and results[k]["tasks"]["n"] == N_EVAL
               for k in ("sft", "cap", "dpo"))
    for k in ("merged", "sft", "cap", "dpo"):  # both decoders, per task, on the same held-out prompts
        par, one = results[k]["tasks"], results[k]["one_token"]
        assert set(par["per_task"]) == set(one["per_task"]) and sum(t["n"] for t in par["per_task"].values()) == N_EVAL
        assert one["left_to_right"] and one["tpf"] <= 1.0
    found = claims(results)
    assert INDEPENDENT <= set(results["sft"]["tasks"]["per_task"])
    assert [c["claim"].split()[0] for c in found] == ["SFT", "Parallel", "CAP", "DPO"]
    assert all(c["numbers"] for c in found)
    assert found[0]["shown"] and found[1]["shown"], found[:2]  # SFT >= 0.9; TPF >= 3 at <= 2 points, >= 2.5x
    assert (tmp_path / "report" / "report.md").read_text().count("|") > 20
    assert (tmp_path / "report" / "cpt_loss.png").stat().st_size > 1000
    doc = lineage(store, run_id, "export")
    assert set(doc["nodes"]) == set(records) - {"eval"}  # every upstream node of the exported model
    merge = store.node(run_id, "merge")
    assert len(merge["info"]["merged_from"]) == 3

    # every model an MLflow logged model with its eval metrics; the export a registered version whose
    # lineage walks back to every upstream node and dataset
    from mlflow import MlflowClient

    from pipelines.cli import main

    client = MlflowClient(store.run(run_id)["tracking_uri"])
    for name in ("base", "cpt_decay", "merge", "sft", "cap", "dpo", "export"):
        (model_id,) = records[name]["models"].values()
        model = client.get_logged_model(model_id)
        assert str(model.status).endswith("READY") and model.source_run_id == records[name]["mlflow_run_id"]
    sft_model = client.get_logged_model(records["sft"]["models"]["checkpoint"])
    measured = {m.key: m for m in sft_model.metrics}
    assert measured["task_accuracy"].value == results["sft"]["tasks"]["accuracy"]
    assert measured["task_accuracy"].dataset_name == "make_tasks.tasks"
    assert measured["elbo_ppl"].dataset_name == "prepare_pretrain.dataset"
    (version,) = client.search_model_versions("name = 'llada-tiny-cpu'")
    assert version.tags["llada.model_id"] == records["export"]["models"]["hf"]
    datasets = {k for k in version.tags if k.startswith("llada.dataset.")}
    assert datasets == {f"llada.dataset.prepare_{k}.dataset" for k in ("pretrain", "sft", "dpo")}
    capsys.readouterr()  # only the lineage command's output below
    assert main(["lineage", f"models:/llada-tiny-cpu/{version.version}", "--tracking-uri", client.tracking_uri,
                 "--json"]) == 0
    via_registry = json.loads(capsys.readouterr().out)
    assert set(via_registry["nodes"]) == set(doc["nodes"])
    assert {n: r["config_hash"] for n, r in via_registry["nodes"].items()} == {
        n: r["config_hash"] for n, r in doc["nodes"].items()}

    # the final model as SGLang serves a diffusion LM (LLaDA2MoeModelLM, [MASK] moved from id 3 to
    # 156895): the server's default decoder answers the same on the export as on the DPO checkpoint
    from transformers import PreTrainedTokenizerFast

    from llada_core.data.chat import encode_prompt
    from llada_core.evaluate import _read_jsonl, load_model
    from llada_core.server_decode import low_confidence_decode
    from stages.model_hf import import_hf

    hf = records["export"]["outputs"]["hf"]["uri"]
    config = json.loads((Path(hf) / "config.json").read_text())
    assert config["architectures"] == ["LLaDA2MoeModelLM"] and config["mask_token_id"] == 156895
    served_tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(hf) / "tokenizer.json"))
    assert served_tok.convert_tokens_to_ids("<|mask|>") == 156895
    import_hf(hf, tmp_path / "served")
    prompts = [[{"role": "user", "content": r["prompt"]}]
               for r in _read_jsonl(f"{records['make_tasks']['outputs']['tasks']['uri']}/sft_eval.jsonl", 20)]
    answers = {}
    for label, ckpt in (("dpo", records["dpo"]["outputs"]["checkpoint"]["uri"]), ("export", tmp_path / "served")):
        model, tok = load_model(str(ckpt))
        stops = {tok.id_of("eot"), tok.id_of("eos")}
        answers[label] = [low_confidence_decode(model, encode_prompt(tok, p), mask_id=tok.id_of("mask"),
                                                stop_ids=stops, max_new_tokens=32).tokens for p in prompts]
    assert answers["export"] == answers["dpo"]
