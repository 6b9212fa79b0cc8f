"""CrossEncoder as a PyTerrier re-ranker: conventions, truncation, save/load, invariances, bad input."""
from __future__ import annotations

import numpy as np
import pyterrier as pt
import pytest
import torch
from ir_measures import RR, nDCG

import pyterrier_marginkd as mkd


def test_transform_adds_score_and_rank_keeps_columns(tiny_ce, small_results):
    out = tiny_ce(small_results)
    assert len(out) == len(small_results)
    assert {"qid", "query", "docno", "text", "extra", "score", "rank"} <= set(out.columns)
    assert out["score"].notna().all() and np.isfinite(out["score"]).all()
    for _, group in out.groupby("qid"):
        assert sorted(group["rank"]) == list(range(len(group)))
        top = group.sort_values("rank").iloc[0]
        assert top["score"] == group["score"].max()
    merged = out.merge(small_results, on=["qid", "docno"], suffixes=("", "_in"))
    assert (merged["extra"] == merged["extra_in"]).all()


def test_old_score_and_rank_replaced(tiny_ce, small_results):
    out = tiny_ce(small_results.assign(score=100.0, rank=7))
    assert (out["score"] != 100.0).all()
    assert set(out["rank"]) == {0, 1, 2}


def test_empty_input_gives_empty_output_with_columns(tiny_ce, small_results):
    out = tiny_ce(small_results.iloc[:0])
    assert len(out) == 0
    assert {"score", "rank", "extra"} <= set(out.columns)


@pytest.mark.parametrize("column", ["qid", "query", "docno", "text"])
def test_missing_column_is_named(tiny_ce, small_results, column):
    with pytest.raises(KeyError, match=column) as err:
        tiny_ce(small_results.drop(columns=[column]))
    if column == "text":
        assert "get_text" in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, None, 42, b"bytes"])
def test_non_string_text_names_the_row(tiny_ce, small_results, bad):
    frame = small_results.astype({"text": object})
    frame.at[4, "text"] = bad
    with pytest.raises(ValueError, match=r"column 'text'.*row 4.*d4"):
        tiny_ce(frame)


def test_nan_query_is_rejected(tiny_ce, small_results):
    frame = small_results.astype({"query": object})
    frame.at[0, "query"] = None
    with pytest.raises(ValueError, match="column 'query'"):
        tiny_ce(frame)


def test_scores_do_not_depend_on_batch_size_or_row_order(tiny_ce, small_results):
    scores = {}
    for batch_size in (1, 2, 5, 64):
        tiny_ce.batch_size = batch_size
        scores[batch_size] = tiny_ce(small_results).set_index(["qid", "docno"])["score"]
    shuffled = small_results.sample(frac=1.0, random_state=3)
    scores["shuffled"] = tiny_ce(shuffled).set_index(["qid", "docno"])["score"]
    base = scores[1]
    for other in scores.values():
        np.testing.assert_allclose(other.loc[base.index].to_numpy(), base.to_numpy(), rtol=1e-4, atol=1e-5)


def test_num_layers_truncates(tiny_bert_dir, small_results):
    full = mkd.CrossEncoder.from_pretrained(tiny_bert_dir)
    torch.manual_seed(0)
    small = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, num_layers=1)
    assert len(small.model.bert.encoder.layer) == 1 and small.model.config.num_hidden_layers == 1
    assert small.num_parameters() < full.num_parameters()
    assert "num_layers=1" in repr(small)
    with pytest.raises(ValueError, match="num_layers"):
        mkd.CrossEncoder.from_pretrained(tiny_bert_dir, num_layers=5)


def test_save_load_round_trip_identical(tiny_ce, small_results, tmp_path):
    before = tiny_ce(small_results)["score"].to_numpy()
    tiny_ce.save_pretrained(tmp_path / "ce")
    for loaded in (mkd.CrossEncoder.from_pretrained(tmp_path / "ce"), mkd.load(tmp_path / "ce"),
                   pt.Artifact.load(str(tmp_path / "ce"))):
        assert isinstance(loaded, mkd.CrossEncoder) and loaded.max_length == 64
        np.testing.assert_allclose(loaded(small_results)["score"].to_numpy(), before, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ce" / "model.safetensors").exists()
    assert not list(tmp_path.glob(".ce.tmp-*"))


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


@pt.testing.transformer_test_class
def test_cross_encoder_is_a_pyterrier_transformer():
    import tempfile

    from conftest import minilm_path
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tempfile.mkdtemp()
    tok = BertTokenizerFast.from_pretrained(minilm_path())
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32, num_labels=1)
                                  ).save_pretrained(path)
    tok.save_pretrained(path)
    return mkd.CrossEncoder.from_pretrained(path)


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
