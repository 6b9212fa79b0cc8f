"""DotEncoder(query_max_length=N): queries cut to N tokens when scored, trained and saved; documents to max_length."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.identity import describe

LONG = " ".join(["aerodynamic heating of a slender body in hypersonic flow"] * 6)


def model(path, **kwargs):
    torch.manual_seed(0)
    return mkd.DotEncoder.from_pretrained(path, frozen_docs=True, max_length=48, **kwargs)


def cut(made, text, tokens):
    """``text`` as its first ``tokens`` word-pieces (room left for [CLS] and [SEP])."""
    return made.tokenizer.convert_tokens_to_string(made.tokenizer.tokenize(text)[:tokens - 2])


def test_queries_are_cut_to_query_max_length_documents_to_max_length(tiny_bert_dir):
    short, full = model(tiny_bert_dir, query_max_length=10), model(tiny_bert_dir)
    assert short.query_max_length == 10 and full.query_max_length is None
    np.testing.assert_allclose(short.encode_queries([LONG]), full.encode_queries([cut(full, LONG, 10)]), atol=1e-5)
    assert not np.allclose(short.encode_queries([LONG]), full.encode_queries([LONG]), atol=1e-3)
    np.testing.assert_allclose(short.encode_docs([LONG]), full.encode_docs([LONG]), atol=1e-6)  # 48 tokens each
    scores = short.score_pairs([LONG, "hypersonic flow"], [LONG, LONG])
    np.testing.assert_allclose(scores, full.score_pairs([cut(full, LONG, 10), "hypersonic flow"], [LONG, LONG]),
                               atol=1e-4)
    # training reads the same cut queries: its vectors (no dropout in eval mode) are the scoring ones
    with torch.no_grad():
        trained = short.train_query_vectors([LONG, "hypersonic flow"]).cpu().numpy()
    np.testing.assert_allclose(trained, short.encode_queries([LONG, "hypersonic flow"]), atol=1e-5)


def test_query_max_length_is_saved_reported_and_checked(tiny_bert_dir, tmp_path):
    short = model(tiny_bert_dir, query_max_length=10)
    short.save_pretrained(tmp_path / "saved")
    loaded = mkd.load(tmp_path / "saved")
    assert loaded.query_max_length == 10 and "query_max_length=10" in repr(loaded)
    np.testing.assert_allclose(loaded.encode_queries([LONG]), short.encode_queries([LONG]), atol=1e-6)
    assert mkd.load(tmp_path / "saved", query_max_length=20).query_max_length == 20  # a setting, not a weight
    # scores that differ have different identities (teacher caches never mix them)
    plain = describe(model(tiny_bert_dir))
    assert describe(short) != plain and "query_max_length" not in plain
    for bad in (2, 49):
        with pytest.raises(ValueError, match="query_max_length must"):
            model(tiny_bert_dir, query_max_length=bad)
