"""The validation measure (FixedRowsNDCG10; per query and mean) equals trec_eval's (through ir_measures), ties and
graded labels included."""
from __future__ import annotations

import ir_measures
import numpy as np
import pandas as pd
import pytest
from ir_measures import nDCG

from pyterrier_marginkd.data.evaluation import FixedRowsNDCG10, evaluate_ndcg10, per_query_ndcg10


def trec_eval_ndcg10(qids, docnos, scores, qrels, queries) -> np.ndarray:
    values = dict.fromkeys(queries, 0.0)
    run = pd.DataFrame({"query_id": qids, "doc_id": docnos, "score": scores})
    judged = pd.DataFrame({"query_id": qrels["qid"], "doc_id": qrels["docno"], "relevance": qrels["label"]})
    for m in ir_measures.iter_calc([nDCG @ 10], judged, run):
        values[m.query_id] = m.value
    return np.array([values[q] for q in queries])


@pytest.mark.parametrize("seed", range(5))
def test_equals_trec_eval_with_ties_and_grades(seed):
    rng = np.random.default_rng(seed)
    rows, qrels = [], []
    for q in range(30):
        docs = [f"d{j}" for j in rng.choice(200, size=int(rng.integers(1, 40)), replace=False)]  # "d10" < "d9"
        rows += [(f"q{q}", d) for d in docs]
        if q % 7 == 3:
            continue  # a query with results and no judgements
        judged = rng.choice(docs + [f"x{q}-{i}" for i in range(5)], size=min(len(docs), 8), replace=False)
        # graded, some judged non-relevant, some relevant documents never retrieved; q1 none relevant
        qrels += [(f"q{q}", d, 0 if q == 1 else int(rng.integers(-1, 4))) for d in judged]
    qrels.append(("q99", "d1", 2))  # a judged query without results
    qrels = pd.DataFrame(qrels, columns=["qid", "docno", "label"])
    qids, docnos = [r[0] for r in rows], [r[1] for r in rows]
    queries = sorted(set(qrels["qid"]))
    ndcg = FixedRowsNDCG10(qids, docnos, qrels, queries)
    for scores in (rng.normal(size=len(rows)), rng.integers(0, 3, size=len(rows)).astype(float),
                   np.zeros(len(rows))):
        np.testing.assert_allclose(ndcg(scores), trec_eval_ndcg10(qids, docnos, scores, qrels, queries),
                                   rtol=0, atol=1e-12)


def test_rows_of_other_queries_are_ignored():
    qrels = pd.DataFrame({"qid": ["a"], "docno": ["d2"], "label": [1]})
    ndcg = FixedRowsNDCG10(["a", "a", "b", "b"], ["d1", "d2", "d2", "d1"], qrels, ["a"])
    np.testing.assert_allclose(ndcg([1.0, 0.0, 5.0, 9.0]), [1 / np.log2(3)])
    np.testing.assert_allclose(ndcg([0.0, 1.0, 5.0, 9.0]), [1.0])


def test_fractional_labels_count_as_their_whole_part():
    """Labels reach trec_eval as whole numbers elsewhere in the package (``evaluate_ndcg10``): the same here."""
    qids, docnos = ["a"] * 3, ["d1", "d2", "d3"]
    scores = [3.0, 2.0, 1.0]
    fractional = pd.DataFrame({"qid": "a", "docno": ["d1", "d2", "d3"], "label": [0.5, 2.7, 1.2]})
    whole = fractional.assign(label=[0, 2, 1])
    np.testing.assert_allclose(FixedRowsNDCG10(qids, docnos, fractional, ["a"])(scores),
                               FixedRowsNDCG10(qids, docnos, whole, ["a"])(scores))
    np.testing.assert_allclose(FixedRowsNDCG10(qids, docnos, whole, ["a"])(scores),
                               trec_eval_ndcg10(qids, docnos, scores, whole, ["a"]), atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_per_query_and_mean_equal_trec_eval(seed):
    """The validation measure, per query and mean, through ``FixedRowsNDCG10``: equal to ir_measures on runs with
    ties, graded and negative labels, a judged query without a relevant document and a (qid, docno) given twice."""
    rng = np.random.default_rng(seed)
    run = pd.DataFrame([(f"q{q}", f"d{j}", float(rng.integers(0, 4)))
                        for q in range(12) for j in rng.choice(60, size=int(rng.integers(1, 30)), replace=False)],
                       columns=["qid", "docno", "score"])
    run = pd.concat([run, run.iloc[:3].assign(score=9.0)], ignore_index=True)  # given twice: the last score counts
    qrels = pd.DataFrame([(f"q{q}", f"d{j}", 0 if q == 2 else int(rng.integers(-1, 3)))
                          for q in range(14) if q != 5 for j in rng.choice(60, size=10, replace=False)],
                         columns=["qid", "docno", "label"])
    as_ir = {"qid": "query_id", "docno": "doc_id", "label": "relevance"}
    unretrieved = qrels[qrels["qid"] == "q13"]
    qrels = qrels[qrels["qid"].isin(set(run["qid"]))]  # (trec_eval would report q12 and q13 too: 0 without results)
    reference = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ 10], qrels.rename(columns=as_ir),
                                                                    run.rename(columns=as_ir))}
    values = per_query_ndcg10(run, qrels)
    assert list(values.index) == sorted(reference) and "q5" not in reference  # the run's judged queries
    np.testing.assert_allclose(values.to_numpy(), [reference[q] for q in values.index], rtol=0, atol=1e-12)
    aggregate = ir_measures.calc_aggregate([nDCG @ 10], qrels.rename(columns=as_ir), run.rename(columns=as_ir))
    assert abs(evaluate_ndcg10(run, qrels) - aggregate[nDCG @ 10]) < 1e-12
    assert np.isnan(evaluate_ndcg10(run, qrels.iloc[:0]))
    assert len(unretrieved) and per_query_ndcg10(run, unretrieved).empty  # a judged query without results: no row
