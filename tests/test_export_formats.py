"""export-hf in the diffusion-LM serving formats, checked against what each format requires: a table
written from the recipe note's "Serving formats" section (LLaDA2MoeModelLM: tensor names, config fields,
[MASK] 156895, expert bias fp32; SDAR: Qwen3's names, [MASK] 151669). Tiny random checkpoints whose
tokenizer has [MASK] at the format's id (a vocabulary of the format's size, like a released model's)."""

import json

import pytest
import torch
from safetensors import safe_open

from llada_core.checkpoint import load_checkpoint, save_checkpoint, tensors_digest
from llada_core.data.chat import encode_prompt
from llada_core.data.tokenizer import DEFAULT_SPECIAL, LladaTokenizer
from llada_core.model.config import ModelConfig
from llada_core.model.hf_config import CheckpointError
from llada_core.model.hf_io import expected_shapes
from pipelines.cli import main
from stages.model_hf import export_hf, import_hf

LING = dict(hidden_size=16, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=4, ffn_hidden_size=24,
            first_k_dense=1, num_experts=4, moe_topk=2, moe_ffn_hidden_size=8, shared_expert_ffn_hidden_size=8,
            router_score="sigmoid", router_num_groups=2, router_group_topk=1, routed_scaling_factor=2.5)
QWEN3 = dict(hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4, ffn_hidden_size=24,
             first_k_dense=2, rotary_percent=1.0)
QWEN3_MOE = QWEN3 | dict(first_k_dense=0, num_experts=4, moe_topk=2, moe_ffn_hidden_size=8, router_score="softmax",
                         router_expert_bias=False)

# format -> (vocab of its released models, ids of [MASK] and EOS there)
VOCAB = {"llada2": (157184, 156895, 156892), "sdar": (151936, 151669, 151645)}

# What a LLaDA2 checkpoint holds (recipe note), per layer relative to model.layers.{i}.
LLADA2_TOP = {"model.word_embeddings.weight", "model.norm.weight", "lm_head.weight"}
LLADA2_LAYER = ["input_layernorm.weight", "post_attention_layernorm.weight", "attention.query_key_value.weight",
                "attention.query_layernorm.weight", "attention.key_layernorm.weight", "attention.dense.weight"]
LLADA2_DENSE = ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
LLADA2_MOE = ["mlp.gate.weight", "mlp.gate.expert_bias", "mlp.shared_experts.gate_proj.weight",
              "mlp.shared_experts.up_proj.weight", "mlp.shared_experts.down_proj.weight"]
LLADA2_FIELDS = ["hidden_size", "intermediate_size", "num_hidden_layers", "first_k_dense_replace",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "moe_intermediate_size", "num_experts",
                 "num_experts_per_tok", "num_shared_experts", "n_group", "topk_group", "routed_scaling_factor",
                 "score_function", "moe_router_enable_expert_bias", "norm_topk_prob", "use_qk_norm", "use_qkv_bias",
                 "partial_rotary_factor", "rope_theta", "rms_norm_eps", "vocab_size", "pad_token_id",
                 "tie_word_embeddings"]
SDAR_LAYER = ["input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
              "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
              "self_attn.q_norm.weight", "self_attn.k_norm.weight"]
FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}


