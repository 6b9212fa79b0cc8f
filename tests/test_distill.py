"""Distiller on real Cranfield candidates with tiny models: learning, teacher cache, resume, bad input."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import torch
from conftest import CountingTeacher, kill_at_step, make
from safetensors.torch import load_file

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses
from pyterrier_marginkd.training import run


@pytest.fixture(scope="module")
def train_data(cranfield, cranfield_bm25):
    topics = cranfield.topics("train").head(12)
    res = (cranfield_bm25 % 10 >> cranfield.get_text())(topics)
    return res, cranfield.qrels("train")


def test_fit_lowers_the_loss_and_reports(train_data, student_dir, tmp_path):
    res, qrels = train_data
    distiller = make(student_dir, CountingTeacher(), tmp_path, epochs=8, lr=1e-2)
    before = distiller.evaluate_loss(res, qrels)
    distiller.fit(res, qrels)
    after = distiller.evaluate_loss(res, qrels)
    assert after < 0.7 * before
    assert distiller.report["queries"] == 12 and distiller.report["queries_used"] >= 8
    assert distiller.report["queries"] == distiller.report["queries_used"] + distiller.report["skipped_no_positive"] \
        + distiller.report["skipped_no_negative"]
    assert len(distiller.history) == distiller.report["total_steps"]
    reloaded = mkd.load(tmp_path / "run" / "student")
    np.testing.assert_allclose(reloaded(res)["score"], distiller(res)["score"], rtol=1e-5, atol=1e-5)


def test_second_fit_runs_zero_teacher_calls(train_data, student_dir, tmp_path):
    res, qrels = train_data
    teacher = CountingTeacher()
    make(student_dir, teacher, tmp_path).fit(res, qrels)
    first = teacher.pairs
    assert first > 0
    make(student_dir, teacher, tmp_path, resume=False).fit(res, qrels)
    assert teacher.pairs == first
    # a different output folder with the same cache folder also reuses the scores
    make(student_dir, teacher, tmp_path, name="other", cache_dir=tmp_path / "run" / "teacher_cache").fit(res, qrels)
    assert teacher.pairs == first


def test_resume_after_interruption_equals_uninterrupted(train_data, student_dir, tmp_path, monkeypatch):
    res, qrels = train_data
    full = make(student_dir, CountingTeacher(), tmp_path, name="full", save_steps=2, keep_checkpoint=True)
    full.fit(res, qrels)
    expected = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))

    original = kill_at_step(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        make(student_dir, CountingTeacher(), tmp_path, name="killed", save_steps=2).fit(res, qrels)
    monkeypatch.setattr(run, "optimizer_step", original)
    resumed = make(student_dir, CountingTeacher(), tmp_path, name="killed", save_steps=2, keep_checkpoint=True)
    resumed.fit(res, qrels)
    assert resumed.report["resumed_from"] == 2
    got = load_file(str(tmp_path / "killed" / "checkpoint" / "model.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def test_resume_refuses_a_different_run(train_data, student_dir, tmp_path):
    res, qrels = train_data
    make(student_dir, CountingTeacher(), tmp_path, keep_checkpoint=True).fit(res, qrels)
    with pytest.raises(ValueError, match="different run"):
        make(student_dir, CountingTeacher(), tmp_path, lr=1e-4).fit(res, qrels)


def test_pipeline_fit_then_transform_uses_the_student(cranfield, cranfield_bm25, student_dir, tmp_path):
    distiller = make(student_dir, CountingTeacher(), tmp_path, epochs=1)
    pipe = cranfield_bm25 % 10 >> cranfield.get_text() >> distiller
    train, valid = cranfield.topics("train").head(8), cranfield.topics("train").iloc[8:12]
    pipe.fit(train, cranfield.qrels("train"), valid, cranfield.qrels("train"))
    assert distiller.validation and "best_ndcg@10" in distiller.report
    out = pipe(cranfield.topics("test").head(2))
    direct = distiller.student((cranfield_bm25 % 10 >> cranfield.get_text())(cranfield.topics("test").head(2)))
    np.testing.assert_allclose(out.sort_values(["qid", "docno"])["score"],
                               direct.sort_values(["qid", "docno"])["score"])
    assert list(distiller.subtransformers()) == ["student"]


def test_label_only_baseline(train_data, student_dir, tmp_path):
    res, qrels = train_data
    distiller = make(student_dir, None, tmp_path, loss=losses.RankNet(), epochs=8, lr=1e-2)
    before = distiller.evaluate_loss(res, qrels)
    distiller.fit(res, qrels)
    assert distiller.evaluate_loss(res, qrels) < before
    with pytest.raises(ValueError, match="teacher=None"):
        make(student_dir, None, tmp_path, name="no-teacher", loss=losses.MarginMSE()).fit(res, qrels)


def test_bad_inputs_are_named(train_data, student_dir, tmp_path):
    res, qrels = train_data
    distiller = make(student_dir, CountingTeacher(), tmp_path)
    with pytest.raises(KeyError, match="text"):
        distiller.fit(res.drop(columns=["text"]), qrels)
    with pytest.raises(KeyError, match="label"):
        distiller.fit(res, qrels.drop(columns=["label"]))
    with pytest.raises(ValueError, match="queries not in the results"):
        distiller.fit(res, qrels.assign(qid="elsewhere-" + qrels["qid"]))
    with pytest.raises(ValueError, match="no training query has a positive"):
        distiller.fit(res, qrels.assign(label=0))
    with pytest.raises(ValueError, match="empty"):
        distiller.fit(res.iloc[:0], qrels)
    with pytest.raises(ValueError, match="both va_res and va_qrels"):
        distiller.fit(res, qrels, res, None)


def test_bad_teachers_are_named_and_nothing_is_cached(train_data, student_dir, tmp_path):
    res, qrels = train_data
    nan_teacher = CountingTeacher(lambda r: float("nan") if "flow" in r["text"] else 1.0)
    with pytest.raises(ValueError, match="non-finite score"):
        make(student_dir, nan_teacher, tmp_path, name="nan").fit(res, qrels)
    for db in (tmp_path / "nan" / "teacher_cache").rglob("db.sqlite3"):
        with sqlite3.connect(db) as conn:
            values = [v for (v,) in conn.execute("SELECT value FROM cache")]
        assert all(np.isfinite(values))
    no_score = pt.apply.generic(lambda df: df.assign(relevance=1.0))
    with pytest.raises(ValueError, match="must add a 'score' column"):
        make(student_dir, no_score, tmp_path, name="noscore").fit(res, qrels)
    dropping = pt.apply.generic(lambda df: df.iloc[1:].assign(score=1.0))
    with pytest.raises(ValueError, match="dropped"):
        make(student_dir, dropping, tmp_path, name="drop").fit(res, qrels)


def test_max_steps_and_max_time_stop_training(train_data, student_dir, tmp_path):
    res, qrels = train_data
    distiller = make(student_dir, CountingTeacher(), tmp_path, name="steps", max_steps=3)
    distiller.fit(res, qrels)
    assert len(distiller.history) == 3
    timed = make(student_dir, CountingTeacher(), tmp_path, name="time", max_time=0.0, epochs=5)
    timed.fit(res, qrels)
    assert len(timed.history) == 1 and timed.report["stopped_by_max_time"]


def test_time_boxed_run_warms_up_and_anneals_within_its_budget(train_data, student_dir, tmp_path):
    res, qrels = train_data
    distiller = make(student_dir, CountingTeacher(), tmp_path, name="anneal", max_time=4.0, epochs=10_000,
                     lr=1e-3, warmup_ratio=0.2)
    distiller.fit(res, qrels)
    lrs = [h["lr"] for h in distiller.history]
    assert distiller.report["stopped_by_max_time"] and distiller.report["total_steps"] > 10 * len(lrs)
    # the last step of a time-boxed run is validated (a learning curve needs its end point)
    va_res = res[res["qid"].isin(res["qid"].unique()[:3])]
    timed = make(student_dir, CountingTeacher(), tmp_path, name="anneal-valid", max_time=1.0, epochs=10_000)
    timed.fit(res, qrels, va_res, qrels)
    assert timed.validation[-1]["step"] == len(timed.history)
    # by steps alone the run would still be warming up; by time it peaked and then decayed to about zero
    assert max(lrs) > 0.6e-3 and lrs[-1] < 0.15e-3
    assert int(np.argmax(lrs)) < len(lrs) - 1


def test_head_lr_sets_the_learning_rate_of_the_scoring_head(train_data, student_dir, tmp_path):
    res, qrels = train_data
    distiller = make(student_dir, CountingTeacher(), tmp_path, name="head", head_lr=0.0, max_steps=3)
    before = {n: p.detach().clone() for n, p in distiller.student.model.named_parameters()}
    distiller.fit(res, qrels)
    after = dict(distiller.student.model.named_parameters())
    head = [n for n in before if "classifier" in n or "pooler" in n]
    assert head and all(torch.equal(before[n], after[n]) for n in head)
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in head)


def test_duplicate_candidates_are_dropped(train_data, student_dir, tmp_path):
    res, qrels = train_data
    examples = make(student_dir, CountingTeacher(), tmp_path).examples(pd.concat([res, res.head(5)]), qrels)
    assert examples.report["duplicate_rows_dropped"] == 5


@pt.testing.transformer_test_class
def test_distiller_is_a_pyterrier_transformer():
    from conftest import tiny_encoder_folder

    return mkd.Distiller(mkd.CrossEncoder.from_pretrained(tiny_encoder_folder()), CountingTeacher())


def test_fits_sharing_a_teacher_cache_at_once_do_not_crash(small_results, tmp_path):
    """Two processes with one cache_dir: the other one stores some pairs between our lookup and our insert."""
    from pyterrier_marginkd.training.teacher_cache import TeacherScores

    pairs = small_results[["qid", "query", "docno", "text"]]
    other = TeacherScores(CountingTeacher(), tmp_path, teacher_id="shared")
    ours_teacher = CountingTeacher()

    class Racing(pt.Transformer):
        def transform(self, inp):
            other.scores(pairs)  # the other fit wins the race for these pairs
            return ours_teacher.transform(inp)

    ours = TeacherScores(Racing(), tmp_path, teacher_id="shared")
    assert ours.scores(pairs) == other.scores(pairs)
    assert ours_teacher.pairs == len(pairs)  # scored once; the retry found every pair in the cache
    assert ours.scores(pairs) == other.scores(pairs) and ours_teacher.pairs == len(pairs)
    ours.close()
    other.close()


def test_the_starting_weights_compete_for_best(train_data, student_dir, tmp_path, monkeypatch):
    """A fit that only makes validation worse gives back the student it started from (validate_start)."""
    res, qrels = train_data
    train, valid = res[res.qid.isin(res.qid.unique()[:8])], res[~res.qid.isin(res.qid.unique()[:8])]
    falling = iter(np.linspace(0.9, 0.1, 50))
    monkeypatch.setattr(run, "evaluate_ndcg10", lambda results, qrels: float(next(falling)))
    distiller = make(student_dir, CountingTeacher(), tmp_path / "a", epochs=2, lr=1e-2)
    start = {k: v.clone() for k, v in distiller.student.model.state_dict().items()}
    distiller.fit(train, qrels, valid, qrels)
    assert distiller.validation[0]["step"] == 0 and len(distiller.validation) >= 3
    assert distiller.report["best_step"] == 0
    for key, value in distiller.student.model.state_dict().items():
        torch.testing.assert_close(value, start[key], rtol=0, atol=0)
    # without it, the best of the trained checkpoints is kept: the weights moved
    falling = iter(np.linspace(0.9, 0.1, 50))
    other = make(student_dir, CountingTeacher(), tmp_path / "b", epochs=2, lr=1e-2, validate_start=False)
    other.fit(train, qrels, valid, qrels)
    assert other.validation[0]["step"] > 0 and other.report["best_step"] == other.validation[0]["step"]
    assert any(not torch.equal(v, start[k]) for k, v in other.student.model.state_dict().items())
