"""The hand-run example scripts work end to end (tiny models, few queries): every stage, the table, the reuse."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_distill_cranfield_example_runs_every_stage_and_reuses_them(cranfield, tiny_bert_dir, tmp_path):
    out = tmp_path / "kd"
    cmd = [sys.executable, str(ROOT / "examples" / "distill_cranfield.py"), "--data", str(cranfield.path),
           "--model", str(tiny_bert_dir), "--output", str(out), "--num-queries", "14", "--valid-queries", "4",
           "--k-train", "8", "--k", "8", "--max-length", "64", "--epochs", "1", "--teacher-epochs", "1",
           "--pretrain-queries", "24", "--pretrain-lr", "1e-3", "--lr", "1e-3", "--student-lr", "1e-3"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("teacher-pretrain", "teacher", "student-labels", "student-marginmse"):
        assert (out / stage / "student" / "marginkd.json").exists() and (out / stage / "done.json").exists()
    table = pd.read_csv(out / "results.csv")
    assert table["name"].tolist() == ["BM25", "MiniLM-L6 CE (title pseudo-queries only)",
                                      "teacher: MiniLM-L6 CE (title pseudo-queries + labels)",
                                      "student L2: labels only", "student L2: Margin-MSE"]
    assert table["nDCG@10"].between(0, 1).all() and table["nDCG@10 p-value"].iloc[1:].notna().all()
    versus = (out / "results-students.md").read_text()
    assert "student L2: labels only" in versus and "student L2: Margin-MSE" in versus and "p-value" in versus
    # the students start from the teacher's first layers: 2 of its layers, its vocabulary
    assert '"num_hidden_layers": 2' in (out / "student-labels" / "student" / "config.json").read_text()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing") == 4


def test_distill_example_on_a_collection_without_titles_or_splits(vaswani, tiny_bert_dir, tmp_path):
    out = tmp_path / "vaswani"
    cmd = [sys.executable, str(ROOT / "examples" / "distill_cranfield.py"), "--data", str(vaswani.path),
           "--model", str(tiny_bert_dir), "--output", str(out), "--num-queries", "10", "--valid-queries", "3",
           "--k-train", "6", "--k", "6", "--max-length", "48", "--epochs", "1", "--teacher-epochs", "1",
           "--pretrain-queries", "16", "--student-layers", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    names = pd.read_csv(out / "results.csv")["name"].tolist()
    assert names[1:3] == ["MiniLM-L6 CE (first_sentence pseudo-queries only)",
                          "teacher: MiniLM-L6 CE (first_sentence pseudo-queries + labels)"]
