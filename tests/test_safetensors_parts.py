"""The tensor-by-tensor safetensors writer against the safetensors library as the reader."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llada_core.safetensors_parts import PartWriter


def test_parts_written_tensor_by_tensor_read_back_exactly_with_safetensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"a.f32": torch.randn(3, 5, generator=g), "b.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
               "c.big": torch.randn(40, 10, generator=g),  # 1600 B: over the part size, a part of its own
               "d.i64": torch.arange(6).reshape(2, 3), "e.bool": torch.tensor([True, False, True]),
               "f.scalar": torch.tensor(2.5), "g.empty": torch.zeros(0, 4), "h.strided": torch.randn(4, 6).t()}
    w = PartWriter(tmp_path, 200, lambda i: f"p{i}.safetensors", metadata={"format": "pt"})
    for k, v in tensors.items():
        w.add(k, v)
    parts = w.close()
    assert parts == [f"p{i}.safetensors" for i in range(len(parts))] and len(parts) >= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(parts)  # no data files left behind
    assert w.where["c.big"] not in {w.where[k] for k in tensors if k != "c.big"}
    back = {}
    for p in parts:
        back |= load_file(str(tmp_path / p))
        with safe_open(str(tmp_path / p), "pt") as f:
            assert f.metadata() == {"format": "pt"}
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
        assert w.where[k] in parts
    assert w.total == sum(v.numel() * v.element_size() for v in tensors.values())
    with pytest.raises(ValueError, match="written twice"):
        w2 = PartWriter(tmp_path / "x", 10**6, lambda i: f"q{i}")
        (tmp_path / "x").mkdir()
        w2.add("a", torch.zeros(1))
        w2.add("a", torch.zeros(1))
