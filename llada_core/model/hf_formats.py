"""The formats `export-hf` writes, as data, and the config.json / generation_config.json of each.

Diffusion-LM servers recognise a model by config.json `architectures[0]` and fix its [MASK] id per
architecture (SGLang: a server flag may change the block size, never the mask id), so a diffusion
format is writable for a model whose tokenizer has [MASK] at that id, or (`--relocate-mask`) whose
vocabulary leaves that id free: llada_core.model.mask_relocation moves the [MASK] rows there, which
changes the softmax a server's threshold reads by a measured factor. Facts from the "Serving
formats" section of the recipe note.

  llada2  LLaDA2MoeModelLM, model_type llada2_moe: BailingMoeV2's fields and tensor names, [MASK] 156895
  sdar    SDARForCausalLM / SDARMoeForCausalLM, model_type sdar / sdar_moe: Qwen3's, [MASK] 151669
  qwen    Qwen2 / Qwen3 / Qwen3-MoE, loaded by `transformers` as AR models
  ling    BailingMoeV2ForCausalLM (the Ling 2.0 AR layout)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llada_core.model.hf_config import CheckpointError, ling_config, qwen_config

if TYPE_CHECKING:  # the CLI reads FORMATS at start-up: no tokenizer library for that
    from llada_core.data.tokenizer import LladaTokenizer
    from llada_core.model.config import ModelConfig
    from llada_core.model.mask_relocation import Relocation


@dataclass(frozen=True)
class Format:
    name: str
    mask_id: int | None  # fixed by the serving engine; None: an AR format, any id
    block_length: int | None  # the server's default decoding block
    diffusion: bool


FORMATS = {f.name: f for f in (
    Format("llada2", 156895, 32, True),
    Format("sdar", 151669, 4, True),
    Format("qwen", None, None, False),
    Format("ling", None, None, False),
)}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise CheckpointError(f"unknown export format {name!r} (choose from {', '.join(FORMATS)})")
    return FORMATS[name]


def hf_config(cfg: ModelConfig, fmt: Format) -> dict:
    """config.json of `cfg` in `fmt`; a model the format cannot express is an error naming the field."""
    if fmt.name == "qwen":
        return qwen_config(cfg)
    if fmt.name == "ling":
        return ling_config(cfg)
    if fmt.name == "llada2":
        if not cfg.is_moe:
            raise CheckpointError("num_experts=0: LLaDA2MoeModelLM is a MoE architecture "
                                  "(export a dense model with --format sdar)")
        return ling_config(cfg) | {"model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"]}
    base = qwen_config(cfg)  # sdar
    if base["model_type"] == "qwen2":
        raise CheckpointError("qkv_bias=True: SDAR is Qwen3-shaped (no QKV bias, QK-norm on)")
    moe = base["model_type"] == "qwen3_moe"
    return base | {"model_type": "sdar_moe" if moe else "sdar",
                   "architectures": ["SDARMoeForCausalLM" if moe else "SDARForCausalLM"]}


def check_tokenizer(tok: LladaTokenizer, fmt: Format, relocate: bool = False,
                    model_vocab: int = 0) -> Relocation | None:
    """Before anything is written: the mask id the server will feed must be this model's [MASK], or
    (`relocate`) free for it to move there: then the move (llada_core.model.mask_relocation)."""
    if relocate and fmt.mask_id is None:
        raise CheckpointError(f"--relocate-mask: --format {fmt.name} is an AR layout, with no fixed [MASK] id")
    if fmt.mask_id is None or tok.id_of("mask") == fmt.mask_id:
        return None
    if relocate:
        from llada_core.model.mask_relocation import plan

        return plan(tok, fmt, model_vocab)  # raises, naming the id, when the vocabulary already uses it
    raise CheckpointError(
        f"tokenizer: the mask token {tok.special['mask']!r} is id {tok.id_of('mask')}, but servers load "
        f"--format {fmt.name} with [MASK] = id {fmt.mask_id} (fixed per architecture). Export with "
        "--relocate-mask (recipe: export.relocate_mask: true) to grow the vocabulary so that id is [MASK], "
        f"train from a tokenizer that has it there (the format's own: import-hf a released {fmt.name} "
        "checkpoint and start from it), or export an AR layout (--format qwen / ling)")


def special_ids(tok: LladaTokenizer) -> dict:
    return {"bos_token_id": tok.id_of("bos"), "eos_token_id": tok.id_of("eos"),
            "pad_token_id": tok.id_of("pad"), "mask_token_id": tok.id_of("mask")}


def generation_config(tok: LladaTokenizer, fmt: Format, decoding: dict) -> dict:
    """generation_config.json: the special ids, and for a diffusion format the decoder settings the
    model was trained and evaluated with (LLaDA2's generate() names: block_length, threshold)."""
    out = special_ids(tok) | {"_from_model_config": False}
    if fmt.diffusion:
        out |= {"block_length": decoding.get("block_length") or fmt.block_length,
                "threshold": decoding.get("threshold", 0.95)}
        out |= {k: v for k, v in decoding.items() if k not in out}
    return out


def chat_template(tok: LladaTokenizer) -> str:
    """The Jinja form of llada_core.data.chat (what servers apply): bos, then per message its role
    token, content and eot; the generation prompt is the assistant token."""
    s = tok.special
    roles = "".join(f"{{% {'if' if i == 0 else 'elif'} message['role'] == '{r}' %}}{s[r]}"
                    for i, r in enumerate(("system", "user", "assistant")))
    return (f"{s['bos']}{{% for message in messages %}}{roles}{{% endif %}}{{{{ message['content'] }}}}{s['eot']}"
            f"{{% endfor %}}{{% if add_generation_prompt %}}{s['assistant']}{{% endif %}}")
