"""Stages: `llada model import-hf HF_DIR --out CKPT` and `llada model export-hf CKPT --out HF_DIR`.

Import reads HF safetensors (never pickle) tensor by tensor, maps them to our megatron names and
adds embedding / output rows for special tokens the tokenizer lacked (e.g. [MASK]; new rows start
at zero: an AR base model's [MASK] embedding is near zero anyway, which is why early CPT adds
noise there). Export writes safetensors + config.json + generation config + tokenizer (with the chat
template) in one of the formats of llada_core.model.hf_formats: a diffusion-LM server's (llada2, sdar)
or an AR layout `transformers` loads (qwen, ling).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llada_core import storage
from llada_core.checkpoint import SHARD_BYTES, CheckpointReader, save_checkpoint
from llada_core.data.tokenizer import load_tokenizer
from llada_core.model import hf_formats as formats
from llada_core.model import mask_relocation as relocation
from llada_core.model.config import pad_vocab
from llada_core.model.hf_config import CheckpointError, from_hf_config, to_hf_config
from llada_core.model.hf_io import P, hf_to_megatron, megatron_to_hf_stream
from llada_core.safetensors_parts import PartReader, PartWriter
from llada_core.version import code_version

GROWN = (f"{P}embedding.word_embeddings.weight", f"{P}output_layer.weight")


def _safetensors_files(hf_dir: Path) -> list[Path]:
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in hf_dir.glob("*.bin"))
        hint = f" (found {pickled}: pickle checkpoints are not loaded; convert them to safetensors)" if pickled else ""
        raise CheckpointError(f"no *.safetensors in {hf_dir}{hint}")
    return files


def _open_safetensors(path: Path, source: str) -> PartReader:
    """Plain reads, not safetensors' memory map (its touched pages would count as this process's)."""
    try:
        return PartReader(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # truncated, bad header JSON
        raise CheckpointError(f"{source}/{path.name}: not a readable safetensors file ({exc})") from None


def import_hf(hf_dir: str | Path, out: str | Path, add_mask_token: str | None = None,
              dtype: torch.dtype | None = None, export_format: str | None = None,
              relocate_mask: bool = False) -> dict:
    """Streamed (one HF tensor and one output part in memory at a time), in the source's own dtype
    unless `dtype` is given (bf16 stays bf16: the training model casts on load). `export_format`: the
    format the trained model will be exported in, whose [MASK] id the tokenizer must already have
    (checked before anything is written, so a run never trains a model it cannot export), or with
    `relocate_mask` whose [MASK] id must be free."""
    source = str(hf_dir) if storage.is_s3(str(hf_dir)) else str(Path(hf_dir).resolve())
    try:
        hf_dir = storage.local_copy(hf_dir)  # an s3:// checkpoint is fetched into the node-local cache
    except FileNotFoundError as exc:
        raise CheckpointError(f"no HF checkpoint at {source}: {exc}") from None
    try:
        hf_cfg = json.loads((hf_dir / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in {hf_dir}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source}/config.json: not valid JSON ({exc})") from None
    cfg = from_hf_config(hf_cfg)
    tok = load_tokenizer(hf_dir, add_mask_token=add_mask_token)
    original = tok.vocab_size - len(tok.added_roles)
    if original > cfg.vocab_size:
        raise CheckpointError(f"vocab mismatch: the tokenizer has {original} tokens but "
                              f"config.json vocab_size={cfg.vocab_size}")
    grown = cfg.vocab_size if tok.vocab_size <= cfg.vocab_size else pad_vocab(tok.vocab_size)
    if export_format is not None:  # the model and its [MASK] as the format needs them, before any training
        form = formats.get_format(export_format)
        formats.hf_config(cfg, form)
        formats.check_tokenizer(tok, form, relocate_mask, grown)
    new_cfg = cfg.model_copy(update={"vocab_size": grown})

    files = _safetensors_files(hf_dir)
    handles = [_open_safetensors(f, source) for f in files]
    where = {name: h for h in handles for name in h.keys()}

    def tensors():
        for name, tensor in hf_to_megatron(lambda n: where[n].tensor(n), set(where), cfg, hf_cfg["model_type"]):
            if name in GROWN and grown > tensor.shape[0]:
                tensor = torch.cat([tensor, tensor.new_zeros(grown - tensor.shape[0], tensor.shape[1])])
            yield name, tensor if dtype is None else tensor.to(dtype)

    meta = {
        "source": source, "source_model_type": hf_cfg["model_type"],
        "source_files": {f.name: storage.sha256_of(*storage.resolve(str(f))) for f in files},
        "added_special_tokens": tok.added_roles, "vocab_rows_added": grown - cfg.vocab_size,
        "code_version": code_version(),
    }
    save_checkpoint(out, new_cfg, tensors(), tok, meta)
    return meta


def _write_hf_shards(tensors, directory: Path, max_bytes: int) -> list[str]:
    """HF's sharded safetensors layout, written one tensor at a time: a single `model.safetensors`,
    or `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json` (what transformers loads)."""
    parts = PartWriter(directory, max_bytes, lambda i: f"part-{i:05d}", metadata={"format": "pt"})
    for name, tensor in tensors:
        parts.add(name, tensor)
        del tensor  # before the next one is made
    written = parts.close()
    if len(written) == 1:
        (directory / written[0]).rename(directory / "model.safetensors")
        return ["model.safetensors"]
    final = {p: f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i, p in enumerate(written)}
    for old, new in final.items():
        (directory / old).rename(directory / new)
    index = {"metadata": {"total_size": parts.total},
             "weight_map": {k: final[v] for k, v in sorted(parts.where.items())}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return list(final.values())


def export_hf(ckpt: str | Path, out: str | Path, fmt: str | None = None, decoding: dict | None = None,
              max_shard_bytes: int = SHARD_BYTES, relocate_mask: bool = False) -> dict:
    """Streamed: one of our tensors and one output part in memory at a time. `fmt` is a name in
    hf_formats.FORMATS (None: the AR layout of the model's family, Qwen where it fits, else Ling);
    `decoding` (block_length, threshold, ...) goes into a diffusion format's generation config;
    `relocate_mask`: a diffusion format's [MASK] id is made free by growing the vocabulary
    (llada_core.model.mask_relocation). Everything is checked before the first byte is written."""
    out = str(out)
    if storage.artifact_exists(out):
        raise CheckpointError(f"{out} exists; refusing to overwrite")
    reader = CheckpointReader(ckpt)
    cfg, tok = reader.cfg, reader.tok
    if fmt is None:
        hf_cfg = to_hf_config(cfg)
        fmt = "qwen" if hf_cfg["model_type"].startswith("qwen") else "ling"
    form = formats.get_format(fmt)
    formats.hf_config(cfg, form)  # a model the format cannot express is named first
    moved = formats.check_tokenizer(tok, form, relocate_mask, cfg.vocab_size)
    get = reader.tensor
    if moved:
        tok, cfg = relocation.tokenizer(tok, moved), cfg.model_copy(update={"vocab_size": moved.vocab_size})
        get = lambda name: relocation.rows(reader.tensor(name), moved) if name in GROWN else reader.tensor(name)  # noqa: E731
    hf_cfg = formats.hf_config(cfg, form) | formats.special_ids(tok)
    with storage.output_dir(out, replace=False) as tmp:
        tensors = megatron_to_hf_stream(get, cfg, hf_cfg["model_type"])
        if form.name == "llada2":  # the router's expert bias is kept in fp32 (as LLaDA2 checkpoints have it)
            tensors = ((n, t.float() if n.endswith(".expert_bias") else t) for n, t in tensors)
        _write_hf_shards(tensors, tmp, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True))
        gen = formats.generation_config(tok, form, decoding or {})
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True))
        tok.save(tmp)
        tok_cfg = tmp / "tokenizer_config.json"
        with_template = json.loads(tok_cfg.read_text()) | {"chat_template": formats.chat_template(tok)}
        tok_cfg.write_text(json.dumps(with_template, indent=2, sort_keys=True))
    return hf_cfg | {"format": form.name} | ({"relocated_mask": {
        "from": moved.old_id, "to": moved.new_id, "rows_scored_like_mask": moved.scored_like_mask}} if moved else {})
