"""A fit that completes deletes its resume checkpoint (182 MB of trainer state for a MiniLM) unless
``keep_checkpoint=True``; a fit stopped by ``max_time`` keeps it, and fitting again resumes it."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import CountingTeacher, kill_at_step, make

import pyterrier_marginkd as mkd
from pyterrier_marginkd.training.checkpoints import STATE_FILE


@pytest.fixture()
def train_data(small_results):
    return small_results, pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d4"], "label": [1, 1]})


def test_a_completed_fit_deletes_its_checkpoint(train_data, student_dir, tmp_path):
    distiller = make(student_dir, CountingTeacher(), tmp_path, save_steps=1)
    distiller.fit(*train_data)
    run = tmp_path / "run"
    assert distiller.report["stopped_by_max_time"] is False
    assert not (run / "checkpoint").exists()
    assert not list(run.glob(".checkpoint*"))
    assert (run / "student" / "model.safetensors").exists() and (run / "teacher_cache").exists()
    assert isinstance(mkd.load(run / "student"), mkd.CrossEncoder)


def test_keep_checkpoint_keeps_it(train_data, student_dir, tmp_path):
    make(student_dir, CountingTeacher(), tmp_path, keep_checkpoint=True).fit(*train_data)
    assert (tmp_path / "run" / "checkpoint" / STATE_FILE).exists()


def test_a_fit_stopped_by_max_time_keeps_its_checkpoint_and_the_resumed_fit_deletes_it(train_data, student_dir,
                                                                                      tmp_path):
    stopped = make(student_dir, CountingTeacher(), tmp_path, max_time=1e-9)
    stopped.fit(*train_data)
    assert stopped.report["stopped_by_max_time"] is True
    assert (tmp_path / "run" / "checkpoint" / STATE_FILE).exists()
    resumed = make(student_dir, CountingTeacher(), tmp_path)
    resumed.fit(*train_data)
    assert resumed.report["resumed_from"] == 1 and resumed.report["stopped_by_max_time"] is False
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_failed_fit_keeps_its_checkpoint(train_data, student_dir, tmp_path, monkeypatch):
    kill_at_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        make(student_dir, CountingTeacher(), tmp_path, save_steps=1).fit(*train_data)
    assert (tmp_path / "run" / "checkpoint" / STATE_FILE).exists()
