"""The validation measure: nDCG@10 of a run against qrels, as a mean or per query, as trec_eval computes it (one
implementation, :class:`FixedRowsNDCG10`, tested against ir_measures)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def evaluate_ndcg10(run: pd.DataFrame, qrels: pd.DataFrame) -> float:
    """Mean nDCG@10 of a result frame against qrels over its judged queries (NaN when none is judged)."""
    values = per_query_ndcg10(run, qrels)
    return float(values.mean()) if len(values) else float("nan")


def per_query_ndcg10(run: pd.DataFrame, qrels: pd.DataFrame) -> pd.Series:
    """nDCG@10 of each judged query of a result frame (index: qid as a string, sorted), as trec_eval computes it
    (:class:`FixedRowsNDCG10`; a (qid, docno) given twice counts once, with its last score, as trec_eval reads a
    run)."""
    run = run.assign(qid=run["qid"].astype(str), docno=run["docno"].astype(str))
    run = run.drop_duplicates(["qid", "docno"], keep="last")
    qrels = qrels[qrels["qid"].astype(str).isin(set(run["qid"]))]
    judged = sorted(set(qrels["qid"].astype(str)))
    values = FixedRowsNDCG10(run["qid"], run["docno"], qrels, judged)(run["score"].astype(float))
    return pd.Series(values, index=pd.Index(judged, dtype=object), dtype=float)


class FixedRowsNDCG10:
    """nDCG@10 per query of many score vectors over the same (qid, docno) rows, as trec_eval computes it (linear
    gains = labels as whole numbers, negative labels 0; ties broken by docno, the greater first; the ideal ranking
    from every judged document of the query): the rows, gains and ideal DCGs are prepared once, so each score vector
    costs one sort (``Ensemble.fit`` ranks the same candidates under dozens of weightings).

    ``queries``: the queries to report, in order; rows of other queries are ignored, and a query without rows or
    relevant documents gets 0."""

    def __init__(self, qids: Sequence, docnos: Sequence, qrels: pd.DataFrame, queries: Sequence[str]):
        self.queries = [str(q) for q in queries]
        position = {q: i for i, q in enumerate(self.queries)}
        qids = np.asarray([str(q) for q in qids], dtype=object)
        docnos = np.asarray([str(d) for d in docnos], dtype=object)
        codes = np.fromiter((position.get(q, -1) for q in qids), dtype=np.int64, count=len(qids))
        self._rows = np.flatnonzero(codes >= 0)
        self._codes = codes[self._rows]
        judged = qrels.assign(qid=qrels["qid"].astype(str), docno=qrels["docno"].astype(str))
        judged = judged[judged["qid"].isin(position)]
        gains = np.maximum(np.trunc(judged["label"].to_numpy(float)), 0.0)  # (trec_eval reads whole numbers)
        label = dict(zip(zip(judged["qid"], judged["docno"]), gains))
        self._gains = np.asarray([label.get((q, d), 0.0) for q, d in zip(qids[self._rows], docnos[self._rows])])
        # ties: the greater docno first (trec_eval); lexsort sorts ascending, so by the negated rank of the docno
        self._doc_key = -np.unique(docnos[self._rows], return_inverse=True)[1] if len(self._rows) else np.zeros(0)
        self._discount = 1.0 / np.log2(np.arange(2, 12))
        self._ideal = np.zeros(len(self.queries))
        for qid, rows in judged.assign(gain=gains).groupby("qid")["gain"]:
            top = np.sort(rows.to_numpy(float))[::-1][:10]
            self._ideal[position[qid]] = float((top * self._discount[:len(top)]).sum())

    def __call__(self, scores: Sequence[float]) -> np.ndarray:
        """nDCG@10 of each of ``queries`` when the rows are ranked by ``scores`` (one per row given at construction)."""
        values = np.asarray(scores, dtype=np.float64)[self._rows]
        order = np.lexsort((self._doc_key, -values, self._codes))
        codes = self._codes[order]
        rank = np.arange(len(codes)) - np.searchsorted(codes, codes, side="left")
        top = rank < 10
        dcg = np.bincount(codes[top], weights=self._gains[order][top] * self._discount[rank[top]],
                          minlength=len(self.queries))
        return np.divide(dcg, self._ideal, out=np.zeros(len(self.queries)), where=self._ideal > 0)
