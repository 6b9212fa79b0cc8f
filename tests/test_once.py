"""fit_once: a folder trained once is reused by a later call with the same settings, refused for other settings, and
trained again when the fit that started it never finished."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import CountingTeacher

import pyterrier_marginkd as mkd
from pyterrier_marginkd.training.once import DONE_FILE

QRELS = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d4"], "label": [1, 1]})


def test_a_folder_is_trained_once_then_reused(student_dir, small_results, tmp_path):
    fits = []

    def fit(folder):
        fits.append(folder)
        distiller = mkd.Distiller(mkd.CrossEncoder.from_pretrained(student_dir), CountingTeacher(), output_dir=folder,
                                  max_steps=1)
        return distiller.fit(small_results, QRELS)

    settings = {"lr": 3e-5, "output": tmp_path / "elsewhere", "layers": (1, 2)}
    student, record = mkd.fit_once(tmp_path / "run", settings, fit)
    assert fits == [tmp_path / "run"] and isinstance(student, mkd.CrossEncoder)
    saved = json.loads((tmp_path / "run" / DONE_FILE).read_text())
    assert saved == json.loads(json.dumps(record)) and saved["settings"]["layers"] == [1, 2]
    assert saved["report"]["total_steps"] == 1 and saved["train_seconds"] > 0
    again, record_again = mkd.fit_once(tmp_path / "run", settings, fit, load_kwargs={"max_length": 32})
    assert len(fits) == 1 and record_again == saved and again.max_length == 32
    assert list(again.score_pairs(["wing"], ["flutter"])) == list(student.score_pairs(["wing"], ["flutter"]))
    with pytest.raises(ValueError, match=r"other settings \(changed: \['layers', 'lr'\]\)"):
        mkd.fit_once(tmp_path / "run", {**settings, "lr": 1e-4, "layers": [2]}, fit)
    assert len(fits) == 1


def test_a_fit_that_did_not_finish_leaves_no_record(student_dir, small_results, tmp_path):
    def killed(folder):
        folder.mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mkd.fit_once(tmp_path / "run", {"lr": 1}, killed)
    assert not (tmp_path / "run" / DONE_FILE).exists() and not list((tmp_path / "run").iterdir())
    student, record = mkd.fit_once(tmp_path / "run", {"lr": 1}, lambda folder: mkd.Distiller(
        mkd.CrossEncoder.from_pretrained(student_dir), CountingTeacher(), output_dir=folder, max_steps=1
    ).fit(small_results, QRELS))
    assert record["settings"] == {"lr": 1} and (tmp_path / "run" / DONE_FILE).exists()
