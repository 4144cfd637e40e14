"""The GPU recipes cannot run here; they are validated: config, layout arithmetic, memory per GPU."""

import json

import pytest

from llada_core.config import ConfigError
from llada_core.model.config import load_preset
from llada_core.parallel.layout import ParallelLayout
from llada_recipe.config import load_recipe
from llada_recipe.plan import GiB, estimate, expert_params, plan
from pipelines.cli import main


def test_memory_estimate_matches_a_hand_computed_case():
    cfg = load_preset("tiny")  # 3 MoE layers x 16 experts x 3 x 128 x 64
    assert expert_params(cfg) == 3 * 16 * 3 * 128 * 64
    layout = ParallelLayout(world_size=8, tp=2, ep=4, etp=1)
    est = estimate(cfg, layout, seq_len=256, micro_batch=2)
    per_gpu = expert_params(cfg) / 4 + (cfg.total_params() - expert_params(cfg)) / 2
    assert est.params_per_gpu == pytest.approx(per_gpu)
    assert est.weights_grads_optimizer_gib == pytest.approx(per_gpu * 18 / GiB)
    assert est.activations_gib == pytest.approx(34 * 512 * 2 * 128 / 2 * 4 / GiB)  # s = 2L for block diffusion
    assert est.logits_gib == pytest.approx(2 * 512 * cfg.vocab_size / 2 * 4 / GiB)
    assert (estimate(cfg, layout, 256, 2, block_diffusion=False).activations_gib
            == pytest.approx(est.activations_gib / 2))


@pytest.mark.parametrize("recipe, total_b", [("llada2-mini", 16.26), ("llada2-flash", 102.89)])
def test_gpu_recipes_fit_80gb_per_gpu(recipe, total_b):
    p = plan(load_recipe(recipe))
    assert p["model"]["total_params"] / 1e9 == pytest.approx(total_b, abs=0.01)
    trained = [n for n in p["nodes"] if "steps" in n]
    assert [n["node"] for n in trained] == ["cpt_warmup", "cpt_stable", "cpt_decay", "sft", "cap", "dpo"]
    assert all(n["memory_gib"] < 80 for n in trained), trained
    assert p["cpt_tokens_per_step"] == 2**20  # 1M tokens per step on the stated layout
    warm = next(n for n in trained if n["node"] == "cpt_warmup")
    assert warm["tokens"] >= dict((c["phase"], c["tokens"]) for c in p["cpt_phases"])["warmup"]


def test_plan_cli_and_bad_layouts(capsys):
    assert main(["plan", "llada2-mini", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dp"] == 32
    with pytest.raises(ValueError, match="num_experts"):
        plan(load_recipe("llada2-mini", ["parallel.ep=96", "parallel.world_size=96"]))  # 256 experts
    with pytest.raises(ConfigError, match="parallel.world_size"):
        load_recipe("llada2-flash", ["parallel.world_size=102"])  # tp=4


def test_handoff_memory_matches_a_hand_computed_case():
    from llada_recipe.memory import RUNTIME_BYTES, handoff_memory, largest_tensor

    cfg = load_preset("tiny")  # 4096 x 128 embedding (untied: output layer too) is the largest tensor
    assert largest_tensor(cfg) == 4096 * 128
    m = handoff_memory(cfg, ParallelLayout(world_size=2, ep=2), seq_len=64, width=4, merge_k=3)
    params, experts = cfg.total_params(), expert_params(cfg)
    assert m.train_rank_load == RUNTIME_BYTES + int((experts / 2 + params - experts) * 4)
    assert m.train_rank_save == RUNTIME_BYTES + int((experts / 2 + params - experts) * (4 + 8))  # + Adam m, v
    logits = 8 * 2 * 64 * 4096 * 4  # one ELBO batch of 8 rows of [x_t ; x_0], fp32
    assert m.eval == RUNTIME_BYTES + params * 4 + 4096 * 128 * 4 + logits
    tensor = 4096 * 128 * 4  # parts are written tensor by tensor: one tensor in flight
    assert m.export == m.import_hf == RUNTIME_BYTES + 2 * tensor
    averaging = 4096 * 128 * 4 + (3 + 2) * (64 << 20)  # the output tensor + 3 row chunks + their fp64 sum
    assert m.merge == RUNTIME_BYTES + max(params * 4 + tensor + logits, averaging)
    assert m.train_driver == RUNTIME_BYTES + params * 4 + tensor  # one DCP read holds the whole tiny model


def test_recipe_nodes_request_the_plans_host_memory_and_plan_refuses_what_does_not_fit():
    from llada_recipe.build import build_nodes, recipe_memory

    cfg = load_recipe("llada2-mini")
    need = recipe_memory(cfg)
    requested = {n.name: n.resources.get("memory") for n in build_nodes(cfg)}
    assert requested["merge"] == need.merge and requested["eval"] == need.eval
    assert requested["export"] == need.export and requested["base"] == need.import_hf
    assert requested["cpt_decay"] == requested["sft"] == need.train_driver
    assert requested["prepare_pretrain"] is None
    assert plan(cfg)["host_memory_gib"]["merge"] == round(need.merge / GiB, 1)
    small = need.merge / GiB - 1  # a host one GiB short of the merge
    with pytest.raises(ConfigError, match=rf"node 'merge': its merge process needs {need.merge / GiB:.1f} GiB, "
                                          rf"but hardware.host_memory_gib is {small:g} GiB"):
        plan(load_recipe("llada2-mini", [f"hardware.host_memory_gib={small}"]))
    with pytest.raises(ConfigError, match=r"node 'cpt_warmup': saving a checkpoint on 8 ranks of one host needs "
                                          rf"{need.train_rank_save * 8 / GiB:.1f} GiB"):
        plan(load_recipe("llada2-mini", [f"hardware.host_memory_gib={need.train_rank_save * 8 / GiB - 1}"]))
    gpu = plan(cfg)["nodes"][4]
    assert gpu["node"] == "cpt_warmup"
    with pytest.raises(ConfigError, match=rf"node 'cpt_warmup': training, per GPU, needs {gpu['memory_gib']:.1f} GiB"):
        plan(load_recipe("llada2-mini", [f"hardware.gpu_memory_gib={gpu['memory_gib'] - 1}"]))
