"""The marginkd command line: names of evaluated models, start-up without heavy imports, option checks."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from pyterrier_marginkd import cli
from pyterrier_marginkd.report import CSV_FILE


def test_unique_names_are_the_shortest_distinguishing_path_suffixes():
    assert cli.unique_names(["runs/kd/student", "runs/labels/student"]) == ["kd/student", "labels/student"]
    assert cli.unique_names(["runs/kd/student", "other"]) == ["student", "other"]
    assert cli.unique_names(["student", "x/student"]) == ["student", "x/student"]
    assert cli.unique_names(["a/kd/student/", "b/kd/student"]) == ["a/kd/student", "b/kd/student"]
    assert cli.unique_names(["cross-encoder/ms-marco-MiniLM-L6-v2"]) == ["ms-marco-MiniLM-L6-v2"]
    assert cli.unique_names(["runs/BM25"]) == ["runs/BM25"]  # never the baseline's name
    with pytest.raises(SystemExit, match="given twice"):
        cli.unique_names(["runs/kd/student", "./runs/kd/student"])


def test_evaluate_names_two_students_apart_in_the_report(cranfield, tiny_bert_dir, tmp_path):
    for run in ("kd", "labels"):
        shutil.copytree(tiny_bert_dir, tmp_path / "runs" / run / "student")
    common = ["evaluate", "--data", str(cranfield.path), "--k", "3", "--num-queries", "2", "--output", str(tmp_path)]
    models = [str(tmp_path / "runs" / "kd" / "student"), str(tmp_path / "runs" / "labels" / "student")]
    cli.main([*common, *models, "--report", str(tmp_path / "report")])
    assert list(pd.read_csv(tmp_path / "report" / CSV_FILE)["name"]) == ["BM25", "kd/student", "labels/student"]
    with pytest.raises(SystemExit, match="used twice"):
        cli.main([*common, *models, "--names", "a", "a"])
    with pytest.raises(SystemExit, match="used twice"):
        cli.main([*common, models[0], "--names", "BM25"])
