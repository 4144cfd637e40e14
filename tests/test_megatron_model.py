"""The megatron-core model on CPU (through llada_core.parallel.cpu_compat): builds, trains, honours
masks and RoPE positions exactly as the objectives assume."""

import pytest
import torch

from llada_core import masks
from llada_core.model.config import load_preset
from llada_core.objectives.block_diffusion import block_diffusion_loss, denoise_logits
from llada_core.objectives.common import draw_noise, positions
from llada_core.sampler import generate

pytestmark = pytest.mark.slow  # builds megatron-core models

MASK = 3


@pytest.fixture(scope="module")
def model():
    from llada_core.model.build import LladaModel
    from llada_core.parallel.setup import init_single_process

    init_single_process(seed=7)
    cfg = load_preset("tiny", ["vocab_size=64", "max_position=128"])
    return LladaModel(cfg).eval()


def test_cpu_compat_is_applied_only_without_cuda():
    from llada_core.parallel import cpu_compat

    assert cpu_compat.apply() is (not torch.cuda.is_available())


def test_the_torch_layer_spec_patches_apply_on_cuda_too():
    """On a CUDA machine (faked in a fresh interpreter) the CPU shims stay off, but the torch norm
    accepts sequence parallel (TP > 1 with MoE) and tags its params for the TP grad all-reduce."""
    import subprocess
    import sys

    code = """
import types, torch
torch.cuda.is_available = lambda: True
device = torch.cuda.current_device
from llada_core.parallel import cpu_compat
from megatron.core.transformer.torch_norm import WrappedTorchNorm
assert cpu_compat.apply() is False
assert torch.cuda.current_device is device  # no CPU shim
cfg = types.SimpleNamespace(sequence_parallel=True, normalization="RMSNorm", layernorm_zero_centered_gamma=False)
norm = WrappedTorchNorm(cfg, 16)
assert isinstance(norm, torch.nn.RMSNorm) and norm.weight.sequence_parallel
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_forward_backward_and_moe_layout(model):
    from megatron.core.transformer.moe.moe_layer import MoELayer

    layers = model.gpt.decoder.layers
    assert [isinstance(layer.mlp, MoELayer) for layer in layers] == [False, True, True, True]
    assert sum(p.numel() for p in model.parameters()) == model.cfg.total_params() - 3 * 16  # expert_bias is a buffer
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(8, 64, (2, 32), generator=g)
    doc = torch.tensor([[0] * 20 + [1] * 12, [0] * 32])
    model.train()
    out = block_diffusion_loss(model, x0, doc, 8, MASK, generator=g)
    out.loss.backward()
    model.eval()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert out.loss.item() == pytest.approx(4.16, abs=1.0)  # ~ln(64) at init
    model.zero_grad(set_to_none=True)


def test_training_layout_equals_decoding_layout(model):
    """Block k of [x_t ; x_0] (both halves at positions 0..L-1) must see exactly what the decoder
    sees: [x_0 blocks < k ; x_t block k] at positions 0..(k+1)L_B-1 under the block-causal mask.
    RoPE is relative, so this fails if the clean half were rotated at positions L..2L-1 (what
    GPTModel alone does) — checked explicitly below."""
    g = torch.Generator().manual_seed(1)
    L, blk, k = 16, 4, 2
    x0 = torch.randint(8, 64, (1, L), generator=g)
    doc = torch.zeros_like(x0)
    xt = x0.clone()
    xt[0, 8:12] = torch.tensor([MASK, 20, MASK, MASK])
    end = (k + 1) * blk
    with torch.no_grad():
        train = denoise_logits(model, xt, x0, doc, blk)[0, k * blk : end]
        prefix = torch.cat([x0[:, : k * blk], xt[:, k * blk : end]], 1)
        decode = model(prefix, positions(1, end, x0.device), masks.block_causal_mask(doc[:, :end], blk))[0, k * blk :]
        naive_pos = torch.arange(2 * L)[None]  # what GPTModel would use without IndexedRotaryEmbedding
        naive = model(torch.cat([xt, x0], 1), naive_pos, masks.block_diffusion_mask(doc, blk))[0, k * blk : end]
    assert torch.allclose(train, decode, atol=1e-5)
    assert not torch.allclose(train, naive, atol=1e-3)


def test_logits_of_a_prefix_equal_the_full_forwards_and_so_do_the_gradients(model):
    """`logits_len` (the x_t half of [x_t ; x_0]) computes only those positions' logits: the same
    numbers, and the same loss gradients, as slicing the full output."""
    from llada_core.objectives.block_diffusion import denoise_inputs

    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(8, 64, (2, 16), generator=g)
    doc = torch.zeros_like(x0)
    xt = torch.where(torch.rand(x0.shape, generator=g) < 0.5, MASK, x0)
    inputs = denoise_inputs(xt, x0, doc, 4)
    assert inputs["logits_len"] == 16 and inputs["input_ids"].shape[1] == 32
    model.train()
    grads = []
    for trim in (True, False):
        kw = inputs if trim else {k: v for k, v in inputs.items() if k != "logits_len"}
        logits = model(**kw)
        assert logits.shape[1] == (16 if trim else 32)
        logits[:, :16].logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
        if trim:
            trimmed = logits.detach()
        else:
            assert torch.allclose(trimmed, logits[:, :16].detach(), atol=1e-5)
    model.eval()
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-5) for n in grads[0])
    assert denoise_inputs(xt, x0, doc, 16).get("logits_len") is None  # L_B = L: x_t alone, nothing to trim


def test_block_diffusion_invariances(model):
    g = torch.Generator().manual_seed(2)
    L, blk = 16, 4
    x0 = torch.randint(8, 64, (1, L), generator=g)
    doc = torch.tensor([[0] * 10 + [1] * 6])
    xt = x0.clone()
    xt[0, [5, 6]] = MASK
    with torch.no_grad():
        def block1(xt_, x0_):
            return denoise_logits(model, xt_, x0_, doc, blk)[0, 4:8]

        base = block1(xt, x0)
        later = x0.clone()
        later[0, 4:] = (later[0, 4:] + 1) % 64
        other_noisy = xt.clone()
        other_noisy[0, 8:10] = MASK
        earlier = x0.clone()
        earlier[0, 2] = (earlier[0, 2] + 1) % 64
        assert torch.allclose(base, block1(xt, later), atol=1e-5)
        assert torch.allclose(base, block1(other_noisy, x0), atol=1e-5)
        assert not torch.allclose(base, block1(xt, earlier), atol=1e-4)
        # document 1 (positions 10..15) never affects document 0
        doc1_changed = x0.clone()
        doc1_changed[0, 12] = (doc1_changed[0, 12] + 1) % 64
        assert torch.allclose(denoise_logits(model, x0, x0, doc, blk)[0, :10],
                              denoise_logits(model, doc1_changed, doc1_changed, doc, blk)[0, :10], atol=1e-5)
        # L_B = L: the x_t half of [x_t ; x_0] equals x_t alone
        noise = draw_noise(doc >= 0, g)
        xt2 = torch.where(noise.masked, MASK, x0)
        pos = positions(1, L, x0.device)
        two = model(torch.cat([xt2, x0], 1), torch.cat([pos, pos], 1), masks.block_diffusion_mask(doc, L))[:, :L]
        assert torch.allclose(two, model(xt2, pos, masks.document_mask(doc)), atol=1e-5)


def test_mask_embedding_noise_changes_only_with_masks(model):
    ids = torch.tensor([[10, 11, 12, 13]])
    pos = positions(1, 4, ids.device)
    allowed = masks.document_mask(torch.zeros_like(ids))
    with torch.no_grad():
        clean = model(ids, pos, allowed)
        same = model(ids, pos, allowed, mask_noise=(MASK, 0.1, [torch.Generator().manual_seed(0)]))
        ids_m = ids.clone()
        ids_m[0, 1] = MASK
        a = model(ids_m, pos, allowed)
        b = model(ids_m, pos, allowed, mask_noise=(MASK, 0.1, [torch.Generator().manual_seed(0)]))
    assert torch.equal(clean, same) and not torch.allclose(a, b)


def test_sampler_runs_on_the_megatron_model(model):
    kw = dict(mask_id=MASK, eos_id=-1, max_new_tokens=8, max_len=128, block_size=4, threshold=0.95)
    a = generate(model, [10, 11, 12], **kw)
    assert a == generate(model, [10, 11, 12], **kw) and len(a.tokens) == 8 and a.forward_passes >= 3


def test_batched_decoding_equals_one_prompt_at_a_time_with_the_kv_cache(model):
    """The eval decodes a task's prompts together (recompute layout); alone, with the KV cache, each
    prompt gets the same tokens and forward count."""
    from llada_core.sampler import generate_batch

    prompts = [[10, 11, 12], [13], [14, 15, 16, 17, 18, 19], [20, 21, 22, 23, 24]]
    for settings in ({"threshold": 0.02}, {"threshold": 0.95, "left_to_right": True}):
        kw = dict(mask_id=MASK, eos_id=30, stop_ids=(31, 32), max_new_tokens=10, max_len=128, block_size=4) | settings
        alone = [generate(model, p, **kw) for p in prompts]
        together = generate_batch(model, prompts, **kw)
        assert [(r.tokens, r.forward_passes) for r in together] == [(r.tokens, r.forward_passes) for r in alone]


def test_kv_cache_decoding_equals_recompute(model):
    from llada_core.sampler import _cached_logits, _recompute_logits

    g = torch.Generator().manual_seed(4)
    seq = torch.randint(8, 64, (1, 20), generator=g)
    seq[0, 13:16] = MASK  # decoding block 3 (positions 12..15) of block size 4
    with torch.no_grad(), model.kv_cache() as cache:
        full, n_full = _recompute_logits(model, seq, 12, 16, 4)
        first, n_first = _cached_logits(model, seq, 12, 16, 4, cache)  # runs 0..15, commits 0..11
        again, n_again = _cached_logits(model, seq, 12, 16, 4, cache)  # runs only 12..15
    assert cache.length == 12 and (n_full, n_first, n_again) == (16, 16, 4)
    assert torch.allclose(full, first, atol=1e-5) and torch.allclose(full, again, atol=1e-5)

    kw = dict(mask_id=MASK, eos_id=-1, max_new_tokens=12, max_len=128, block_size=4, threshold=0.5)
    prompt = [10, 11, 12, 13, 14, 15]
    cached = generate(model, prompt, **kw)
    recomputed = generate(model, prompt, **kw, use_cache=False)
    assert cached.tokens == recomputed.tokens and cached.forward_passes == recomputed.forward_passes
    assert cached.tokens_processed < recomputed.tokens_processed


def test_flex_backend_forward_matches_sdpa(model):
    """The GPU backend's math, checked on CPU: flex_attention (eager, dynamo re-enabled for this
    test) with a BlockMask from the block-diffusion mask equals SDPA, GQA included."""
    from megatron.core.transformer.enums import AttnMaskType

    from llada_core.model.attention import FlexCoreAttention, SDPACoreAttention

    cfg = model.gpt.config
    sdpa = SDPACoreAttention(config=cfg, layer_number=1, attn_mask_type=AttnMaskType.causal)
    flex = FlexCoreAttention(config=cfg, layer_number=1, attn_mask_type=AttnMaskType.causal)
    g = torch.Generator().manual_seed(5)
    S, B = 32, 2
    q = torch.randn(S, B, cfg.num_attention_heads, cfg.kv_channels, generator=g)
    k, v = (torch.randn(S, B, cfg.num_query_groups, cfg.kv_channels, generator=g) for _ in range(2))
    doc = torch.tensor([[0] * 10 + [1] * 6, [0] * 16])
    masked_out = ~masks.block_diffusion_mask(doc, 4)[:, None]
    with torch._dynamo.config.patch(disable=False):
        out_flex = flex(q, k, v, masked_out)
    assert torch.allclose(out_flex, sdpa(q, k, v, masked_out), atol=1e-5)


def test_flex_backend_is_refused_on_cpu(model):
    from llada_core.model.build import LladaModel

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="attention_backend='flex' needs a GPU"):
        LladaModel(load_preset("tiny", ["attention_backend=flex", "vocab_size=64"]))


def test_generate_text_with_chat_template(model):
    from llada_core.data.tokenizer import train_bpe
    from llada_core.sampler import generate_text

    tok = train_bpe(iter(["Add: 12+30=42 Sort the digits: 321"] * 20), 300)
    from llada_core.model.build import LladaModel

    lm = LladaModel(load_preset("tiny", [f"vocab_size={tok.vocab_size}", "max_position=128"])).eval()
    text, result = generate_text(lm, tok, "Add: 1+2=", max_new_tokens=8, max_len=128, block_size=4)
    again, _ = generate_text(lm, tok, "Add: 1+2=", max_new_tokens=8, max_len=128, block_size=4)
    assert isinstance(text, str) and text == again and 1 <= len(result.tokens) <= 8
    assert result.tpf == len(result.tokens) / result.forward_passes
