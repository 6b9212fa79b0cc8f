"""Fusion teachers (per-query normalisation, the first stage as a member, fitted weights), sentence-transformers
pooling, and students that mix in the first stage's score."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.ensemble import FirstStageScore, normalize_scores
from pyterrier_marginkd.training.teacher_cache import LISTS_FOLDER, teacher_key


def frame_with_scores() -> pd.DataFrame:
    return pd.DataFrame({
        "qid": ["a", "a", "a", "b", "b", "b", "c"],
        "query": ["x"] * 7,
        "docno": ["1", "2", "3", "1", "2", "3", "1"],
        "text": ["t"] * 7,
        "score": [1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 5.0],
    })


def column_scorer(values):
    """A scorer giving row i of its input the score values[(qid, docno)]."""
    return pt.apply.doc_score(lambda row: float(values[row["qid"], row["docno"]]))


def test_normalisations_are_per_query():
    df = frame_with_scores()
    z = normalize_scores(df["qid"], df["score"], "zscore")
    np.testing.assert_allclose(z[:3], [-np.sqrt(1.5), 0, np.sqrt(1.5)])
    np.testing.assert_allclose(z[3:], 0)  # equal scores and a lone candidate carry no order
    m = normalize_scores(df["qid"], df["score"], "minmax")
    np.testing.assert_allclose(m, [0, 0.5, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(normalize_scores(df["qid"], df["score"], None), df["score"])
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize_scores(df["qid"], df["score"], "rank")


@pytest.mark.parametrize("normalize", ["zscore", "minmax", None])
def test_ensemble_fuses_normalised_members(normalize):
    df = frame_with_scores()
    other = {(q, d): float(i * i) for i, (q, d) in enumerate(zip(df["qid"], df["docno"]))}
    fused = mkd.Ensemble([FirstStageScore(), column_scorer(other)], weights=[1, 3], normalize=normalize)(df)
    a = normalize_scores(df["qid"], df["score"], normalize)
    b = normalize_scores(df["qid"], [other[k] for k in zip(df["qid"], df["docno"])], normalize)
    np.testing.assert_allclose(fused["score"], (a + 3 * b) / 4)
    assert fused.groupby("qid")["rank"].min().eq(0).all()


def test_first_stage_member_refuses_a_frame_without_score():
    df = frame_with_scores().drop(columns=["score"])
    with pytest.raises(ValueError, match="FirstStageScore needs the first stage's 'score' column"):
        FirstStageScore()(df)
    with pytest.raises(Exception, match="score"):
        mkd.Ensemble([FirstStageScore(), column_scorer({})], normalize="zscore")(df)


def test_fit_picks_the_better_weights(tmp_path):
    rng = np.random.default_rng(0)
    rows, qrels = [], []
    for q in range(20):
        for d in range(10):
            rows.append((f"q{q}", "x", f"d{d}", "t", rng.normal()))
        qrels += [(f"q{q}", f"d{d}", 1 if d < 3 else 0) for d in range(10)]
    df = pd.DataFrame(rows, columns=["qid", "query", "docno", "text", "score"])
    qrels = pd.DataFrame(qrels, columns=["qid", "docno", "label"])
    good = {(q, d): -float(d[1:]) for q, d in zip(df["qid"], df["docno"])}  # ranks the relevant d0..d2 first
    ens = mkd.Ensemble([FirstStageScore(), column_scorer(good)], normalize="zscore")
    ens.fit(df, qrels, steps=4, rule="best")
    assert ens.weights == [0.0, 1.0]
    assert ens.fit_report["ndcg@10"] == pytest.approx(1.0)
    assert ens.fit_report["weightings_tried"] == 5
    # the first stage helps break the good member's ties: a mixture wins
    tied = {(q, d): float(int(d[1:]) < 5) for q, d in zip(df["qid"], df["docno"])}
    first = df.assign(score=[-float(d[1:]) for d in df["docno"]])
    ens2 = mkd.Ensemble([FirstStageScore(), column_scorer(tied)], normalize="zscore").fit(first, qrels, steps=4)
    assert 0 < ens2.weights[0] < 1
    # a member no better than another within noise: the one-standard-error rule keeps the weights even
    noisy = {(q, d): -float(d[1:]) + (0.0 if q != "q0" else float(d[1:]) * 2) for q, d in zip(df["qid"], df["docno"])}
    ens3 = mkd.Ensemble([column_scorer(good), column_scorer(noisy)], normalize="zscore").fit(df, qrels, steps=4)
    assert ens3.fit_report["best_ndcg@10"] == pytest.approx(1.0) and ens3.weights == [0.5, 0.5]
    assert ens3.fit_report["ndcg@10"] < 1.0
    assert mkd.Ensemble([column_scorer(good), column_scorer(noisy)], normalize="zscore").fit(
        df, qrels, steps=4, rule="best").weights == [0.75, 0.25]
    ens2.save_weights(tmp_path / "w.json")
    again = mkd.Ensemble([FirstStageScore(), column_scorer(tied)], normalize="zscore").load_weights(tmp_path / "w.json")
    assert again.weights == ens2.weights
    np.testing.assert_allclose(again(first)["score"], ens2(first)["score"])
    with pytest.raises(ValueError, match="normalize"):
        mkd.Ensemble([FirstStageScore(), column_scorer(tied)]).load_weights(tmp_path / "w.json")
    with pytest.raises(ValueError, match="none of the results' queries has qrels"):
        ens.fit(df, qrels.assign(qid="other"))


def test_st_folder_scores_like_sentence_transformers(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    enc = mkd.DotEncoder.from_pretrained(minilm_dir)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", True, 256)
    queries = ["what is boundary layer flow", "heat transfer at hypersonic speed"]
    docs = ["the boundary layer on a flat plate " * 10, "hypersonic heat transfer measurements", "x"]
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    expected = model.encode(queries) @ model.encode(docs).T
    ours = enc.score_pairs([q for q in queries for _ in docs], docs * len(queries)).reshape(len(queries), len(docs))
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_st_pooling_it_cannot_do_is_refused(tmp_path, tiny_bert_dir):
    import json
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        mkd.DotEncoder.from_pretrained(folder)
    assert mkd.DotEncoder.from_pretrained(folder, pooling="cls").normalize is False


def test_student_with_first_stage_mixing_saves_loads_and_scores_the_same(tiny_bert_dir, small_results, tmp_path):
    student = mkd.DotEncoder.from_pretrained(tiny_bert_dir, first_stage="zscore", max_length=64)
    student.set_first_stage_weights(2.5, 0.7)
    results = small_results.assign(score=[3.0, 1.0, 2.0, 0.5, 4.0, 1.0])
    scored = student(results)
    neural = mkd.DotEncoder.from_pretrained(tiny_bert_dir, max_length=64)(results)["score"].to_numpy()
    expected = 2.5 * neural + 0.7 * normalize_scores(results["qid"], results["score"], "zscore")
    np.testing.assert_allclose(scored["score"], expected, rtol=1e-5, atol=1e-6)
    student.save_pretrained(tmp_path / "s")
    again = mkd.load(tmp_path / "s")
    assert again.first_stage == "zscore"
    np.testing.assert_allclose(again(results)["score"], scored["score"], rtol=1e-6)
    with pytest.raises(ValueError, match="no 'score' column"):
        again(small_results)
    with pytest.raises(ValueError, match="first_stage"):
        mkd.DotEncoder.from_pretrained(tmp_path / "s", first_stage="minmax")
    with pytest.raises(ValueError, match="first_stage must be one of"):
        mkd.DotEncoder.from_pretrained(tiny_bert_dir, first_stage="rank")


def test_distil_a_mixing_student_from_a_fused_teacher(tiny_bert_dir, cranfield_train, tmp_path):
    results, qrels = cranfield_train
    member = mkd.DotEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    teacher = mkd.Ensemble([FirstStageScore(), member], normalize="zscore")
    student = mkd.DotEncoder.from_pretrained(tiny_bert_dir, first_stage="zscore", max_length=64)
    distiller = mkd.Distiller(student, teacher, loss=mkd.losses.MarginMSE(), epochs=1, batch_size=4, lr=1e-3,
                              num_negatives=2, output_dir=tmp_path / "run", head_lr=1e-2)
    distiller.fit(results, None, results, qrels)  # label-free: the fused teacher ranks each candidate list
    a, b = distiller.report["first_stage_mix_start"]
    # the member is the student's own starting encoder: its margins plus the first stage's fit the teacher exactly,
    # up to the member's per-query normalisation
    assert a > 0 and b == pytest.approx(0.5, abs=0.25)
    assert len(distiller.history) > 0 and np.isfinite([h["loss"] for h in distiller.history]).all()
    # each (query, docno) pair was scored once by the neural member, into its own cache
    caches = [p for p in (tmp_path / "run" / "teacher_cache").iterdir() if p.is_dir() and p.name != LISTS_FOLDER]
    assert len(caches) == 1
    assert len(list((tmp_path / "run" / "teacher_cache" / LISTS_FOLDER).glob("*.npz"))) == 1  # and the fused lists
    saved = mkd.load(tmp_path / "run" / "student")
    np.testing.assert_allclose(saved(results)["score"], distiller.student(results)["score"], rtol=1e-5)


def test_a_list_teacher_cannot_score_pairs_batch_by_batch(tiny_bert_dir, tmp_path):
    teacher = mkd.Ensemble([FirstStageScore(), mkd.DotEncoder.from_pretrained(tiny_bert_dir)], normalize="zscore")
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=32)
    source_groups = [mkd.data.Group("1", "q", ["a", "b"], ["x y", "z"], [1.0, 0.0])]

    class Source:
        report: dict = {}

        def groups(self, epoch):
            return iter(source_groups)

        def num_groups(self):
            return 1

    distiller = mkd.Distiller(student, teacher, output_dir=tmp_path / "r")
    with pytest.raises(ValueError, match="scores whole candidate lists"):
        distiller.fit_groups(Source())


def test_teacher_cache_key_follows_the_weights(tiny_bert_dir, tmp_path):
    teacher = mkd.DotEncoder.from_pretrained(tiny_bert_dir, max_length=32)
    before = teacher_key(teacher)
    assert teacher_key(mkd.DotEncoder.from_pretrained(tiny_bert_dir, max_length=32)) == before
    with torch.no_grad():
        next(teacher.model.parameters()).add_(0.01)
    assert teacher_key(teacher) != before  # retrained in place: another cache
    assert teacher_key(teacher, "named") == teacher_key(CountingLike(), "named")


class CountingLike(pt.Transformer):
    def transform(self, inp):
        return inp.assign(score=0.0)


def test_frozen_documents_keep_the_checkpoint_and_train_only_queries(tiny_bert_dir, small_results, tmp_path):
    full = mkd.DotEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    student = mkd.DotEncoder.from_pretrained(tiny_bert_dir, num_layers=1, frozen_docs=True, max_length=64)
    assert len(student.model.encoder.encoder.layer) == 1 and len(student.model.doc_encoder.encoder.layer) == 2
    texts = list(dict.fromkeys(small_results["text"]))
    np.testing.assert_allclose(student.encode_docs(texts), full.encode_docs(texts), atol=1e-6)
    assert student.precompute_docs([{"text": t} for t in texts]) == len(texts)
    scores = student.train_scores(list(small_results["query"]), list(small_results["text"]))
    scores.sum().backward()
    assert all(p.grad is None for p in student.model.doc_encoder.parameters())
    assert any(p.grad is not None for p in student.model.encoder.parameters())
    assert student.model.encoder.embeddings.word_embeddings.weight.grad is None  # shared vocabulary stays put
    np.testing.assert_allclose(scores.detach().numpy(), student(small_results)["score"], rtol=1e-5, atol=1e-6)
    student.save_pretrained(tmp_path / "s")
    again = mkd.load(tmp_path / "s")
    assert again.frozen_docs and len(again.model.doc_encoder.encoder.layer) == 2
    np.testing.assert_allclose(again(small_results)["score"], student(small_results)["score"], rtol=1e-5)
    with pytest.raises(ValueError, match="frozen_docs"):
        full.precompute_docs(texts)
    with pytest.raises(ValueError, match="shared_encoder"):
        mkd.DotEncoder.from_pretrained(tiny_bert_dir, frozen_docs=True, shared_encoder=True)
