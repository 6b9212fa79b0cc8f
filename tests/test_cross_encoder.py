"""What a CrossEncoder promises of its own: truncation, Hugging Face and sentence-transformers folders, atomic saves
(the contract every re-ranker keeps is tests/test_transformer_contract.py)."""
from __future__ import annotations

import numpy as np
import pyterrier as pt
import pytest
import torch
from ir_measures import RR, nDCG

import pyterrier_marginkd as mkd


def test_num_layers_truncates(tiny_bert_dir, small_results):
    full = mkd.CrossEncoder.from_pretrained(tiny_bert_dir)
    torch.manual_seed(0)
    small = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, num_layers=1)
    assert len(small.model.bert.encoder.layer) == 1 and small.model.config.num_hidden_layers == 1
    assert small.num_parameters() < full.num_parameters()
    assert "num_layers=1" in repr(small)
    with pytest.raises(ValueError, match="num_layers"):
        mkd.CrossEncoder.from_pretrained(tiny_bert_dir, num_layers=5)


def test_saved_folder_is_a_plain_hugging_face_and_sentence_transformers_model(tiny_ce, small_results, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ours = tiny_ce(small_results)["score"].to_numpy()
    tiny_ce.save_pretrained(tmp_path / "ce")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ce").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "ce")
    enc = tok(small_results["query"].tolist(), small_results["text"].tolist(), truncation=True, max_length=64,
              padding=True, return_tensors="pt")
    with torch.inference_mode():
        hf = model(**enc).logits[:, 0].numpy()
    np.testing.assert_allclose(hf, ours, rtol=1e-4, atol=1e-5)
    st = STCrossEncoder(str(tmp_path / "ce"), device="cpu")
    st_scores = st.predict(list(zip(small_results["query"], small_results["text"])))
    np.testing.assert_allclose(st_scores, ours, rtol=1e-4, atol=1e-5)


def test_save_failure_leaves_previous_folder_intact(tiny_ce, small_results, tmp_path, monkeypatch):
    tiny_ce.save_pretrained(tmp_path / "ce")
    before = mkd.load(tmp_path / "ce")(small_results)["score"].to_numpy()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(tiny_ce.tokenizer, "save_pretrained", broken)
    with torch.no_grad():
        tiny_ce.model.classifier.bias.add_(5.0)
    with pytest.raises(OSError, match="disk full"):
        tiny_ce.save_pretrained(tmp_path / "ce")
    after = mkd.load(tmp_path / "ce")(small_results)["score"].to_numpy()
    np.testing.assert_allclose(after, before)
    assert [p.name for p in tmp_path.iterdir()] == ["ce"]


def test_load_rejects_folders_that_are_not_ours(tmp_path, tiny_bert_dir):
    with pytest.raises(FileNotFoundError):
        mkd.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="marginkd.json"):
        mkd.load(tiny_bert_dir)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "marginkd.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        mkd.load(bad)
    (bad / "marginkd.json").write_text('{"architecture": "quantum"}')
    with pytest.raises(ValueError, match="unknown architecture 'quantum'"):
        mkd.load(bad)


@pytest.mark.slow
def test_real_pipeline_bm25_get_text_minilm_in_experiment(cranfield, cranfield_bm25, minilm_dir):
    topics = cranfield.topics("test").head(8)
    qrels = cranfield.qrels("test")
    reranker = mkd.CrossEncoder.from_pretrained(minilm_dir, num_layers=2, max_length=128)
    pipe = cranfield_bm25 % 10 >> cranfield.get_text() >> reranker
    res = pt.Experiment([cranfield_bm25 % 10, pipe], topics, qrels, [nDCG @ 10, RR @ 10, "mrt"],
                        names=["bm25", "bm25 >> minilm-2l"])
    assert list(res["name"]) == ["bm25", "bm25 >> minilm-2l"]
    assert ((res["nDCG@10"] > 0) & (res["nDCG@10"] <= 1)).all()
    assert (res["mrt"] > 0).all()
    reranked = pipe(topics)
    assert len(reranked) == 8 * 10
    # re-ranking keeps the candidate set: same documents per query as BM25
    bm25 = (cranfield_bm25 % 10)(topics)
    assert set(zip(reranked.qid, reranked.docno)) == set(zip(bm25.qid, bm25.docno))
