"""The validation measure: mean nDCG@10 of a run against qrels."""
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
