"""Frozen document vectors kept on disk (SavedDocVectors): found again by their text, never stale or half-written."""
from __future__ import annotations

import numpy as np
import pytest

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.identity import describe
from pyterrier_marginkd.models.saved_vectors import SavedDocVectors

TEXTS = ["the wing flutters at supersonic speed", "boundary layer transition on a flat plate",
         "heat transfer in laminar flow", "shock waves around a blunt body"]


def encoder(tiny_bert_dir) -> mkd.DotEncoder:
    return mkd.DotEncoder.from_pretrained(tiny_bert_dir, frozen_docs=True, max_length=32)


def test_vectors_saved_by_one_run_score_the_same_in_the_next_without_encoding(tiny_bert_dir, tmp_path, monkeypatch):
    first = encoder(tiny_bert_dir)
    path = tmp_path / "vectors.npz"
    store = SavedDocVectors(path, describe(first))
    assert store.note is None and store.saved == 0 and not store.save()  # nothing yet: no file written
    first.share_doc_vectors(store)
    queries = ["supersonic wing", "flat plate"] * 2
    expected = first.score_pairs(queries, TEXTS)
    assert store.save() and path.exists() and store.saved == len(TEXTS)
    assert not store.save()  # nothing new since
    assert not list(tmp_path.glob("*.tmp"))

    second = encoder(tiny_bert_dir)
    reloaded = SavedDocVectors(path, describe(second))
    assert reloaded.note == f"reusing {len(TEXTS)} document vectors in {path}"
    assert all(text in reloaded for text in TEXTS) and "a text nobody encoded" not in reloaded
    with pytest.raises(KeyError):
        reloaded["a text nobody encoded"]

    def no_documents(self, texts, side, batch_size):
        assert side == "query", f"encoded {len(texts)} documents again"
        return original(self, texts, side, batch_size)
    original = mkd.DotEncoder._encode_side
    monkeypatch.setattr(mkd.DotEncoder, "_encode_side", no_documents)
    np.testing.assert_allclose(second.share_doc_vectors(reloaded).score_pairs(queries, TEXTS), expected, rtol=1e-6)

    # an edited document is another text: encoded afresh, never given the vector of the old one
    with pytest.raises(AssertionError, match="encoded 1 documents again"):
        second.score_pairs(["supersonic wing"], [TEXTS[0] + " (revised)"])


def test_another_encoder_or_a_damaged_file_is_not_used_and_is_replaced(tiny_bert_dir, tmp_path):
    model = encoder(tiny_bert_dir)
    path = tmp_path / "vectors.npz"
    store = SavedDocVectors(path, "encoder A")
    model.share_doc_vectors(store).encode_docs(TEXTS[:2])
    store.save()

    other = SavedDocVectors(path, "encoder B")
    assert other.note == f"{path} holds another document encoder's vectors; encoding the documents again"
    assert TEXTS[0] not in other and other.saved == 0
    model.share_doc_vectors(other).encode_docs(TEXTS[2:])
    assert other.save()  # replaces the file: encoder B's two vectors alone
    again = SavedDocVectors(path, "encoder B")
    assert again.saved == 2 and TEXTS[2] in again and TEXTS[0] not in again

    path.write_bytes(b"not a zip file")
    damaged = SavedDocVectors(path, "encoder B")
    assert damaged.saved == 0 and damaged.note.startswith(f"{path} could not be read")
    model.share_doc_vectors(damaged).encode_docs(TEXTS[:1])
    assert damaged.save() and SavedDocVectors(path, "encoder B").saved == 1
