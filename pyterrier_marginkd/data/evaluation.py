"""The validation measure: nDCG@10 of a run against qrels, as a mean or per query."""
from __future__ import annotations

import ir_measures
import pandas as pd
from ir_measures import nDCG


def evaluate_ndcg10(run: pd.DataFrame, qrels: pd.DataFrame) -> float:
    """Mean nDCG@10 of a result frame against qrels (queries of the run only)."""
    qrels = qrels[qrels["qid"].astype(str).isin(set(run["qid"].astype(str)))]
    result = ir_measures.calc_aggregate(
        [nDCG @ 10],
        pd.DataFrame({"query_id": qrels["qid"].astype(str), "doc_id": qrels["docno"].astype(str),
                      "relevance": qrels["label"].astype(int)}),
        pd.DataFrame({"query_id": run["qid"].astype(str), "doc_id": run["docno"].astype(str),
                      "score": run["score"].astype(float)}))
    return float(result[nDCG @ 10])


def per_query_ndcg10(run: pd.DataFrame, qrels: pd.DataFrame) -> pd.Series:
    """nDCG@10 of each judged query of a result frame (index: qid as a string; a judged query without results is 0)."""
    qrels = qrels[qrels["qid"].astype(str).isin(set(run["qid"].astype(str)))]
    judged = sorted(set(qrels["qid"].astype(str)))
    values = dict.fromkeys(judged, 0.0)
    for m in ir_measures.iter_calc(
            [nDCG @ 10],
            pd.DataFrame({"query_id": qrels["qid"].astype(str), "doc_id": qrels["docno"].astype(str),
                          "relevance": qrels["label"].astype(int)}),
            pd.DataFrame({"query_id": run["qid"].astype(str), "doc_id": run["docno"].astype(str),
                          "score": run["score"].astype(float)})):
        values[m.query_id] = float(m.value)
    return pd.Series(values, dtype=float)
