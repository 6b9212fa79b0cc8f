"""report(): one pt.Experiment, a Markdown/CSV table with significance, size and speed, and a quality/latency PNG."""
from __future__ import annotations

import sys

import pandas as pd
import pyterrier as pt
import pytest
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.report import CSV_FILE, PLOT_FILE, TABLE_FILE, last_neural_scorer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def test_data(cranfield):
    return cranfield.topics("test").head(6), cranfield.qrels("test")


@pytest.fixture()
def systems(cranfield, cranfield_bm25, tiny_bert_dir):
    torch.manual_seed(0)
    small = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, num_layers=1, max_length=64)
    big = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    candidates = cranfield_bm25 % 8
    return {"BM25": candidates, "tiny L2": candidates >> cranfield.get_text() >> big,
            "tiny L1": candidates >> cranfield.get_text() >> small}


def test_report_writes_table_csv_and_png(systems, test_data, tmp_path):
    topics, qrels = test_data
    table = mkd.report(systems, topics, qrels, tmp_path / "out", baseline="BM25")

    assert list(table["name"]) == list(systems)
    png = (tmp_path / "out" / PLOT_FILE).read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    csv = pd.read_csv(tmp_path / "out" / CSV_FILE)
    assert list(csv["name"]) == list(systems)
    for column in ("nDCG@10", "RR@10", "AP@100", "nDCG@10 p-value", "params", "pairs", "pairs/s", "mrt"):
        assert column in csv.columns
    lines = (tmp_path / "out" / TABLE_FILE).read_text().splitlines()
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == len(systems)
    assert rows[0].startswith("| BM25 |") and "significantly different from BM25" in lines[-1]

    bm25, big, small = (table.iloc[i] for i in range(3))
    assert pd.isna(bm25["params"]) and pd.isna(bm25["pairs/s"])
    assert big["params"] == systems["tiny L2"][-1].num_parameters() > small["params"]
    assert big["pairs"] == small["pairs"] == 8 * len(topics)
    assert big["pairs/s"] > 0 and (table["mrt"] > 0).all()
    assert pd.isna(bm25["nDCG@10 p-value"]) and 0 <= big["nDCG@10 p-value"] <= 1
    # the scorers are left as they were
    assert "score_pairs" not in vars(systems["tiny L2"][-1])


def test_report_of_a_list_without_baseline_or_plot(systems, test_data, tmp_path):
    topics, qrels = test_data
    table = mkd.report(list(systems.values())[:2], topics, qrels, tmp_path, names=["a", "b"], baseline=None,
                       plot=False, measures=["nDCG@5"])
    assert list(table["name"]) == ["a", "b"] and "nDCG@5" in table.columns
    assert not any(c.endswith("p-value") for c in table.columns)
    assert not (tmp_path / PLOT_FILE).exists() and (tmp_path / TABLE_FILE).exists()


def test_report_hands_back_each_run_for_further_comparisons(systems, test_data, tmp_path):
    topics, qrels = test_data
    calls = []
    counted = {**systems, "counted": systems["tiny L1"] >> pt.apply.generic(lambda res: calls.append(1) or res)}
    runs = {}
    table = mkd.report(counted, topics, qrels, tmp_path, baseline=None, plot=False, runs=runs)
    assert list(runs) == list(counted) and len(calls) == 1
    for name, run in runs.items():
        assert set(run["qid"]) <= set(topics["qid"]) and {"docno", "score"} <= set(run.columns), name
    # the frames evaluate as the systems did, without running them again
    again = pt.Experiment(list(runs.values()), topics, qrels, [pt.measures.nDCG @ 10], names=list(runs))
    assert again["nDCG@10"].tolist() == pytest.approx(table["nDCG@10"].tolist())
    assert len(calls) == 1
    with pytest.raises(TypeError, match="runs must be a dict"):
        mkd.report(systems, topics, qrels, tmp_path, plot=False, runs=[])


def test_missing_matplotlib_names_the_extra_before_any_work(test_data, tmp_path, monkeypatch):
    topics, qrels = test_data
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    def never(_):
        raise AssertionError("a system ran although the report could not be written")
    with pytest.raises(ImportError, match=r"pip install pyterrier-marginkd\[plot\]"):
        mkd.report({"x": pt.apply.generic(never)}, topics, qrels, tmp_path)


def test_bad_arguments_are_named(systems, test_data, tmp_path):
    topics, qrels = test_data
    with pytest.raises(KeyError, match="baseline 'nope'"):
        mkd.report(systems, topics, qrels, tmp_path, baseline="nope")
    with pytest.raises(ValueError, match="used twice"):
        mkd.report(list(systems.values())[:2], topics, qrels, tmp_path, names=["a", "a"])
    with pytest.raises(ValueError, match="2 names for 3 systems"):
        mkd.report(list(systems.values()), topics, qrels, tmp_path, names=["a", "b"])
    with pytest.raises(TypeError, match="not a pt.Transformer"):
        mkd.report({"a": "BM25"}, topics, qrels, tmp_path)


def test_last_neural_scorer_looks_inside_pipelines(systems, tiny_ce):
    big = systems["tiny L2"]
    assert last_neural_scorer(systems["BM25"]) is None
    assert last_neural_scorer(big) is big[-1]
    assert last_neural_scorer(big >> tiny_ce % 3) is tiny_ce
    assert last_neural_scorer(systems["BM25"] >> mkd.Distiller(tiny_ce, loss=mkd.losses.RankNet())) is tiny_ce


def test_evaluate_command_writes_a_report(cranfield, tiny_bert_dir, tmp_path, capsys):
    cli.main(["evaluate", "--data", str(cranfield.path), "--k", "5", "--num-queries", "3", "--output", str(tmp_path),
              "--report", str(tmp_path / "report"), str(tiny_bert_dir), "--names", "tiny"])
    assert "| tiny |" in capsys.readouterr().out
    assert list(pd.read_csv(tmp_path / "report" / CSV_FILE)["name"]) == ["BM25", "tiny"]
    assert (tmp_path / "report" / PLOT_FILE).read_bytes().startswith(PNG_MAGIC)


def test_plot_labels_of_close_systems_do_not_overlap(tmp_path):
    pytest.importorskip("matplotlib")
    from pyterrier_marginkd.report import _overlap, plot_quality_latency

    # four systems within 0.003 nDCG and 0.2 ms of each other: side by side labels would print on top of each other
    table = pd.DataFrame({"name": ["BM25", "student L2 (Margin-MSE)", "student L4 (Margin-MSE)",
                                   "student L2 (labels only)", "teacher BM25 + MiniLM"],
                          "mrt": [0.2, 2.5, 2.6, 2.4, 7.3], "nDCG@10": [0.402, 0.426, 0.427, 0.425, 0.436]})
    boxes = plot_quality_latency(table, "nDCG@10", tmp_path / "plot.png", baseline="BM25")
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert sorted(name for name, _ in boxes) == sorted(table["name"])
    for i, (a_name, a) in enumerate(boxes):
        for b_name, b in boxes[i + 1:]:
            assert not _overlap(a, b), f"the labels of {a_name!r} and {b_name!r} overlap"
