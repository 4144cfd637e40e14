import json

import pytest

from llada_core.config import ConfigError, apply_overrides, canonical_json, config_digest, load_config
from llada_core.parallel.layout import ParallelLayout
from llada_recipe.config import RECIPES_DIR, RecipeConfig, load_recipe


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


BASE = (RECIPES_DIR / "tiny-cpu.yaml").read_text()


def test_embedded_recipes_load():
    for path in RECIPES_DIR.glob("*.yaml"):
        cfg = load_recipe(str(path))
        assert isinstance(cfg, RecipeConfig)


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, BASE.replace("  vocab_size: 4096", "  vocab_size: 4096\n  vocab_sise: 10"))
    with pytest.raises(ConfigError) as err:
        load_recipe(str(path))
    assert str(path) in str(err.value) and "data.vocab_sise" in str(err.value) and "unknown key" in str(err.value)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, BASE.replace("seq_len: 256", "seq_len: two-hundred"))
    with pytest.raises(ConfigError, match=r"key 'seq_len'.*valid integer"):
        load_recipe(str(path))


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("schedule.warmup_block_sizes=[1,3,32]", "schedule.warmup_block_sizes",
         "block size 3 does not divide seq_len=256"),
        ("schedule.decay_min_block=48", "schedule.decay_min_block", "48 does not divide"),
        ("seq_len=250", "schedule.warmup_block_sizes", "does not divide seq_len=250"),
        ("parallel.tp=2", "parallel.world_size", "does not divide world_size=1"),
        ("parallel.ep=3", "parallel.ep", "does not divide"),
        ("schedule.seq_len=128", "schedule.seq_len", "differs from seq_len=256"),
        ("data.val_fraction=1.5", "data.val_fraction", "less than 1"),
    ],
)
def test_impossible_values_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as err:
        load_recipe("tiny-cpu", [override])
    assert f"key '{key}'" in str(err.value) and fragment in str(err.value), str(err.value)
    assert "tiny-cpu.yaml" in str(err.value)


def test_missing_path_is_a_config_error(tmp_path):
    from stages.prepare_data import PrepareDataConfig

    with pytest.raises(ConfigError, match=r"key 'input': path does not exist: .*nope"):
        load_config(PrepareDataConfig, values={"input": str(tmp_path / "nope"), "out": "x", "seq_len": 8})
    with pytest.raises(ConfigError, match=r"key 'tokenizer.path': path does not exist"):
        load_config(PrepareDataConfig,
                    values={"input": "stdlib", "out": "x", "seq_len": 8, "tokenizer": {"path": "/no/tok"}})


def test_seq_len_below_two_rejected():
    from stages.prepare_data import PrepareDataConfig

    with pytest.raises(ConfigError, match=r"key 'seq_len'.*greater than or equal to 2"):
        load_config(PrepareDataConfig, values={"input": "stdlib", "out": "x", "seq_len": 1})


