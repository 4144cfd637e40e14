"""Streaming packer: documents (+EOS) -> rows of exactly `seq_len` tokens with per-row doc ids.

Row format (the contract every training stage reads):
  input_ids[i]  token id
  doc_ids[i]    0, 1, 2, ... in order of appearance inside the row (a document cut at a row
                boundary continues under a new id in the next row); PAD_DOC (-1) marks padding,
                which only the last row a packer emits can contain (one packer per range and
                split: llada_core.data.ranges).
The document-level attention mask (recipe Eq. 3/4) is `doc_ids[q] == doc_ids[k]`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

PAD_DOC = -1


class RowPacker:
    def __init__(self, seq_len: int, eos_id: int, pad_id: int):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.seq_len, self.eos_id, self.pad_id = seq_len, eos_id, pad_id
        self._tokens = np.empty(0, dtype=np.int32)
        self._docs = np.empty(0, dtype=np.int64)  # global document number of each buffered token
        self._next_doc = 0
        self.documents = 0
        self.tokens = 0  # non-pad tokens emitted or buffered (document tokens + one EOS each)

    def add_batch(self, values: np.ndarray, offsets: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Add documents given as a flat token array + offsets (Arrow list layout); yield full rows."""
        lengths = np.diff(offsets)
        n = len(lengths)
        if n == 0:
            return
        with_eos = lengths + 1
        ends = np.cumsum(with_eos)
        tokens = np.empty(int(ends[-1]), dtype=np.int32)
        eos_pos = ends - 1
        body = np.ones(len(tokens), dtype=bool)
        body[eos_pos] = False
        tokens[body] = values[offsets[0] : offsets[-1]]
        tokens[eos_pos] = self.eos_id
        docs = np.repeat(np.arange(self._next_doc, self._next_doc + n, dtype=np.int64), with_eos)
        self._next_doc += n
        self.documents += n
        self.tokens += len(tokens)
        self._tokens = np.concatenate([self._tokens, tokens])
        self._docs = np.concatenate([self._docs, docs])
        yield from self._cut(final=False)

    def flush(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Emit the last partial row, padded with PAD / PAD_DOC."""
        yield from self._cut(final=True)

    def _cut(self, final: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        L = self.seq_len
        full = len(self._tokens) // L
        for r in range(full):
            yield self._row(self._tokens[r * L : (r + 1) * L], self._docs[r * L : (r + 1) * L])
        self._tokens, self._docs = self._tokens[full * L :], self._docs[full * L :]
        if final and len(self._tokens):
            pad = L - len(self._tokens)
            row_ids, row_docs = self._row(self._tokens, self._docs)
            yield (
                np.concatenate([row_ids, np.full(pad, self.pad_id, np.int32)]),
                np.concatenate([row_docs, np.full(pad, PAD_DOC, np.int32)]),
            )
            self._tokens, self._docs = self._tokens[:0], self._docs[:0]

    @staticmethod
    def _row(tokens: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tokens.copy(), (docs - docs[0]).astype(np.int32)
