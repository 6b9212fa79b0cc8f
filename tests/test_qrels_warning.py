"""Training qrels that judge queries absent from the training results are reported with a warning (the
count and examples) instead of passing silently."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest
from conftest import CountingTeacher

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data import TrainingExamples


def _qrels(extra: int) -> pd.DataFrame:
    qids = ["q1", "q2"] + [f"other{i}" for i in range(extra)]
    return pd.DataFrame({"qid": qids, "docno": ["d1", "d4"] + ["dx"] * extra, "label": [1] * len(qids)})


def test_qrels_of_queries_not_in_the_results_are_warned_about(small_results):
    with pytest.warns(UserWarning, match=r"5 of the 7 queries in the training qrels are not in the training results "
                                         r"\(e.g. \['other0', 'other1', 'other2'\]\)") as caught:
        examples = TrainingExamples(small_results, _qrels(5))
    assert examples.report["qrels_queries_without_results"] == 5
    assert len([w for w in caught if "training qrels" in str(w.message)]) == 1


def test_matching_qrels_give_no_warning(small_results):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainingExamples(small_results, _qrels(0))


def test_the_distiller_passes_the_warning_on(small_results, tiny_ce, tmp_path):
    distiller = mkd.Distiller(tiny_ce, CountingTeacher(), output_dir=tmp_path / "run")
    with pytest.warns(UserWarning, match="1 of the 3 queries in the training qrels"):
        distiller.examples(small_results, _qrels(1))
    label_free = mkd.Distiller(tiny_ce, CountingTeacher(), unjudged="teacher", output_dir=tmp_path / "lf")
    with pytest.warns(UserWarning, match="1 of the 3 queries in the training qrels"):
        label_free.examples(small_results, _qrels(1))
