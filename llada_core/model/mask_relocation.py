"""[MASK] moved to the id a diffusion-LM server fixes (`export-hf --relocate-mask`).

SGLang feeds [MASK] = 156895 to every LLaDA2MoeModelLM (151669 to SDAR) whatever the tokenizer
says. A model trained on a smaller vocabulary (the tiny recipe's 4,096) is still servable: the
exported vocabulary grows to cover that id, the [MASK] embedding and output rows move there, and
every other token keeps its id, its rows and its encoding. The emptied ids (the old [MASK] id and
every new one) are never input (the tokenizer never emits them), and since the output layer has no
bias that could make them -inf, their output rows are the [MASK] row: each scores exactly what
[MASK] scores, which the model was trained never to predict (every target pushes that logit down).
So wherever our decoder's argmax is a real token the server's is the same token, and the server's
softmax confidence is ours / (1 + K * e^l_mask / sum_real e^l), K = the rows that score l_mask.
That factor is not 1; `bench/mask_relocation.py` measures it and the decode on a trained model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer

from llada_core.model.config import pad_vocab
from llada_core.model.hf_config import CheckpointError

if TYPE_CHECKING:
    from llada_core.data.tokenizer import LladaTokenizer
    from llada_core.model.hf_formats import Format

PLACEHOLDER = "<|reserved_{}|>"  # an unused id's token: no merge makes it, so it is never emitted


@dataclass(frozen=True)
class Relocation:
    old_id: int  # [MASK] in the trained model
    new_id: int  # [MASK] where the server feeds it
    vocab_size: int  # rows of the exported embedding and output matrices
    model_vocab: int  # rows of the trained model's

    @property
    def scored_like_mask(self) -> int:
        """K: the exported output rows that score what [MASK] scores (the old id's, every new one)."""
        return self.vocab_size - self.model_vocab + 1


def plan(tok: LladaTokenizer, fmt: Format, model_vocab: int) -> Relocation:
    """Where [MASK] goes for `fmt`; a vocabulary that already uses that id is an error (a real token
    cannot move: its id is in every dataset and prompt)."""
    new_id, old_id = fmt.mask_id, tok.id_of("mask")
    used = max(tok.vocab_size, model_vocab)
    if new_id < used:
        holder = tok.tok.id_to_token(new_id)
        raise CheckpointError(
            f"tokenizer: --relocate-mask needs id {new_id} ({fmt.name}'s [MASK]) free, but this vocabulary "
            f"has {used} ids" + (f" and id {new_id} is {holder!r}" if holder else ""))
    if not isinstance(json.loads(tok.to_json())["model"].get("vocab"), dict):
        raise CheckpointError("tokenizer: --relocate-mask supports BPE / WordLevel vocabularies (a token -> id map)")
    return Relocation(old_id, new_id, pad_vocab(new_id + 1), model_vocab)


def rows(matrix: torch.Tensor, r: Relocation) -> torch.Tensor:
    """An embedding / output matrix [V, H] -> [r.vocab_size, H]: real tokens' rows in place, [MASK]'s
    row at r.new_id and in every emptied row (for the output layer: they score what [MASK] scores)."""
    out = matrix[r.old_id].expand(r.vocab_size, -1).clone()
    out[: matrix.shape[0]] = matrix  # the old [MASK] id keeps its row: it scores what [MASK] scores
    return out


def tokenizer(tok: LladaTokenizer, r: Relocation) -> LladaTokenizer:
    """The same tokenizer with [MASK] at r.new_id and a placeholder at every other id below it that
    no token has (HF `tokenizers` gives an added token the next free id otherwise)."""
    from llada_core.data.tokenizer import LladaTokenizer

    mask = tok.special["mask"]
    spec = json.loads(tok.to_json())
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if t != mask}
    taken = set(vocab.values()) | {a["id"] for a in spec["added_tokens"] if a["content"] != mask}
    for i in range(r.new_id):
        if i not in taken:
            name = PLACEHOLDER.format(i)
            if name in vocab:
                raise CheckpointError(f"tokenizer: the placeholder {name!r} is already a token")
            vocab[name] = i
    vocab[mask] = r.new_id
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [a | {"id": r.new_id} if a["content"] == mask else a for a in spec["added_tokens"]]
    moved = LladaTokenizer(Tokenizer.from_str(json.dumps(spec)), dict(tok.special))
    if moved.id_of("mask") != r.new_id:  # pragma: no cover - tokenizers would have renumbered it
        raise CheckpointError(f"tokenizer: [MASK] ended at id {moved.id_of('mask')}, not {r.new_id}")
    return moved