def aligned_tokenizer(vocab: int, mask_id: int, eos_id: int) -> LladaTokenizer:
    """Word-level, `vocab` entries, [MASK] and EOS at the given ids (the rest of the roles just below)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    roles = dict(DEFAULT_SPECIAL)
    at = {"mask": mask_id, "eos": eos_id} | {r: eos_id - 1 - i for i, r in enumerate(
        r for r in roles if r not in ("mask", "eos"))}
    special = {at[r]: roles[r] for r in roles}
    words = {special.get(i, f"t{i}"): i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(roles.values()))
    return LladaTokenizer(tok, roles)


def checkpoint(path, shape: dict, fmt: str, dtype=torch.float32):
    vocab, mask_id, eos_id = VOCAB[fmt]
    tok = aligned_tokenizer(vocab, mask_id, eos_id)
    cfg = ModelConfig(vocab_size=vocab, qk_norm=True, **shape)
    g = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=g) * 0.1).to(dtype) for k, s in expected_shapes(cfg).items()}
    save_checkpoint(path, cfg, tensors.items(), tok, {"source": "test"})
    return cfg, tok


def read_export(d):
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_slice(k) for k in f.keys()}
        return {k: (tuple(t.get_shape()), t.get_dtype()) for k, t in tensors.items()}


def test_llada2_export_has_what_the_format_requires_and_reimports_bit_exact(tmp_path):
    cfg, tok = checkpoint(tmp_path / "ckpt", LING, "llada2")
    editing = {"speed": {"threshold": 0.5, "edit_threshold": 0.9, "edit_steps": 16}}  # a token-editing model's
    hf_cfg = export_hf(tmp_path / "ckpt", tmp_path / "hf", "llada2",
                       {"block_length": 32, "threshold": 0.9, "edit_modes": editing})
    d = tmp_path / "hf"
    assert {p.name for p in d.iterdir()} >= FILES
    config = json.loads((d / "config.json").read_text())
    assert config == {k: v for k, v in hf_cfg.items() if k != "format"}
    assert config["architectures"] == ["LLaDA2MoeModelLM"] and config["model_type"] == "llada2_moe"
    assert set(LLADA2_FIELDS) <= set(config)
    assert (config["num_experts"], config["num_shared_experts"], config["first_k_dense_replace"]) == (4, 1, 1)
    assert (config["n_group"], config["topk_group"], config["score_function"]) == (2, 1, "sigmoid")
    assert config["partial_rotary_factor"] == 0.5 and config["pad_token_id"] == tok.id_of("pad")

    tensors = read_export(d)
    want = set(LLADA2_TOP) | {f"model.layers.0.{n}" for n in LLADA2_LAYER + LLADA2_DENSE}
    want |= {f"model.layers.{i}.{n}" for i in (1, 2) for n in LLADA2_LAYER + LLADA2_MOE}
    want |= {f"model.layers.{i}.mlp.experts.{e}.{p}_proj.weight" for i in (1, 2) for e in range(4)
             for p in ("gate", "up", "down")}
    assert set(tensors) == want
    qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim  # fused q|k|v
    assert tensors["model.layers.1.attention.query_key_value.weight"][0] == (qkv_rows, 16)
    assert tensors["model.layers.1.mlp.gate.weight"][0] == (4, 16)
    assert tensors["model.layers.1.mlp.gate.expert_bias"] == ((4,), "F32")
    assert tensors["model.word_embeddings.weight"][0] == (157184, 16)

    gen = json.loads((d / "generation_config.json").read_text())
    assert (gen["block_length"], gen["threshold"], gen["mask_token_id"], gen["eos_token_id"]) == (32, 0.9, 156895,
                                                                                                  156892)
    assert gen["edit_modes"] == editing
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert tok_cfg["mask_token"] == "<|mask|>" and "chat_template" in tok_cfg

    import_hf(d, tmp_path / "back")
    a, b = load_checkpoint(tmp_path / "ckpt"), load_checkpoint(tmp_path / "back")
    assert a[0] == b[0] and tensors_digest(a[1]) == tensors_digest(b[1]) and a[2].digest == b[2].digest


def test_a_bf16_model_keeps_the_expert_bias_in_fp32(tmp_path):
    checkpoint(tmp_path / "ckpt", LING, "llada2", dtype=torch.bfloat16)
    export_hf(tmp_path / "ckpt", tmp_path / "hf", "llada2")
    tensors = read_export(tmp_path / "hf")
    assert tensors["model.layers.2.mlp.gate.expert_bias"][1] == "F32"
    assert tensors["model.layers.2.mlp.gate.weight"][1] == "BF16"
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["block_length"] == 32  # default


@pytest.mark.parametrize("shape, arch", [(QWEN3, "SDARForCausalLM"), (QWEN3_MOE, "SDARMoeForCausalLM")])
def test_sdar_export_is_qwen3_named_and_reimports_bit_exact(tmp_path, shape, arch):
    checkpoint(tmp_path / "ckpt", shape, "sdar")
    hf_cfg = export_hf(tmp_path / "ckpt", tmp_path / "hf", "sdar")
    assert hf_cfg["architectures"] == [arch] and hf_cfg["model_type"] == ("sdar_moe" if "Moe" in arch else "sdar")
    tensors = read_export(tmp_path / "hf")
    assert {f"model.layers.1.{n}" for n in SDAR_LAYER} <= set(tensors)
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" in tensors
    if "Moe" in arch:
        assert {f"model.layers.0.mlp.experts.{e}.gate_proj.weight" for e in range(4)} <= set(tensors)
        assert hf_cfg["num_experts"] == 4 and hf_cfg["mlp_only_layers"] == []
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (gen["block_length"], gen["mask_token_id"]) == (4, 151669)
    import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = load_checkpoint(tmp_path / "ckpt"), load_checkpoint(tmp_path / "back")
    assert a[0] == b[0] and tensors_digest(a[1]) == tensors_digest(b[1])


def test_the_chat_template_renders_our_prompt_token_for_token(tmp_path):
    from transformers import PreTrainedTokenizerFast

    _, tok = checkpoint(tmp_path / "ckpt", QWEN3, "sdar")
    export_hf(tmp_path / "ckpt", tmp_path / "hf", "sdar")
    hf_tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    messages = [{"role": "system", "content": "t5 t6"}, {"role": "user", "content": "t7 t8 t9"},
                {"role": "assistant", "content": "t10"}, {"role": "user", "content": "t11"}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == encode_prompt(tok, messages)


def test_what_a_format_cannot_hold_is_one_error_and_nothing_written(tmp_path, capsys):
    checkpoint(tmp_path / "ling", LING, "llada2")
    checkpoint(tmp_path / "dense", QWEN3, "llada2")
    checkpoint(tmp_path / "ling-full-rope", LING | {"rotary_percent": 1.0}, "llada2")
    cases = [("ling", "sdar", r"rotary_percent=0.5 is not expressible as Qwen3 \(needs 1.0\)"),
             ("ling-full-rope", "qwen", "router_score='sigmoid' is not expressible as Qwen3-MoE"),
             ("dense", "llada2", "num_experts=0: LLaDA2MoeModelLM is a MoE architecture"),
             ("dense", "sdar", r"mask token '<\|mask\|>' is id 156895, but servers load --format sdar with "
                               r"\[MASK\] = id 151669")]
    for ckpt, fmt, message in cases:
        with pytest.raises(CheckpointError, match=message):
            export_hf(tmp_path / ckpt, tmp_path / "out", fmt)
        assert not (tmp_path / "out").exists()
    export_hf(tmp_path / "dense", tmp_path / "hf", "qwen")  # an HF dir whose [MASK] is LLaDA2's id
    with pytest.raises(CheckpointError, match=r"is id 156895, but servers load --format sdar"):
        import_hf(tmp_path / "hf", tmp_path / "out", export_format="sdar")  # a recipe's base: before training
    with pytest.raises(CheckpointError, match="num_experts=0: LLaDA2MoeModelLM is a MoE architecture"):
        import_hf(tmp_path / "hf", tmp_path / "out", export_format="llada2")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="unknown export format 'gguf'"):
        export_hf(tmp_path / "ling", tmp_path / "out", "gguf")
    assert main(["model", "export-hf", str(tmp_path / "dense"), "--out", str(tmp_path / "out"),
                 "--format", "sdar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "151669" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_graph_with_an_unknown_format_fails_when_validated_naming_the_node():
    from pipelines import dag

    for stage, config in (("export_hf", {"checkpoint": "c", "out": "${out}", "format": "gguf"}),
                          ("import_hf", {"hf_dir": "h", "out": "${out}", "export_format": "gguf"})):
        with pytest.raises(dag.DagError, match=r"(?s)node 'x': config error.*unknown export format 'gguf'"):
            dag.validate([dag.Node("x", f"stages.llada:{stage}", config)])
