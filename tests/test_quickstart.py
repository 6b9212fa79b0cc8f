"""`marginkd quickstart` on a tiny model and a slice of Cranfield: a fresh run, a second run reusing everything."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.quickstart import FAST, Recipe, _download_hint
from pyterrier_marginkd.report import CSV_FILE, PLOT_FILE, TABLE_FILE

SYSTEMS = ["BM25", "teacher L2 (labels)", "student L1 (labels only)", "student L1 (Margin-MSE)"]


def run(cranfield, tiny_bert_dir, output, *extra: str) -> None:
    cli.main(["quickstart", "--data", str(cranfield.path), "--output", str(output), "--model", str(tiny_bert_dir),
              "--student-layers", "1", "--fast", "--train-queries", "8", "--test-queries", "4", "--k", "6",
              "--k-train", "6", "--max-length", "48", *extra])


def table_rows(output) -> list[str]:
    lines = (output / "report" / TABLE_FILE).read_text().splitlines()
    return [line.split(" | ")[0].lstrip("| ") for line in lines[2:] if line.startswith("| ")]


def test_fresh_run_then_a_second_run_reuses_every_model(cranfield, tiny_bert_dir, tmp_path, capsys, monkeypatch):
    output = tmp_path / "qs"
    run(cranfield, tiny_bert_dir, output)
    printed = capsys.readouterr().out
    assert table_rows(output) == SYSTEMS
    assert all(name in printed for name in SYSTEMS) and "quickstart finished" in printed
    assert (output / "report" / PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    assert (output / "cranfield.pisa").is_dir() and any((output / "teacher_cache").iterdir())
    for stage in ("teacher", "student-L1-labels", "student-L1-marginmse"):
        done = json.loads((output / stage / "done.json").read_text())
        assert done["settings"]["max_length"] == 48 and (output / stage / "student" / "marginkd.json").exists()
    first = pd.read_csv(output / "report" / CSV_FILE)

    def no_training(*args, **kwargs):
        raise AssertionError("a second run must not train again")
    monkeypatch.setattr(mkd.Distiller, "fit", no_training)
    run(cranfield, tiny_bert_dir, output)
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 3 and "training in" not in printed
    assert table_rows(output) == SYSTEMS
    effectiveness = ["name", "nDCG@10", "RR@10", "AP@100"]
    pd.testing.assert_frame_equal(first[effectiveness], pd.read_csv(output / "report" / CSV_FILE)[effectiveness])

    with pytest.raises(ValueError, match=r"other settings \(changed: \['max_length'\]\)"):
        run(cranfield, tiny_bert_dir, output, "--max-length", "32")


def test_a_given_teacher_and_time_boxed_students(cranfield, tiny_bert_dir, student_dir, tmp_path, capsys):
    output = tmp_path / "given"
    run(cranfield, tiny_bert_dir, output, "--teacher", str(student_dir), "--student-time", "0.001")
    assert not (output / "teacher").exists()
    assert table_rows(output)[1] == "teacher L2"
    assert capsys.readouterr().out.count("budget allowed 1 of") == 2
    done = json.loads((output / "student-L1-marginmse" / "done.json").read_text())
    assert done["report"]["stopped_by_max_time"] and done["settings"]["max_time"] == 0.001


def test_recipes_and_offline_hint(cranfield):
    assert Recipe.preset(True) == FAST and Recipe.preset(True, k=7).k == 7
    assert FAST.teacher_time is not None and FAST.student_time is not None
    with pytest.raises(TypeError, match="unknown recipe setting"):
        Recipe.preset(True, epochs=3)
    with pytest.raises(RuntimeError, match="--data ../shared/data/cranfield"):
        with _download_hint(mkd.Collection("irds:beir/scifact")):
            raise ConnectionError("Name or service not known")
    with pytest.raises(FileNotFoundError):
        with _download_hint(cranfield):
            raise FileNotFoundError("a local file is missing")


def test_quickstart_on_a_collection_without_splits(vaswani, tiny_bert_dir, tmp_path, capsys):
    output = tmp_path / "vaswani"
    cli.main(["quickstart", "--data", str(vaswani.path), "--output", str(output), "--model", str(tiny_bert_dir),
              "--student-layers", "1", "--fast", "--train-queries", "6", "--test-queries", "4", "--k", "5",
              "--k-train", "5", "--max-length", "32"])
    printed = capsys.readouterr().out
    assert "vaswani ships no train/test split: holding out 30%" in printed
    assert table_rows(output) == SYSTEMS
