import pytest

from llada_core.config import ConfigError
from llada_core.model.config import load_preset


def non_embedding_active(cfg):
    return cfg.active_params() - cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)


@pytest.mark.parametrize("name, total, active, non_emb_active", [
    ("llada2-mini", 16e9, 1.4e9, 0.789e9),  # Ling-mini-2.0: 16B total, 1.4B active, 789M non-embedding
    ("llada2-flash", 100e9, 6.1e9, 4.8e9),  # Ling-flash-2.0: 100B total, 6.1B active, 4.8B non-embedding
])
def test_presets_match_published_sizes(name, total, active, non_emb_active):
    cfg = load_preset(name)
    assert cfg.total_params() == pytest.approx(total, rel=0.05)
    assert cfg.active_params() == pytest.approx(active, rel=0.03)
    assert non_embedding_active(cfg) == pytest.approx(non_emb_active, rel=0.02)


def test_tiny_preset_is_small_and_moe():
    cfg = load_preset("tiny")
    assert 1e6 < cfg.total_params() < 1e7 and cfg.moe_layers() == [False, True, True, True]


@pytest.mark.parametrize("override, key", [
    ("num_kv_heads=3", "num_kv_heads"),
    ("moe_topk=17", "moe_topk"),
    ("router_num_groups=3", "router_num_groups"),
    ("router_group_topk=5", "router_group_topk"),
    ("rotary_percent=0.3", "rotary_percent"),
    ("hidden_sise=3", "hidden_sise"),
])
def test_bad_shapes_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_preset("tiny", [override])


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny"):
        load_preset("huge")
