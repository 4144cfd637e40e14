"""The recipe's tokenizer: HF `tokenizers` plus the special tokens block diffusion needs.

Roles: `mask` ([MASK], the diffusion noise token), `eos` (ends every packed document), `pad`
(never in a loss), `bos`, and the chat markers `system`/`user`/`assistant`/`eot` used by the one
chat template (llada_core.data.chat). A loaded tokenizer without a mask token is an error unless
the caller names the token to add: the mask id decides the embedding row the model learns to
denoise from, so it is never invented silently. Other missing roles are added and reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from llada_core import storage

DEFAULT_SPECIAL = {
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "pad": "<|pad|>",
    "mask": "<|mask|>",
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "eot": "<|eot|>",
}
# Where HF tokenizer_config.json / special_tokens_map.json keep the roles we need.
_HF_ROLE_KEYS = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "mask": "mask_token"}
SPECIAL_FILE = "special_tokens.json"


class TokenizerError(ValueError):
    pass


@dataclass
class LladaTokenizer:
    tok: Tokenizer
    special: dict[str, str]  # role -> token string
    added_roles: list[str] = field(default_factory=list)  # roles this project added to a loaded tokenizer

    def id_of(self, role: str) -> int:
        idx = self.tok.token_to_id(self.special[role])
        if idx is None:  # pragma: no cover - guarded at construction
            raise TokenizerError(f"special token {self.special[role]!r} ({role}) is not in the vocabulary")
        return idx

    @property
    def ids(self) -> dict[str, int]:
        return {role: self.id_of(role) for role in self.special}

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking: same ids, ~1.5x faster (measured on the stdlib corpus)
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        return self.tok.to_str()

    @property
    def digest(self) -> str:
        """sha256 over the vocabulary/merges and the role map: any change to either changes it."""
        payload = self.to_json() + "\0" + json.dumps(self.special, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def files(self) -> dict[str, bytes]:
        """tokenizer.json, special_tokens.json, an HF tokenizer_config.json and digest.txt."""
        hf = {f"{r}_token": self.special[r] for r in _HF_ROLE_KEYS if r in self.special}
        hf |= {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30}
        as_json = lambda obj: json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")  # noqa: E731
        return {
            "tokenizer.json": self.to_json().encode("utf-8"),
            SPECIAL_FILE: as_json(self.special),
            "tokenizer_config.json": as_json(hf),
            "digest.txt": (self.digest + "\n").encode("utf-8"),
        }

    def save(self, directory: str | Path) -> str:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            (out / name).write_bytes(data)
        return self.digest

    @classmethod
    def from_json(cls, tokenizer_json: str, special: dict[str, str]) -> LladaTokenizer:
        return cls(Tokenizer.from_str(tokenizer_json), dict(special))


def train_bpe(texts: Iterator[str], vocab_size: int, min_frequency: int = 2,
              single_tokens: Iterable[str] = ()) -> LladaTokenizer:
    """Byte-level BPE trained on `texts`; special tokens take ids 0..7 in DEFAULT_SPECIAL order.
    Each of `single_tokens` (one pre-tokenized word each, e.g. " 9") is one token of the result."""
    specials = list(DEFAULT_SPECIAL.values())
    if vocab_size < 256 + len(specials):
        raise TokenizerError(f"vocab_size={vocab_size} is below the 256 byte symbols + {len(specials)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return LladaTokenizer(_with_single_tokens(tok, list(single_tokens), vocab_size), dict(DEFAULT_SPECIAL))


def _joining_merges(tok: Tokenizer, words: list[str]) -> list[tuple[str, str]]:
    """The merges that make each word one token, appended after the model's own (so they apply
    only where no learned merge does: within exactly these words)."""
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = tok.encode(word, add_special_tokens=False).tokens
        if not pieces:
            raise TokenizerError(f"single_tokens: {word!r} encodes to nothing")
        if len(tok.pre_tokenizer.pre_tokenize_str(word)) != 1:
            raise TokenizerError(f"single_tokens: {word!r} is not one word for the pre-tokenizer (a leading "
                                 "space and letters, digits or punctuation: ' a', ' 9')")
        for piece in pieces[1:]:
            merge = (pieces[0], piece)
            pieces[0] = pieces[0] + piece
            if merge not in merges:
                merges.append(merge)
    return merges


def _with_single_tokens(tok: Tokenizer, words: list[str], vocab_size: int) -> Tokenizer:
    """`tok` plus the merges joining `words`; where the vocabulary is full, its last (least frequent)
    learned merges give way to them. Trimming can split a word further: the count is found by iterating."""
    spec = json.loads(tok.to_str())
    model = spec["model"]
    learned, first_id = model["merges"], len(model["vocab"]) - len(model["merges"])
    room = vocab_size - len(model["vocab"])
    keep = len(learned)
    while True:
        trimmed = _bpe_with(spec, learned[:keep], first_id)
        joining = _joining_merges(trimmed, words)
        if keep + len(joining) <= len(learned) + room:
            break
        keep = len(learned) + room - len(joining)
    if not joining:
        return tok
    merges = [list(m) for m in learned[:keep]] + [list(m) for m in joining]
    return _bpe_with(spec, merges, first_id)


def _bpe_with(spec: dict, merges: list, first_id: int) -> Tokenizer:
    """The BPE of `spec` with these merges: merge i makes token id first_id + i."""
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < first_id}
    vocab |= {a + b: first_id + i for i, (a, b) in enumerate(merges)}
    return Tokenizer.from_str(json.dumps(spec | {"model": spec["model"] | {"vocab": vocab, "merges": merges}}))


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _roles_from_hf_dir(directory: Path) -> dict[str, str]:
    roles: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = directory / name
        if not file.is_file():
            continue
        data = json.loads(file.read_text(encoding="utf-8"))
        for role, key in _HF_ROLE_KEYS.items():
            content = _token_content(data.get(key))
            if content and role not in roles:
                roles[role] = content
    return roles


def load_tokenizer(path: str | Path, add_mask_token: str | None = None) -> LladaTokenizer:
    """Load a tokenizer.json or an HF tokenizer directory (local or s3://) and make sure every role is
    present."""
    try:
        path = storage.local_copy(path)
    except FileNotFoundError as exc:
        raise TokenizerError(f"no tokenizer at {path}: {exc}") from None
    directory = path if path.is_dir() else path.parent
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(f"no tokenizer.json at {path}")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise TokenizerError(f"cannot parse {file}: {exc}") from None
    ours = directory / SPECIAL_FILE
    roles = json.loads(ours.read_text(encoding="utf-8")) if ours.is_file() else _roles_from_hf_dir(directory)
    vocab = tok.get_vocab(with_added_tokens=True)
    roles = {r: t for r, t in roles.items() if t in vocab}

    if "mask" not in roles:
        if not add_mask_token:
            raise TokenizerError(
                f"tokenizer {path} has no mask token; pass --add-mask-token TOKEN "
                "(tokenizer.add_mask_token=TOKEN) to add one"
            )
        roles["mask"] = add_mask_token
    if "eos" not in roles:
        raise TokenizerError(f"tokenizer {path} has no EOS token (eos_token); documents cannot be delimited")
    roles.setdefault("pad", DEFAULT_SPECIAL["pad"])
    for role, token in DEFAULT_SPECIAL.items():
        roles.setdefault(role, token)

    missing = {r: t for r, t in roles.items() if t not in vocab}
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing.values()])
    return LladaTokenizer(tok, {r: roles[r] for r in DEFAULT_SPECIAL}, added_roles=sorted(missing))
