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


def test_the_reader_reads_rows_and_columns_with_plain_reads_exactly(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import llada_core.safetensors_parts as parts

    g = torch.Generator().manual_seed(1)
    tensors = {"w": torch.randn(9, 6, generator=g), "b": torch.randn(5, 4, generator=g).to(torch.bfloat16),
               "v": torch.randn(7, generator=g), "s": torch.tensor(3), "e": torch.zeros(0, 3)}
    save_file(tensors, str(tmp_path / "f.safetensors"))  # the library's writer, our reader
    monkeypatch.setattr(parts, "_CHUNK", 30)  # a column read takes several row chunks
    r = parts.PartReader(tmp_path / "f.safetensors")
    for k, v in tensors.items():
        assert torch.equal(r.tensor(k), v) and r.tensor(k).dtype == v.dtype and r.shape(k) == list(v.shape), k
    assert torch.equal(r.lazy("w")[2:5], tensors["w"][2:5])
    assert torch.equal(r.lazy("w")[:, 1:4], tensors["w"][:, 1:4])
    assert torch.equal(r.lazy("b")[:, 2:4], tensors["b"][:, 2:4])
    assert torch.equal(r.lazy("v")[3:7], tensors["v"][3:7]) and torch.equal(r.lazy("e")[:], tensors["e"])
    with pytest.raises(IndexError, match="only"):
        r.lazy("w")[::2]
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(ValueError, match="bad.safetensors: not a readable safetensors file"):
        parts.PartReader(tmp_path / "bad.safetensors")
