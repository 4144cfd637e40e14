"""HF import/export against `transformers` as the oracle (tiny random models built from configs,
nothing downloaded): our causal-mask logits must equal transformers' logits."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llada_core import masks
from llada_core.checkpoint import copy_into, load_checkpoint, tensors_digest
from llada_core.data.tokenizer import load_tokenizer
from llada_core.model.hf_config import CheckpointError
from llada_core.model.hf_io import expected_shapes
from llada_core.objectives.common import positions
from stages.model_hf import export_hf, import_hf

pytestmark = pytest.mark.slow  # builds several megatron models


def hf_tokenizer_dir(path, vocab: int):
    """A base model's tokenizer: word-level, EOS only, no mask token (like an AR checkpoint)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(vocab - 1)} | {"</s>": vocab - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))


def make_hf(kind, path, **over):
    from transformers import (
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, intermediate_size=48, max_position_embeddings=128, rope_theta=10000.0)
    if kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common | over))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in common.items() if k != "head_dim"} | over))
    else:
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**common | dict(moe_intermediate_size=16, num_local_experts=4,
                                                                   num_experts_per_tok=2, norm_topk_prob=True) | over))
    with torch.no_grad():  # non-trivial norms, so a mixed-up norm mapping shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(path)
    hf_tokenizer_dir(path, 96)
    return model


@pytest.fixture(scope="module")
def megatron_ready():
    from llada_core.parallel.setup import init_single_process

    init_single_process(seed=3)


def our_logits(ckpt, ids):
    from llada_core.model.build import LladaModel

    cfg, state, _, _ = load_checkpoint(ckpt)
    model = LladaModel(cfg).eval()
    copy_into(model, state.items())
    with torch.no_grad():
        return model(ids, positions(*ids.shape, ids.device), masks.causal_mask(torch.zeros_like(ids)))


@pytest.mark.parametrize("kind, over", [("qwen2", {"tie_word_embeddings": True}), ("qwen3", {}), ("qwen3_moe", {}),
                                        ("qwen3_moe", {"norm_topk_prob": False, "mlp_only_layers": [0]})])
def test_imported_logits_match_transformers(megatron_ready, tmp_path, kind, over):
    hf = make_hf(kind, tmp_path / "hf", **over)
    meta = import_hf(tmp_path / "hf", tmp_path / "ckpt", add_mask_token="<|mask|>")
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    ours = our_logits(tmp_path / "ckpt", ids)
    assert ours.shape[-1] > 96 and meta["vocab_rows_added"] == ours.shape[-1] - 96  # [MASK] & co. added
    assert (ours[..., :96] - ref).abs().max().item() <= 1e-4
    tok = load_tokenizer(tmp_path / "ckpt" / "tokenizer")
    assert tok.special["mask"] == "<|mask|>" and tok.id_of("mask") >= 96 and tok.special["eos"] == "</s>"


