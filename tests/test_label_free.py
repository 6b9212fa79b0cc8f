"""Label-free distillation (teacher-ranked candidates), mixed judged/pseudo queries, teacher scale, pseudo-queries."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import CountingTeacher, make, overlap_score

import pyterrier_marginkd as mkd


@pytest.fixture(scope="module")
def pseudo_results(cranfield, cranfield_bm25):
    topics = mkd.pseudo_queries(cranfield, "span", num=10, seed=3)
    return (cranfield_bm25 % 10 >> cranfield.get_text())(topics[["qid", "query"]])


def test_label_free_fit_without_qrels_lowers_the_loss(pseudo_results, student_dir, tmp_path):
    teacher = CountingTeacher()
    distiller = make(student_dir, teacher, tmp_path, epochs=8, lr=1e-2, pseudo_positives=2)
    before = distiller.evaluate_loss(pseudo_results, None)
    distiller.fit(pseudo_results, None)
    assert distiller.evaluate_loss(pseudo_results, None) < 0.7 * before
    assert distiller.report["teacher_ranked_queries"] == 10
    assert distiller.report["groups_per_epoch"] == 20
    # every candidate was scored once to rank it, and never again
    assert teacher.pairs == pseudo_results[["qid", "docno"]].drop_duplicates().shape[0]


def test_teacher_ranked_groups_follow_the_teacher(pseudo_results, student_dir, tmp_path):
    distiller = make(student_dir, CountingTeacher(), tmp_path, pseudo_positives=1, pseudo_negative_start=3,
                     num_negatives=2)
    for group in distiller.examples(pseudo_results, None).groups(0):
        assert group.labels == [1.0, 0.0, 0.0]
        assert group.teacher[0] >= max(group.teacher[1:])
        candidates = pseudo_results[pseudo_results.qid == group.qid]
        best = max(overlap_score(r) for _, r in candidates.iterrows())
        assert group.teacher[0] == pytest.approx(best)


def test_pipeline_fit_with_no_qrels(cranfield, cranfield_bm25, student_dir, tmp_path):
    distiller = make(student_dir, CountingTeacher(), tmp_path, epochs=1)
    pipe = cranfield_bm25 % 8 >> cranfield.get_text() >> distiller
    pipe.fit(mkd.pseudo_queries(cranfield, "title", num=6)[["qid", "query"]], None)
    assert distiller.report["teacher_ranked_queries"] == 6 and len(distiller.history) >= 1


def test_mixed_fit_uses_qrels_where_they_exist(cranfield, cranfield_bm25, pseudo_results, student_dir, tmp_path):
    judged = (cranfield_bm25 % 10 >> cranfield.get_text())(cranfield.topics("train").head(6))
    teacher = CountingTeacher()
    distiller = make(student_dir, teacher, tmp_path, epochs=1, unjudged="teacher")
    distiller.fit(pd.concat([judged, pseudo_results]), cranfield.qrels("train"))
    assert distiller.report["judged_queries"] == 6
    assert distiller.report["teacher_ranked_queries"] == 10
    assert distiller.report["judged_queries_used"] >= 4
    groups = distiller.examples(pd.concat([judged, pseudo_results]), cranfield.qrels("train")).groups(0)
    assert {g.qid for g in groups} & set(judged.qid) and {g.qid for g in groups} & set(pseudo_results.qid)
    # a pair is scored once: ranking the pseudo-query candidates plus the judged groups' pairs, no repeats
    pairs = pd.concat([judged, pseudo_results])[["qid", "docno"]].drop_duplicates()
    assert teacher.pairs <= len(pairs)


def test_cosine_scale_teacher_is_rescaled_and_trains(pseudo_results, student_dir, tmp_path):
    cosine = CountingTeacher(lambda row: overlap_score(row) / 100.0)
    distiller = make(student_dir, cosine, tmp_path, epochs=8, lr=1e-2, pseudo_positives=2)
    before = distiller.evaluate_loss(pseudo_results, None)
    distiller.fit(pseudo_results, None)
    assert distiller.report["teacher_scale_factor"] > 10
    assert distiller.evaluate_loss(pseudo_results, None) < 0.7 * before
    raw = make(student_dir, cosine, tmp_path, name="raw", teacher_scale=None)
    raw.fit(pseudo_results, None)
    assert "teacher_scale_factor" not in raw.report
    with pytest.raises(ValueError, match="teacher_scale"):
        make(student_dir, cosine, tmp_path, teacher_scale="huge")


def test_label_free_needs_a_teacher(pseudo_results, student_dir, tmp_path):
    distiller = make(student_dir, None, tmp_path, loss=mkd.losses.RankNet())
    with pytest.raises(ValueError, match="needs a teacher"):
        distiller.fit(pseudo_results, None)


@pytest.mark.parametrize("method", ["title", "first_sentence", "span"])
def test_pseudo_queries_each_method(cranfield, method):
    frame = mkd.pseudo_queries(cranfield, method, num=50, seed=1)
    assert len(frame) == 50 and list(frame.columns) == ["qid", "query", "docno"]
    assert frame["qid"].is_unique and frame["qid"].str.startswith(f"pq-{method}-").all()
    assert (frame["query"].str.split().str.len() >= 3).all()
    assert not frame["query"].str.contains(r"[^\w\s]").any()
    assert not set(frame["qid"]) & set(cranfield.topics()["qid"])
    again = mkd.pseudo_queries(cranfield, method, num=50, seed=1)
    pd.testing.assert_frame_equal(frame, again)
    if method == "span":
        assert not frame.equals(mkd.pseudo_queries(cranfield, method, num=50, seed=2))


def test_pseudo_queries_skip_and_errors():
    docs = [{"docno": "a", "text": "Heat transfer, in a boundary layer!"}, {"docno": "b", "text": "?!"},
            {"docno": "c", "text": ""}]
    with pytest.warns(UserWarning, match="skipped 2"):
        frame = mkd.pseudo_queries(docs, "first_sentence")
    assert frame["query"].tolist() == ["Heat transfer in a boundary layer"] and frame.attrs["skipped"] == 2
    with pytest.raises(ValueError, match="unknown pseudo-query method 'keywords'"):
        mkd.pseudo_queries(docs, "keywords")
    with pytest.raises(ValueError, match="no document has a 'title'"):
        mkd.pseudo_queries(docs, "title")
    with pytest.raises(ValueError, match="document 'x' has no text"):
        mkd.pseudo_queries([{"docno": "x", "text": None}], "span")
    with pytest.raises(KeyError, match="no 'docno'"):
        mkd.pseudo_queries([{"text": "a b c"}], "span")


def test_pseudo_qrels_train_a_model_without_teacher_or_real_labels(cranfield, cranfield_bm25, student_dir, tmp_path):
    pq = mkd.pseudo_queries(cranfield, "title", num=12, seed=0)
    qrels = mkd.pseudo_qrels(pq)
    assert list(qrels.columns) == ["qid", "docno", "label"] and (qrels["label"] == 1).all()
    assert dict(zip(qrels["qid"], qrels["docno"])) == dict(zip(pq["qid"], pq["docno"]))
    distiller = make(student_dir, None, tmp_path, loss=mkd.losses.RankNet(), epochs=6, lr=1e-2, num_negatives=2)
    results = (cranfield_bm25 % 10 >> cranfield.get_text())(pq[["qid", "query"]])
    before = distiller.evaluate_loss(results, qrels)
    (cranfield_bm25 % 10 >> cranfield.get_text() >> distiller).fit(pq[["qid", "query"]], qrels)
    assert distiller.evaluate_loss(results, qrels) < 0.8 * before
    # a title usually retrieves its own document: the positives are its source documents
    assert distiller.report["positives"] == distiller.report["queries_used"] >= 8


def test_pseudo_qrels_errors():
    with pytest.raises(KeyError, match=r"missing column\(s\) \['docno'\]"):
        mkd.pseudo_qrels(pd.DataFrame({"qid": ["a"], "query": ["x y z"]}))
    with pytest.raises(ValueError, match="no pseudo-queries"):
        mkd.pseudo_qrels(pd.DataFrame({"qid": [], "docno": []}))
    with pytest.raises(ValueError, match="must be > 0"):
        mkd.pseudo_qrels(pd.DataFrame({"qid": ["a"], "docno": ["1"]}), label=0)
    with pytest.raises(TypeError, match="pseudo_qrels needs the frame"):
        mkd.pseudo_qrels([("a", "1")])


def test_teacher_ranked_queries_keep_teacher_scores_apart_from_labels():
    """A teacher-ranked query holds its teacher scores as such (no qrels labels), best first; groups carry them."""
    from pyterrier_marginkd.data import TeacherRankedExamples

    results = pd.DataFrame({"qid": ["q"] * 4, "query": ["a b"] * 4, "docno": ["d1", "d2", "d3", "d4"],
                            "text": ["w", "x", "y", "z"]})
    scores = {("q", "d1"): 0.1, ("q", "d2"): 0.9, ("q", "d3"): 0.5, ("q", "d4"): -1.0}
    examples = TeacherRankedExamples(results, scores, num_negatives=2)
    (query,) = examples.queries
    assert query.labels is None and query.docnos == ["d2", "d3", "d1", "d4"]
    assert list(query.teacher) == [0.9, 0.5, 0.1, -1.0]
    (group,) = examples.groups(0)
    assert group.docnos[0] == "d2" and group.labels == [1.0, 0.0, 0.0]
    assert group.teacher == [scores["q", d] for d in group.docnos]
