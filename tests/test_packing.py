import numpy as np
import pytest

from llada_core.data.packing import PAD_DOC, RowPacker

EOS, PAD = 1, 2


def pack_all(docs, seq_len, batch_sizes):
    """Feed docs to the packer in batches of the given sizes (Arrow list layout)."""
    packer, rows, i = RowPacker(seq_len, EOS, PAD), [], 0
    for size in batch_sizes:
        batch = docs[i : i + size]
        i += size
        values = np.concatenate([np.asarray(d, np.int32) for d in batch]) if batch else np.empty(0, np.int32)
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in batch])]).astype(np.int64)
        rows += list(packer.add_batch(values, offsets))
    rows += list(packer.flush())
    return packer, rows


def brute_force(docs, seq_len):
    """Oracle: concatenate doc+EOS, chunk by seq_len, number docs per row by first appearance."""
    stream = [(t, d) for d, doc in enumerate(docs) for t in [*doc, EOS]]
    rows = []
    for start in range(0, len(stream), seq_len):
        chunk = stream[start : start + seq_len]
        ids = [t for t, _ in chunk] + [PAD] * (seq_len - len(chunk))
        first = chunk[0][1]
        doc_ids = [d - first for _, d in chunk] + [PAD_DOC] * (seq_len - len(chunk))
        rows.append((ids, doc_ids))
    return rows


@pytest.mark.parametrize("seq_len", [2, 3, 7, 16, 64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seq_len, seed):
    rng = np.random.default_rng(seed)
    docs = [list(rng.integers(10, 500, size=int(n))) for n in rng.integers(0, 40, size=50)]
    sizes = list(rng.integers(1, 9, size=30))
    sizes.append(len(docs))  # whatever remains
    packer, rows = pack_all(docs, seq_len, sizes)
    expected = brute_force(docs, seq_len)
    assert len(rows) == len(expected)
    for (ids, doc_ids), (e_ids, e_docs) in zip(rows, expected, strict=True):
        assert ids.dtype == np.int32 and doc_ids.dtype == np.int32
        assert len(ids) == len(doc_ids) == seq_len
        assert ids.tolist() == e_ids and doc_ids.tolist() == e_docs
    assert packer.tokens == sum(len(d) + 1 for d in docs) == sum(int((d != PAD_DOC).sum()) for _, d in rows)
    assert packer.documents == len(docs)


def test_doc_ids_follow_eos_and_only_last_row_pads():
    rng = np.random.default_rng(7)
    docs = [list(rng.integers(10, 99, size=int(n))) for n in rng.integers(1, 30, size=40)]
    _, rows = pack_all(docs, 16, [5] * 8)
    for r, (ids, doc_ids) in enumerate(rows):
        real = doc_ids != PAD_DOC
        if r < len(rows) - 1:
            assert real.all()
        for i in range(1, int(real.sum())):
            # a new document starts exactly after an EOS
            assert (doc_ids[i] != doc_ids[i - 1]) == (ids[i - 1] == EOS)
            assert doc_ids[i] - doc_ids[i - 1] in (0, 1)
        assert doc_ids[0] == 0


def test_long_document_spans_rows():
    _, rows = pack_all([list(range(10, 45))], 8, [1])
    flat = np.concatenate([ids for ids, _ in rows])
    assert flat[:36].tolist() == list(range(10, 45)) + [EOS]
    assert all(d[0] == 0 for _, d in rows)


def test_seq_len_below_two_rejected():
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        RowPacker(1, EOS, PAD)