@pytest.mark.parametrize("kind, over", [("qwen3_moe", {}), ("qwen2", {"tie_word_embeddings": True})])
def test_export_reimport_is_bit_exact_and_transformers_loads_it(megatron_ready, tmp_path, kind, over):
    from transformers import AutoModelForCausalLM

    make_hf(kind, tmp_path / "hf", **over)
    import_hf(tmp_path / "hf", tmp_path / "ckpt", add_mask_token="<|mask|>")
    export_hf(tmp_path / "ckpt", tmp_path / "export")
    with pytest.raises(CheckpointError, match="exists; refusing to overwrite"):
        export_hf(tmp_path / "ckpt", tmp_path / "export")
    import_hf(tmp_path / "export", tmp_path / "ckpt2")
    a, b = load_checkpoint(tmp_path / "ckpt"), load_checkpoint(tmp_path / "ckpt2")
    assert a[0] == b[0] and tensors_digest(a[1]) == tensors_digest(b[1]) and a[2].digest == b[2].digest
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    ids = torch.randint(0, 96, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (reloaded(ids).logits - our_logits(tmp_path / "ckpt", ids)).abs().max().item() <= 1e-4


def test_streamed_export_in_parts_equals_the_whole_model_export(megatron_ready, tmp_path):
    """Export streams our tensors into HF's sharded layout: the same tensors, bit for bit, as the
    one-file export of the whole state in memory (the previous path), and transformers loads it."""
    from transformers import AutoModelForCausalLM

    from llada_core.model.hf_io import megatron_to_hf

    make_hf("qwen3_moe", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ckpt", add_mask_token="<|mask|>")
    export_hf(tmp_path / "ckpt", tmp_path / "parts", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "parts" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not (tmp_path / "parts" / "model.safetensors").exists()
    streamed = {k: v for f in files for k, v in load_file(tmp_path / "parts" / f).items()}
    cfg, state, _, _ = load_checkpoint(tmp_path / "ckpt")
    whole = megatron_to_hf(state, cfg, "qwen3_moe")
    assert streamed.keys() == whole.keys() == index["weight_map"].keys()
    assert all(torch.equal(streamed[k], whole[k]) for k in whole)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "parts").eval()
    ids = torch.randint(0, 96, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (reloaded(ids).logits - our_logits(tmp_path / "ckpt", ids)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("per_layer", [True, False])
def test_a_homogeneous_model_consolidates_from_its_training_checkpoint(megatron_ready, tmp_path, per_layer):
    """A dense model's layers are all alike: megatron stacks them into one [num_layers, ...] tensor per
    weight unless told not to (the trainer does: one layer at a time when consolidating). Both forms
    consolidate to the model's own state dict, bit for bit."""
    from megatron.core import dist_checkpointing

    from llada_core.consolidate import consolidated_tensors
    from llada_core.model.build import LladaModel

    make_hf("qwen3", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ckpt", add_mask_token="<|mask|>")
    cfg, state, _, _ = load_checkpoint(tmp_path / "ckpt")
    model = LladaModel(cfg)
    copy_into(model, state.items())
    metadata = {"non_homogeneous_layers": True} if per_layer else None
    (tmp_path / "train").mkdir()
    dist_checkpointing.save(model.gpt.sharded_state_dict(metadata=metadata), str(tmp_path / "train"))
    got = dict(consolidated_tensors(tmp_path / "train"))
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k].float()) for k in state)


def test_expected_shapes_match_the_built_model(megatron_ready):
    from llada_core.model.build import LladaModel
    from llada_core.model.config import load_preset

    cfg = load_preset("tiny", ["vocab_size=64"])
    built = {k: tuple(v.shape) for k, v in LladaModel(cfg).state_dict().items() if not k.endswith("_extra_state")}
    assert built == expected_shapes(cfg)


def test_bad_checkpoints_name_the_problem(megatron_ready, tmp_path):
    make_hf("qwen3", tmp_path / "hf")
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())

    def variant(name, tensors=weights, config=cfg, tokenizer_vocab=96):
        d = tmp_path / name
        d.mkdir()
        save_file(tensors, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(config))
        hf_tokenizer_dir(d, tokenizer_vocab)
        return d

    missing = {k: v for k, v in weights.items() if k != "model.layers.1.self_attn.k_proj.weight"}
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.self_attn.k_proj.weight'"):
        import_hf(variant("missing", missing), tmp_path / "o1", add_mask_token="<|mask|>")
    wrong = dict(weights, **{"model.layers.0.mlp.down_proj.weight": torch.zeros(32, 40)})
    with pytest.raises(CheckpointError,
                       match=r"layers.0.mlp.linear_fc2.weight' has shape \(32, 40\), expected \(32, 48\)"):
        import_hf(variant("shape", wrong), tmp_path / "o2", add_mask_token="<|mask|>")
    with pytest.raises(CheckpointError, match="unknown architecture model_type='llama'"):
        import_hf(variant("arch", config=cfg | {"model_type": "llama"}), tmp_path / "o3", add_mask_token="<|mask|>")
    with pytest.raises(CheckpointError,
                       match="vocab mismatch: the tokenizer has 120 tokens but config.json vocab_size=96"):
        import_hf(variant("vocab", tokenizer_vocab=120), tmp_path / "o4", add_mask_token="<|mask|>")
    extra = dict(weights, **{"model.layers.0.mystery.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected tensors.*mystery"):
        import_hf(variant("extra", extra), tmp_path / "o5", add_mask_token="<|mask|>")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    hf_tokenizer_dir(tmp_path / "pickled", 96)
    with pytest.raises(CheckpointError, match="pickle checkpoints are not loaded"):
        import_hf(tmp_path / "pickled", tmp_path / "o6", add_mask_token="<|mask|>")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))  # nothing half-written


def test_bailing_moe_v2_round_trip(megatron_ready, tmp_path):
    """Our Ling-shaped tiny model exports as BailingMoeV2 (fused query_key_value, shared experts,
    expert_bias, partial RoPE) and re-imports bit-exact with identical logits. transformers has no
    BailingMoeV2 class to serve as a logits oracle here; the tensor names and the contiguous [Q|K|V]
    fusion were checked against public BailingMoeV2 loaders (sglang/NeMo-style converters)."""
    from llada_core.checkpoint import save_checkpoint
    from llada_core.data.tokenizer import train_bpe
    from llada_core.model.build import LladaModel
    from llada_core.model.config import load_preset

    tok = train_bpe(iter(["some text for a tokenizer"] * 10), 300)
    cfg = load_preset("tiny", [f"vocab_size={tok.vocab_size}"])
    model = LladaModel(cfg)
    with torch.no_grad():
        for layer in model.gpt.decoder.layers[1:]:
            layer.mlp.router.expert_bias.uniform_(-0.1, 0.1)  # non-zero, so a dropped bias shows
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    save_checkpoint(tmp_path / "ckpt", cfg, state.items(), tok, {"source": "test"})
    hf_cfg = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert hf_cfg["model_type"] == "bailing_moe_v2" and hf_cfg["partial_rotary_factor"] == 0.5
    names = set(load_file(str(tmp_path / "hf" / "model.safetensors")))
    assert {"model.layers.1.attention.query_key_value.weight", "model.layers.1.mlp.gate.expert_bias",
            "model.layers.1.mlp.shared_experts.gate_proj.weight", "model.word_embeddings.weight"} <= names
    import_hf(tmp_path / "hf", tmp_path / "ckpt2")
    a, b = load_checkpoint(tmp_path / "ckpt"), load_checkpoint(tmp_path / "ckpt2")
    assert a[0] == b[0] and tensors_digest(a[1]) == tensors_digest(b[1])
    ids = torch.randint(0, tok.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(our_logits(tmp_path / "ckpt", ids), our_logits(tmp_path / "ckpt2", ids))