def test_overrides_parse_yaml_and_win_over_file():
    cfg = load_recipe("tiny-cpu", ["seq_len=512", "parallel.world_size=4", "parallel.tp=2", "data.tokenizer.path=null"])
    assert cfg.seq_len == 512 and cfg.schedule.seq_len == 512
    assert cfg.parallel.tp == 2 and cfg.parallel.dp == 2 and cfg.parallel.use_sequence_parallel
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["seq_len"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seq_len": 3}, ["seq_len.x=1"])


def test_canonical_json_is_stable_and_seed_sensitive(tmp_path):
    a = load_recipe("tiny-cpu")
    b = load_config(RecipeConfig, write(tmp_path, BASE))
    assert canonical_json(a) == canonical_json(b) and config_digest(a) == config_digest(b)
    assert json.loads(canonical_json(a))["schedule"]["seq_len"] == 256
    assert config_digest(load_recipe("tiny-cpu", ["seed=1"])) != config_digest(a)


def test_yaml_key_order_does_not_change_digest(tmp_path):
    p1 = write(tmp_path, "name: x\nseq_len: 128\n"
                         "schedule: {warmup_tokens_per_block: 1, stable_tokens: 2, decay_tokens_per_block: 3}\n")
    cfg1 = load_config(RecipeConfig, p1)
    p2 = tmp_path / "b.yaml"
    p2.write_text("schedule: {decay_tokens_per_block: 3, stable_tokens: 2, warmup_tokens_per_block: 1}\n"
                  "seq_len: 128\nname: x\n")
    assert config_digest(cfg1) == config_digest(load_config(RecipeConfig, p2))


def test_layout_model_checks():
    layout = ParallelLayout(world_size=8, tp=2, pp=2, ep=2)
    assert layout.dp == 2
    layout.check_model(num_layers=4, num_experts=8, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="num_layers=3 is not divisible by pp=2"):
        layout.check_model(num_layers=3, num_experts=8, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="num_experts=3 is not divisible by ep=2"):
        layout.check_model(num_layers=4, num_experts=3, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="num_kv_heads=1 is not divisible by tp=2"):
        layout.check_model(num_layers=4, num_experts=8, num_heads=4, num_kv_heads=1)
    with pytest.raises(ValueError, match=r"vocab_size=289 is not divisible by tp=2 \(pad the vocabulary\)"):
        layout.check_model(num_layers=4, num_experts=8, num_heads=4, num_kv_heads=2, vocab_size=289)


def test_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RecipeConfig, write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(RecipeConfig, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RecipeConfig, tmp_path / "missing.yaml")


def test_recipe_wires_mask_noise_over_the_whole_cpt_and_dpos_pairs_into_eval():
    from llada_recipe.build import build_nodes, tokens_per_step

    def nodes(*over):
        cfg = load_recipe("tiny-cpu", list(over))
        return cfg, {n.name: n.config for n in build_nodes(cfg)}

    cfg, carried = nodes()
    per_step = tokens_per_step(cfg)
    phases = [carried[f"cpt_{p}"]["training"] for p in ("warmup", "stable", "decay")]
    # carried state continues the step count, so each node keeps the CPT-wide window of 100 steps
    assert {p["objective"]["mask_noise_std"] for p in phases} == {0.1}
    assert [p["objective"]["mask_noise_steps"] for p in phases] == [100, 100, 100]
    assert all(p.get("init_state") for p in phases[1:])
    _, fresh = nodes("cpt.carry_state=false")
    fresh_phases = [fresh[f"cpt_{p}"]["training"] for p in ("warmup", "stable", "decay")]
    starts = [p["schedule_offset_tokens"] // per_step for p in fresh_phases]
    assert starts[0] == 0 and starts[1] > 0
    assert [p["objective"]["mask_noise_steps"] for p in fresh_phases] == [max(0, 100 - s) for s in starts]
    _, off = nodes("dpo.objective.alpha_min=0.5", "dpo.objective.eos_tail=false")
    assert off["eval"]["pairs"] == {"block_size": 32, "alpha_min": 0.5, "alpha_max": 0.8, "eos_tail": False}
    assert carried["sft"]["training"]["objective"]["eos_tail"] is True


def test_a_trained_tokenizer_keeps_the_built_in_tasks_symbols_whole(tmp_path):
    from llada_core.data.synthetic import SYMBOLS
    from llada_recipe.build import build_nodes

    def tokenizer(*over):
        nodes = {n.name: n.config for n in build_nodes(load_recipe("tiny-cpu", list(over)))}
        return nodes["prepare_pretrain"]["tokenizer"]

    assert tokenizer()["single_tokens"] == sorted(SYMBOLS) and " 9" in SYMBOLS
    assert tokenizer("data.tokenizer.single_tokens=[' Ok']")["single_tokens"] == sorted({*SYMBOLS, " Ok"})
    user = tmp_path / "sft.jsonl"
    user.write_text("{}\n")
    # the user's own instruction data: no built-in tasks, nothing added
    assert tokenizer(f"instruct.sft_input={user}", f"instruct.dpo_input={user}")["single_tokens"] == []
    with pytest.raises(ConfigError, match="single_tokens.*only a trained tokenizer"):
        load_recipe("tiny-cpu", [f"data.tokenizer={{path: {user}, single_tokens: [' 9']}}"])


def test_start_at_a_finetune_stage_skips_cpt_and_starts_from_the_imported_model(tmp_path):
    from llada_recipe.build import build_nodes

    def graph(*over):
        return {n.name: n for n in build_nodes(load_recipe("tiny-cpu", list(over)))}

    full = graph()
    assert {"cpt_warmup", "cpt_stable", "cpt_decay", "merge"} <= set(full)
    assert full["export"].config["format"] == "llada2" and full["export"].config["relocate_mask"]
    assert full["export"].config["decoding"] == {"block_length": 32, "threshold": 0.95}
    hf = tmp_path / "llada2-mini"
    for stage, trained in (("sft", ["sft", "cap", "dpo"]), ("cap", ["cap", "dpo"]), ("dpo", ["dpo"])):
        g = graph(f"start_at={stage}", f"base.hf_checkpoint={hf}", "export.format=llada2")
        assert [n for n in g if n in ("cpt_warmup", "cpt_stable", "cpt_decay", "merge", "sft", "cap", "dpo")] == trained
        assert g["base"].stage.endswith(":import_hf") and g["base"].config["hf_dir"] == str(hf)
        first = g[trained[0]].config["training"]
        assert first["init_checkpoint"] == "${base.checkpoint}" and not first.get("init_state")
        if stage == "dpo":
            assert first["reference_checkpoint"] == "${base.checkpoint}"
        else:
            assert g["dpo"].config["training"]["reference_checkpoint"] == "${cap.checkpoint}"
        assert g["export"].config["checkpoint"] == "${dpo.checkpoint}" and g["export"].config["format"] == "llada2"
        assert g["eval"].config["decode_models"] == ["base", *trained]
        assert set(g["eval"].config["models"]) == {"base", *trained}
    with pytest.raises(ConfigError, match="start_at='sft' starts from an imported diffusion model"):
        load_recipe("tiny-cpu", ["start_at=sft"])
    with pytest.raises(ConfigError, match="unknown export format 'gguf'"):
        load_recipe("tiny-cpu", ["export.format=gguf"])


def test_a_diffusion_export_of_a_trained_tokenizer_needs_the_mask_moved_known_at_load(tmp_path):
    from llada_recipe.build import build_nodes, recipe_memory

    with pytest.raises(ConfigError, match=r"key 'export.relocate_mask': servers feed export.format=llada2 \[MASK\] "
                                          r"= id 156895, and the tokenizer this recipe trains has it at id 3: set"):
        load_recipe("tiny-cpu", ["export.relocate_mask=false"])
    with pytest.raises(ConfigError, match="key 'export.format': router_score='sigmoid' is not expressible as Qwen3"):
        load_recipe("tiny-cpu", ["export.format=sdar"])  # the tiny preset is Ling-shaped
    with pytest.raises(ConfigError, match="key 'export.relocate_mask': export.format=ling has no fixed"):
        load_recipe("tiny-cpu", ["export.format=ling"])
    moved, ar = (load_recipe("tiny-cpu", o) for o in ([], ["export.format=ling", "export.relocate_mask=false"]))
    # the relocated export holds the grown 156,928 x 128 fp32 matrix twice
    assert recipe_memory(moved).export - recipe_memory(ar).export == 2 * 156928 * 128 * 4
    imported = {n.name: n for n in build_nodes(load_recipe("tiny-cpu", [f"base.hf_checkpoint={tmp_path}"]))}
    assert imported["base"].config["export_format"] == "llada2" and imported["base"].config["relocate_mask"]


def test_token_editing_is_one_switch_for_cpt_sft_and_cap_and_the_eval_decodes_its_modes():
    from llada_recipe.build import build_nodes

    def graph(*over):
        return {n.name: n.config for n in build_nodes(load_recipe("tiny-cpu", list(over)))}

    off, on = graph(), graph("token_editing={ratio: 0.1}")
    trained = ("cpt_warmup", "cpt_stable", "cpt_decay", "sft", "cap")
    assert all(off[n]["training"]["objective"]["edit"]["ratio"] == 0 for n in trained)
    assert all(on[n]["training"]["objective"]["edit"] == {"ratio": 0.1, "supervise": "visible", "weight": 1.0}
               for n in trained)
    assert "edit" not in on["dpo"]["training"]["objective"] and on["base"]["training"]["objective"]["kind"] == "ar"
    assert off["eval"]["edit_modes"] == {} and "edit_modes" not in off["export"]["decoding"]
    assert on["eval"]["edit_modes"] == on["export"]["decoding"]["edit_modes"] == {
        "speed": {"threshold": 0.5, "edit_threshold": 0.9, "edit_steps": 16},
        "quality": {"threshold": 0.8, "edit_threshold": 0.9, "edit_steps": 16}}
    with pytest.raises(ConfigError, match="key 'sft.objective.edit': token editing is one switch"):
        load_recipe("tiny-cpu", ["sft.objective.edit.ratio=0.2"])
