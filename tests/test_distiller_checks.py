"""The Distiller refuses unusable settings when it is built (loss names, steps, learning rate, negative
sampling) and unusable validation arguments before it builds any example or asks the teacher for a score."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import CountingTeacher

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses
from pyterrier_marginkd.training import distiller as distill
from pyterrier_marginkd.training import preparation


@pytest.mark.parametrize(("name", "expected"), [
    ("margin-mse", losses.MarginMSE), ("marginmse", losses.MarginMSE), ("MarginMSE", losses.MarginMSE),
    ("Margin_MSE", losses.MarginMSE), ("ranknet", losses.RankNet), ("RankNet", losses.RankNet),
    ("KL", losses.KLDiv), ("kldiv", losses.KLDiv), ("plackett-luce", losses.PlackettLuce), ("HINGE", losses.Hinge),
])
def test_a_loss_given_by_name_is_the_loss(tiny_ce, name, expected):
    assert type(mkd.Distiller(tiny_ce, CountingTeacher(), loss=name).loss) is expected


def test_a_sum_of_loss_names_is_the_combined_loss(tiny_ce):
    loss = mkd.Distiller(tiny_ce, CountingTeacher(), loss="Margin-MSE + ranknet").loss
    assert isinstance(loss, losses.Combined)
    assert [type(part) for _, part in loss.terms] == [losses.MarginMSE, losses.RankNet]


def test_unknown_loss_names_and_other_objects_are_refused_naming_the_names(tiny_ce):
    with pytest.raises(ValueError, match=r"unknown loss 'margin'.*margin-mse"):
        mkd.Distiller(tiny_ce, CountingTeacher(), loss="margin")
    for bad in (losses.MarginMSE, lambda s, t: 0.0, 3, losses.HiddenStateMSE()):
        with pytest.raises(TypeError, match=r"RankingLoss.*'margin-mse'.*'ranknet'"):
            mkd.Distiller(tiny_ce, CountingTeacher(), loss=bad)
    with pytest.raises(TypeError, match=r"MarginMSE\(\)"):
        mkd.Distiller(tiny_ce, CountingTeacher(), loss=losses.MarginMSE)


@pytest.mark.parametrize(("setting", "value"), [
    ("save_steps", 0), ("save_steps", -1), ("save_steps", None), ("save_steps", 2.5), ("eval_steps", 0),
    ("eval_steps", -5), ("max_steps", 0), ("max_steps", -1), ("lr", 0.0), ("lr", -1e-5), ("lr", float("nan")),
    ("lr", float("inf")), ("negative_sampling", "hard"), ("negative_sampling", None), ("num_negatives", 0),
    ("num_negatives", -2),
])
def test_unusable_settings_are_refused_at_construction(tiny_ce, setting, value):
    with pytest.raises(ValueError, match=setting):
        mkd.Distiller(tiny_ce, CountingTeacher(), **{setting: value})


def test_usable_settings_are_kept(tiny_ce):
    distiller = mkd.Distiller(tiny_ce, CountingTeacher(), save_steps=1, eval_steps=None, max_steps=None, lr=1,
                              negative_sampling="top", num_negatives=3)
    assert (distiller.save_steps, distiller.eval_steps, distiller.max_steps, distiller.lr) == (1, None, None, 1)
    assert mkd.Distiller(tiny_ce, CountingTeacher(), eval_steps=5, max_steps=7).eval_steps == 5


def test_save_steps_zero_no_longer_crashes_mid_run(student_dir, small_results, tmp_path):
    with pytest.raises(ValueError, match="save_steps"):
        mkd.Distiller(mkd.CrossEncoder.from_pretrained(student_dir), CountingTeacher(), save_steps=0,
                      output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("given", ["va_res", "va_qrels"])
def test_fit_refuses_lone_validation_before_any_work(tiny_ce, small_results, tmp_path, monkeypatch, given):
    teacher = CountingTeacher()
    distiller = mkd.Distiller(tiny_ce, teacher, output_dir=tmp_path / "run")

    def no_work(*args, **kwargs):
        raise AssertionError("examples were built before the arguments were checked")

    monkeypatch.setattr(distiller, "examples", no_work)
    monkeypatch.setattr(preparation, "TrainingExamples", no_work)
    monkeypatch.setattr(preparation, "TeacherRankedExamples", no_work)
    va = {"va_res": small_results, "va_qrels": None} if given == "va_res" else \
        {"va_res": None, "va_qrels": pd.DataFrame({"qid": ["q1"], "docno": ["d1"], "label": [1]})}
    for qrels in (None, pd.DataFrame({"qid": ["q1"], "docno": ["d1"], "label": [1]})):  # label-free and labelled
        with pytest.raises(ValueError, match="both va_res and va_qrels"):
            distiller.fit(small_results, qrels, **va)
    assert teacher.pairs == 0


@pytest.mark.parametrize("given", ["va_res", "va_qrels"])
def test_fit_file_and_fit_pairs_refuse_lone_validation_before_opening_the_data(tiny_ce, small_results, tmp_path,
                                                                               monkeypatch, given):
    def no_source(*args, **kwargs):
        raise AssertionError("the training data was opened before the arguments were checked")

    monkeypatch.setattr(distill, "ScoreFile", no_source)
    monkeypatch.setattr(distill, "DocPairs", no_source)
    distiller = mkd.Distiller(tiny_ce, None, loss="ranknet", output_dir=tmp_path / "run")
    va = {"va_res": small_results} if given == "va_res" else \
        {"va_qrels": pd.DataFrame({"qid": ["q1"], "docno": ["d1"], "label": [1]})}
    with pytest.raises(ValueError, match="both va_res and va_qrels"):
        distiller.fit_file(tmp_path / "scores.tsv", **va)
    with pytest.raises(ValueError, match="both va_res and va_qrels"):
        distiller.fit_pairs("msmarco-passage/train/triples-small", **va)
