import pytest

from llada_core.config import ConfigError, load_config
from llada_core.schedule import WSDConfig

BASE = {"seq_len": 256, "warmup_tokens_per_block": 100, "stable_tokens": 300, "decay_tokens_per_block": 50,
        "lr": 1e-3, "min_lr": 1e-4, "lr_warmup_tokens": 10}


def test_phases_and_block_sizes_in_order():
    s = WSDConfig(**BASE).build()
    assert [(x.phase, x.block_size) for x in s.segments] == [
        ("warmup", 1), ("warmup", 4), ("warmup", 32), ("warmup", 64), ("warmup", 256),
        ("stable", 256), ("decay", 128), ("decay", 64), ("decay", 32)]
    assert s.total_tokens == 5 * 100 + 300 + 3 * 50
    assert s.at(0).block_size == 1 and s.at(99).block_size == 1 and s.at(100).block_size == 4
    assert s.at(499).phase == "warmup" and s.at(500).phase == "stable" and s.at(800).block_size == 128
    assert s.at(10**9).block_size == 32  # past the end the last segment holds
    assert s.phase_range("stable") == (500, 800) and s.phase_range("decay") == (800, 950)


def test_lr_is_warmup_stable_decay():
    s = WSDConfig(**BASE).build()
    assert s.lr_at(0) == pytest.approx(1e-4) and s.lr_at(9) == pytest.approx(1e-3)
    assert s.lr_at(500) == s.lr_at(799) == 1e-3
    assert s.lr_at(875) == pytest.approx(1e-3 + (1e-4 - 1e-3) * 0.5)
    assert s.lr_at(950) == pytest.approx(1e-4)
    cos = WSDConfig(**BASE | {"lr_decay": "cosine"}).build()
    assert cos.lr_at(800) == pytest.approx(1e-3) and cos.lr_at(875) == pytest.approx(5.5e-4)
    lrs = [s.lr_at(t) for t in range(800, 951, 10)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_explicit_decay_and_zero_budget_segments_are_skipped():
    s = WSDConfig(**BASE | {"decay_block_sizes": [64, 16], "stable_tokens": 0}).build()
    assert [(x.phase, x.block_size) for x in s.segments][-3:] == [("warmup", 256), ("decay", 64), ("decay", 16)]
    with pytest.raises(ValueError, match="phase 'stable' has no tokens"):
        s.phase_range("stable")


@pytest.mark.parametrize("change, key", [
    ({"warmup_block_sizes": [1, 3]}, "warmup_block_sizes"),
    ({"warmup_block_sizes": [4, 1]}, "warmup_block_sizes"),
    ({"warmup_block_sizes": [1, 256]}, "warmup_block_sizes"),
    ({"decay_min_block": 24}, "decay_min_block"),
    ({"decay_block_sizes": [32, 64]}, "decay_block_sizes"),
    ({"min_lr": 1.0}, "min_lr"),
])
def test_invalid_schedules_name_the_key(change, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(WSDConfig, values=BASE | change)


def test_describe_is_loggable():
    rows = WSDConfig(**BASE).build().describe()
    assert rows[0] == {"phase": "warmup", "block_size": 1, "start": 0, "end": 100}
    assert all(set(r) == {"phase", "block_size", "start", "end"} for r in rows)
