"""What a CrossEncoder promises of its own: truncation, Hugging Face and sentence-transformers folders, atomic saves
(the contract every re-ranker keeps is tests/test_transformer_contract.py)."""
from __future__ import annotations

import json

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


# --- mixing in the first stage's score ------------------------------------------------------------------------------
def test_cross_encoder_mixing_the_first_stage_saves_loads_and_stays_a_plain_hf_model(tiny_bert_dir, small_results,
                                                                                     tmp_path):
    from transformers import AutoModelForSequenceClassification

    from pyterrier_marginkd.models.ensemble import normalize_scores, reads_first_stage

    torch.manual_seed(0)
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, first_stage="zscore", max_length=64)
    assert reads_first_stage(student) and "first_stage='zscore'" in repr(student)
    student.set_first_stage_weights(2.5, 0.7)
    results = small_results.assign(score=[3.0, 1.0, 2.0, 0.5, 4.0, 1.0])
    scored = student(results)
    neural = student.score_pairs(results["query"].tolist(), results["text"].tolist())
    expected = 2.5 * np.asarray(neural) + 0.7 * normalize_scores(results["qid"], results["score"], "zscore")
    np.testing.assert_allclose(scored["score"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no 'score' column"):
        student(small_results)
    student.save_pretrained(tmp_path / "ce")
    again = mkd.load(tmp_path / "ce")
    assert isinstance(again, mkd.CrossEncoder) and again.first_stage == "zscore"
    assert again.model.interpolation.weights() == pytest.approx((2.5, 0.7))
    np.testing.assert_allclose(again(results)["score"], scored["score"], rtol=1e-5, atol=1e-6)
    # the Hugging Face files hold the cross-encoder alone: no unexpected weights, its logits are the neural scores
    hf, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ce", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    with pytest.raises(ValueError, match="first_stage"):
        mkd.CrossEncoder.from_pretrained(tmp_path / "ce", first_stage="minmax")
    with pytest.raises(ValueError, match="first_stage must be one of"):
        mkd.CrossEncoder.from_pretrained(tiny_bert_dir, first_stage="rank")
    # a marginkd.json whose mixing weights were damaged is refused with the file named
    config = json.loads((tmp_path / "ce" / "marginkd.json").read_text())
    config["first_stage_weights"] = [1.0]
    (tmp_path / "ce" / "marginkd.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="first_stage_weights"):
        mkd.load(tmp_path / "ce")


def test_distil_a_cross_encoder_that_mixes_in_the_first_stage(tiny_bert_dir, cranfield_train, tmp_path):
    from pyterrier_marginkd.models.ensemble import FirstStageScore

    results, qrels = cranfield_train
    torch.manual_seed(0)
    teacher = mkd.Ensemble([FirstStageScore(), mkd.DotEncoder.from_pretrained(tiny_bert_dir, max_length=64)],
                           normalize="zscore")
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, first_stage="zscore", max_length=64)
    distiller = mkd.Distiller(student, teacher, loss=mkd.losses.MarginMSE(), epochs=1, batch_size=4, lr=1e-3,
                              num_negatives=2, output_dir=tmp_path / "run", head_lr=1e-2)
    distiller.fit(results, None, results, qrels)
    start = distiller.report["first_stage_mix_start"]
    assert len(start) == 2 and np.isfinite(start).all() and start[1] > 0  # the first stage agrees with the teacher
    end = distiller.student.model.interpolation.weights()
    assert end != pytest.approx(tuple(start))  # the mixing weights trained with the student
    saved = mkd.load(tmp_path / "run" / "student")
    assert saved.first_stage == "zscore"
    np.testing.assert_allclose(saved(results)["score"], distiller.student(results)["score"], rtol=1e-5, atol=1e-6)
