"""Consolidated model checkpoints: what import-hf writes, export-hf reads and training starts from.

  CKPT/model_config.json          ModelConfig (canonical JSON)
  CKPT/weights/part-NNNNN.safetensors + weights/index.json   tensors by our (megatron) names
  CKPT/tokenizer/                 the tokenizer the vocabulary rows belong to
  CKPT/meta.json                  provenance: source, digests, added tokens, code version

Never pickled (safetensors + JSON). Built in a node-local temp dir and published through
llada_core.storage (a rename locally, an upload with its commit marker last on S3): a crash never
leaves a checkpoint that looks complete. Loading checks every tensor's name and shape against the config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from llada_core import storage
from llada_core.config import canonical_json
from llada_core.data.tokenizer import LladaTokenizer, load_tokenizer
from llada_core.model.config import ModelConfig
from llada_core.model.hf_config import CheckpointError
from llada_core.model.hf_io import expected_shapes
from llada_core.safetensors_parts import LazyTensor, PartReader, PartWriter

SHARD_BYTES = 2 << 30


def check_shapes(expected: dict[str, tuple[int, ...]], name: str, tensor: Tensor) -> None:
    """`expected` = expected_shapes(cfg), computed once per checkpoint (it lists every tensor)."""
    want = expected.get(name)
    if want is None:
        raise CheckpointError(f"unexpected tensor {name!r} for this model config")
    if tuple(tensor.shape) != want:
        raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {want}")


def save_checkpoint(out: str | Path, cfg: ModelConfig, tensors: Iterable[tuple[str, Tensor]], tok: LladaTokenizer,
                    meta: dict) -> Path:
    out = str(out)
    if _is_complete(out):
        raise CheckpointError(f"{out} already holds a checkpoint; remove it first")
    expected = expected_shapes(cfg)
    with storage.output_dir(out, replace=True) as tmp:  # replaces only an incomplete directory
        (tmp / "weights").mkdir()
        parts = PartWriter(tmp / "weights", SHARD_BYTES, lambda i: f"part-{i:05d}.safetensors")
        for name, tensor in tensors:
            check_shapes(expected, name, tensor)
            parts.add(name, tensor)
            del tensor  # before the generator makes the next one: one tensor in memory, not two
        files = parts.close()
        index = parts.where
        missing = sorted(set(expected) - set(index))
        if missing:
            raise CheckpointError(f"checkpoint lacks tensor(s) {missing[:5]}")
        (tmp / "weights" / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
        (tmp / "model_config.json").write_text(canonical_json(cfg) + "\n")
        tok.save(tmp / "tokenizer")
        digests = {f: storage.file_sha256(tmp / "weights" / f) for f in files}
        (tmp / "meta.json").write_text(json.dumps(meta | {"tokenizer_digest": tok.digest, "weights_sha256": digests},
                                                  indent=2, sort_keys=True))
    return out


def _is_complete(uri: str) -> bool:
    fs, path = storage.resolve(uri)
    return storage.exists(fs, f"{path}/{storage.COMMIT if storage.is_s3(uri) else 'meta.json'}")


def read_checkpoint_header(path: str | Path) -> tuple[ModelConfig, dict]:
    """A checkpoint's model config and meta (incl. its tokenizer digest), without reading tensors
    (on S3 without downloading them)."""
    uri = str(path)
    if not _is_complete(uri):
        raise CheckpointError(f"{uri} is not a complete checkpoint (no meta.json)")
    fs, base = storage.resolve(uri)
    cfg = ModelConfig.model_validate_json(storage.read_bytes(fs, f"{base}/model_config.json"))
    return cfg, json.loads(storage.read_bytes(fs, f"{base}/meta.json"))


class CheckpointReader:
    """A consolidated checkpoint, verified (every part's sha256, every tensor's name and shape, the
    tokenizer) before anything is read, then read tensor by tensor or slice by slice: a process
    holds only what it asks for."""

    def __init__(self, path: str | Path):
        self.cfg, self.meta = read_checkpoint_header(path)
        self.path = storage.local_copy(path, committed=True)
        index = json.loads((self.path / "weights" / "index.json").read_text())
        for file, want in self.meta.get("weights_sha256", {}).items():
            part = self.path / "weights" / file
            if not part.is_file() or storage.file_sha256(part) != want:
                raise CheckpointError(f"{part}: missing or corrupted (sha256 differs from meta.json)")
        weights = self.path / "weights"
        self._files = {f: PartReader(weights / f) for f in sorted(set(index.values()))}
        self._where = {name: self._files[f] for name, f in index.items()}
        expected = expected_shapes(self.cfg)
        for name, part in self._where.items():
            if name not in part.entries:
                raise CheckpointError(f"{part.path}: lacks tensor {name!r} that weights/index.json places there")
            check_shapes(expected, name, _Shape(part.shape(name)))
        missing = sorted(set(expected) - set(self._where))
        if missing:
            raise CheckpointError(f"{self.path}: missing tensor(s) {missing[:5]}")
        self.tok = load_tokenizer(self.path / "tokenizer")
        if self.meta.get("tokenizer_digest") != self.tok.digest:
            raise CheckpointError(f"{self.path}: tokenizer digest {self.tok.digest[:12]} does not match meta.json")
        if self.tok.vocab_size > self.cfg.vocab_size:
            raise CheckpointError(f"{self.path}: tokenizer has {self.tok.vocab_size} tokens but "
                                  f"vocab_size={self.cfg.vocab_size}")

    def names(self) -> list[str]:
        return list(self._where)

    def tensor(self, name: str) -> Tensor:
        return self._where[name].tensor(name)

    def slice(self, name: str) -> LazyTensor:
        """A lazy tensor: `[a:b]`, `[:, a:b]` read only those rows / columns (plain reads, no memory map)."""
        return self._where[name].lazy(name)


class _Shape:
    """What check_shapes needs of a tensor, without reading it."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def load_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor], LladaTokenizer, dict]:
    """The whole checkpoint in memory (eval / decoding of one model; streaming readers use CheckpointReader)."""
    reader = CheckpointReader(path)
    return reader.cfg, {name: reader.tensor(name) for name in reader.names()}, reader.tok, reader.meta


def load_streamed(model, reader: CheckpointReader) -> None:
    """Strict load of a whole checkpoint into a 1-rank LladaModel, one tensor in memory at a time
    (the model's own parameters are the only full copy)."""
    copy_into(model, ((name, reader.tensor(name)) for name in reader.names()))


def copy_into(model, tensors: Iterable[tuple[str, Tensor]]) -> None:
    """Strict load of (name, tensor) pairs into a LladaModel's own tensors, one pair at a time."""
    own = {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}
    seen = set()
    with torch.no_grad():
        for name, tensor in tensors:
            if name not in own:
                raise CheckpointError(f"state mismatch: unexpected {name!r}")
            if tuple(own[name].shape) != tuple(tensor.shape):
                raise CheckpointError(f"{name}: shape {tuple(tensor.shape)}, the model has {tuple(own[name].shape)}")
            own[name].copy_(tensor)
            seen.add(name)
            del tensor  # before the next one is read
    if missing := sorted(set(own) - seen):
        raise CheckpointError(f"state mismatch: missing {missing[:5]}")


def tensors_digest(state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
