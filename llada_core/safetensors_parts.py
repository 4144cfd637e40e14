"""Safetensors files written and read one tensor at a time (consolidated checkpoints, HF exports).

`safetensors.torch.save_file` takes a whole dict: writing a 2 GiB part that way holds 2 GiB. A
safetensors file is `u64 header length | JSON header (name -> dtype, shape, byte offsets) | bytes`,
and the header must come first, so here each tensor's bytes go to the part's data file as soon as
it arrives (and can be freed); when the part closes, the header is written and the data appended
from disk. Memory: one tensor. Readers are the safetensors library itself (tests load every part).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2"}


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


_FROM_NAME = {v: k for k, v in _DTYPES.items()}
_CHUNK = 64 << 20  # column slices are read this many bytes of rows at a time


class PartReader:
    """One safetensors file: its header parsed once, tensors read on demand."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            with open(self.path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (struct.error, ValueError, MemoryError, OverflowError) as exc:
            raise ValueError(f"{self.path}: not a readable safetensors file ({exc})") from None
        self.metadata = header.pop("__metadata__", None)
        self.entries, self._start = header, 8 + n
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if os.path.getsize(self.path) < self._start + end:
            raise ValueError(f"{self.path}: not a readable safetensors file (truncated: its header needs "
                             f"{self._start + end} bytes, the file has {os.path.getsize(self.path)})")
        unknown = sorted({e["dtype"] for e in header.values()} - set(_FROM_NAME))
        if unknown:
            raise ValueError(f"{self.path}: tensors of dtype {unknown} are not supported")

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> list[int]:
        return list(self.entries[key]["shape"])

    def tensor(self, key: str) -> Tensor:
        return self.rows(key, 0, self.shape(key)[0] if self.shape(key) else 1)

    def rows(self, key: str, start: int, stop: int) -> Tensor:
        """Rows [start, stop) of dim 0 (a 0-d tensor: the whole of it), one contiguous read."""
        entry = self.entries[key]
        dtype, shape, (b0, b1) = _FROM_NAME[entry["dtype"]], entry["shape"], entry["data_offsets"]
        if not shape:
            return self._read(b0, b1 - b0, dtype).reshape(())
        row = (b1 - b0) // shape[0] if shape[0] else 0
        return self._read(b0 + start * row, (stop - start) * row, dtype).reshape([stop - start, *shape[1:]])

    def columns(self, key: str, start: int, stop: int) -> Tensor:
        """Columns [start, stop) of dim 1, reading about _CHUNK bytes of whole rows at a time."""
        shape, width = self.shape(key), torch.empty(0, dtype=_FROM_NAME[self.entries[key]["dtype"]]).element_size()
        per_row = max(1, math.prod(shape[1:])) * width
        step = max(1, _CHUNK // per_row)
        parts = [self.rows(key, a, min(a + step, shape[0]))[:, start:stop].clone() for a in range(0, shape[0], step)]
        return torch.cat(parts) if parts else self.rows(key, 0, 0)[:, start:stop]

    def lazy(self, key: str) -> LazyTensor:
        return LazyTensor(self, key)

    def _read(self, offset: int, n: int, dtype: torch.dtype) -> Tensor:
        if n == 0:
            return torch.empty(0, dtype=dtype)
        buf = bytearray(n)
        view, done = memoryview(buf), 0
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while done < n:  # pread returns at most ~2 GiB per call
                got = os.preadv(fd, [view[done:]], self._start + offset + done)
                if got <= 0:
                    raise OSError(f"{self.path}: truncated (wanted {n} bytes at {offset})")
                done += got
        finally:
            os.close(fd)
        return torch.frombuffer(buf, dtype=dtype)


class LazyTensor:
    """What `reshard.iter_shard` indexes (safetensors' slice interface): `[:]`, `[a:b]` (rows) and
    `[:, a:b]` (columns) read only those bytes."""

    def __init__(self, part: PartReader, key: str):
        self.part, self.key = part, key

    def get_shape(self) -> list[int]:
        return self.part.shape(self.key)

    def __getitem__(self, index) -> Tensor:
        shape = self.get_shape()
        if index == slice(None):
            return self.part.tensor(self.key)
        if isinstance(index, slice) and shape:
            start, stop, step = index.indices(shape[0])
            if step == 1:
                return self.part.rows(self.key, start, max(start, stop))
        if isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None) and len(shape) >= 2:
            start, stop, step = index[1].indices(shape[1])
            if step == 1:
                return self.part.columns(self.key, start, max(start, stop))
        raise IndexError(f"{self.key}: only [:], [a:b] and [:, a:b] are read lazily, not {index!r}")
