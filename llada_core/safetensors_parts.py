"""Safetensors files written one tensor at a time (the consolidated checkpoint's parts, HF exports).

`safetensors.torch.save_file` takes a whole dict: writing a 2 GiB part that way holds 2 GiB. A
safetensors file is `u64 header length | JSON header (name -> dtype, shape, byte offsets) | bytes`,
and the header must come first, so here each tensor's bytes go to the part's data file as soon as
it arrives (and can be freed); when the part closes, the header is written and the data appended
from disk. Memory: one tensor. Readers are the safetensors library itself (tests load every part).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


class PartWriter:
    """Parts of up to `max_bytes` each (a larger tensor gets a part alone), named `name(i)`."""

    def __init__(self, directory: Path, max_bytes: int, name: Callable[[int], str],
                 metadata: dict[str, str] | None = None):
        self.directory, self.max_bytes, self.name, self.metadata = Path(directory), max_bytes, name, metadata
        self.where: dict[str, str] = {}  # tensor -> its part's file name
        self.total = 0
        self._data, self._header, self._size, self._parts = None, {}, 0, 0

    def add(self, key: str, tensor: Tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        if self._data is not None and self._size + n > self.max_bytes:
            self._close_part()
        if self._data is None:
            self._data = open(self.directory / f".{self.name(self._parts)}.data", "wb")  # noqa: SIM115
        if key in self._header or key in self.where:
            raise ValueError(f"tensor {key!r} written twice")
        flat = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        self._data.write(memoryview(flat.numpy()))
        self._header[key] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                             "data_offsets": [self._size, self._size + n]}
        self._size += n
        self.total += n

    def close(self) -> list[str]:
        """Finish the last part; the part file names, in order."""
        if self._data is not None:
            self._close_part()
        return [self.name(i) for i in range(self._parts)]

    def _close_part(self) -> None:
        data_path = Path(self._data.name)
        self._data.close()
        header = dict(self._header) | ({"__metadata__": self.metadata} if self.metadata else {})
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned, as safetensors writes it
        part = self.name(self._parts)
        with open(self.directory / part, "wb") as out, open(data_path, "rb") as data:
            out.write(struct.pack("<Q", len(raw)) + raw)
            shutil.copyfileobj(data, out, 16 << 20)
        data_path.unlink()
        self.where.update(dict.fromkeys(self._header, part))
        self._data, self._header, self._size, self._parts = None, {}, 0, self._parts + 1
