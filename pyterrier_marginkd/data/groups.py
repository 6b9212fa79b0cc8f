"""Training examples: candidate lists + qrels -> groups (query, [positive, negative_1..k]) with labels."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable, Protocol

import numpy as np
import pandas as pd

from pyterrier_marginkd.data.frames import check_id_columns, check_text_column, validate_results

NEGATIVE_SAMPLING = ("random", "top")


@dataclass
class Group:
    """One training example: a query, its positive passage first, then negatives; labels graded from qrels
    (None when unknown) and teacher scores (None until the teacher has scored the group)."""

    qid: str
    query: str
    docnos: list[str]
    texts: list[str]
    labels: list[float] | None
    teacher: list[float] | None = None
    #: each document's normalised first-stage score (for students that mix it in; None when not needed)
    first_stage: list[float] | None = None
    #: whether the labels are judgements (qrels, docpairs); False when the teacher's ranking picked the positive
    judged: bool = True


class GroupSource(Protocol):
    """Where the Distiller's training groups come from: candidates + qrels, teacher-score files, docpairs..."""

    report: dict

    def groups(self, epoch: int) -> Iterable[Group]:
        """The epoch's groups in training order (deterministic for a seed and epoch; may be streamed)."""

    def num_groups(self) -> int:
        """Number of groups per epoch."""


@dataclass
class _Query:
    qid: str
    query: str
    docnos: list[str]
    texts: list[str]
    labels: np.ndarray | None  #: each candidate's qrels label (None for a teacher-ranked query)
    positives: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    teacher: np.ndarray | None = None  #: each candidate's teacher score (teacher-ranked queries)


def validate_qrels(qrels: pd.DataFrame) -> pd.DataFrame:
    """Check qrels columns and types; return them with string ids (of any type: ``1`` and ``"1"`` match) and
    finite numeric labels."""
    if not isinstance(qrels, pd.DataFrame):
        raise TypeError(f"qrels must be a DataFrame with columns qid, docno, label; got {type(qrels).__name__}")
    missing = [c for c in ("qid", "docno", "label") if c not in qrels.columns]
    if missing:
        raise KeyError(f"qrels are missing column(s) {missing}; expected qid, docno, label "
                       f"(found {list(qrels.columns)})")
    check_id_columns(qrels)
    labels = pd.to_numeric(qrels["label"], errors="coerce")
    bad = ~np.isfinite(labels.to_numpy(dtype=float))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"qrels label of row {row} (qid={qrels['qid'].iloc[row]!r}, "
                         f"docno={qrels['docno'].iloc[row]!r}) is not a finite number: {qrels['label'].iloc[row]!r}")
    return pd.DataFrame({"qid": qrels["qid"].astype(str), "docno": qrels["docno"].astype(str), "label": labels})


def validate_training_results(results: pd.DataFrame, text_field: str) -> None:
    """Check that training candidates are a non-empty result frame with ids, queries and texts."""
    validate_results(results, text_field)
    if len(results) == 0:
        raise ValueError("the training results are empty: the first stage returned no candidates")
    check_id_columns(results)
    check_text_column(results, text_field)
    check_text_column(results, "query")


class TrainingExamples:
    """Training groups built from first-stage candidate lists and qrels.

    Positives are candidates judged relevant (label > 0); negatives are candidates not judged relevant (label <= 0
    or unjudged) — or, with ``graded=True``, any candidate with a lower grade than the positive. Each epoch pairs
    every positive with ``num_negatives`` negatives drawn ``"random"``-ly or from the ``"top"`` of the candidate
    list. Queries without a positive (or without a negative) among their candidates are counted and skipped.
    """

    def __init__(self, results: pd.DataFrame, qrels: pd.DataFrame, *, num_negatives: int = 1,
                 negative_sampling: str = "random", graded: bool = False, text_field: str = "text", seed: int = 0,
                 allow_empty: bool = False):
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {negative_sampling!r}")
        validate_training_results(results, text_field)
        qrels = validate_qrels(qrels)
        self.num_negatives = num_negatives
        self.negative_sampling = negative_sampling
        self.graded = graded
        self.seed = seed

        results = results.assign(qid=results["qid"].astype(str), docno=results["docno"].astype(str))
        duplicates = int(results.duplicated(["qid", "docno"]).sum())
        results = results.drop_duplicates(["qid", "docno"])
        if "rank" in results.columns:
            results = results.sort_values(["qid", "rank"], kind="stable")
        elif "score" in results.columns:
            results = results.sort_values(["qid", "score"], ascending=[True, False], kind="stable")
        result_qids = set(results["qid"])
        qrels_qids = set(qrels["qid"])
        if not len(qrels):
            raise ValueError("the training qrels are empty: no training query has a positive (relevant) judgement to "
                             "learn from")
        if not result_qids & qrels_qids:
            raise ValueError(f"the qrels are for queries not in the results: none of the {len(result_qids)} result "
                             f"queries (e.g. {sorted(result_qids)[:3]}) has qrels (qrels qids e.g. "
                             f"{sorted(qrels_qids)[:3]}); pass the qrels of the same topics")
        unretrieved = sorted(qrels_qids - result_qids)
        if unretrieved:
            warnings.warn(f"{len(unretrieved)} of the {len(qrels_qids)} queries in the training qrels are not in the "
                          f"training results (e.g. {unretrieved[:3]}); their judgements are not used. Pass the qrels "
                          "of the training topics (or the topics of these qrels)", stacklevel=2)
        merged = results.merge(qrels, on=["qid", "docno"], how="left")
        merged["label"] = merged["label"].fillna(0.0)

        self.queries: list[_Query] = []
        no_positive, no_negative = [], []
        for qid, group in merged.groupby("qid", sort=False):
            labels = group["label"].to_numpy(dtype=float)
            query = _Query(str(qid), group["query"].iloc[0], group["docno"].tolist(), group[text_field].tolist(),
                           labels, np.flatnonzero(labels > 0))
            if len(query.positives) == 0:
                no_positive.append(query.qid)
            elif not any(len(self._negative_pool(query, p)) for p in query.positives):
                no_negative.append(query.qid)
            else:
                self.queries.append(query)
        self.report = {
            "queries": len(result_qids), "queries_used": len(self.queries),
            "skipped_no_positive": len(no_positive), "skipped_no_negative": len(no_negative),
            "duplicate_rows_dropped": duplicates, "qrels_queries_without_results": len(qrels_qids - result_qids),
            "positives": int(sum(len(q.positives) for q in self.queries)),
        }
        if not self.queries and not allow_empty:
            raise ValueError(f"no training query has a positive (qrels label > 0) and a negative among its "
                             f"{len(merged)} candidates ({len(no_positive)} queries without positives, "
                             f"{len(no_negative)} without negatives); retrieve more candidates or check the qrels")
        skipped = len(no_positive) + len(no_negative)
        if skipped and not allow_empty:
            warnings.warn(f"{skipped} of {len(result_qids)} training queries skipped: {len(no_positive)} have no "
                          f"relevant document among the candidates (e.g. {no_positive[:3]}), {len(no_negative)} no "
                          "non-relevant one", stacklevel=2)

    def _negative_pool(self, query: _Query, positive: int) -> np.ndarray:
        if self.graded:
            return np.flatnonzero(query.labels < query.labels[positive])
        return np.flatnonzero(query.labels <= 0)

    def groups(self, epoch: int = 0) -> list[Group]:
        """The epoch's groups in training order (deterministic for a seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        out = []
        for query in self.queries:
            for pos in query.positives:
                pool = self._negative_pool(query, pos)
                if len(pool) == 0:
                    continue
                if self.negative_sampling == "top":
                    negs = pool[:self.num_negatives]
                    if len(negs) < self.num_negatives:
                        negs = np.resize(negs, self.num_negatives)
                else:
                    negs = rng.choice(pool, size=self.num_negatives, replace=len(pool) < self.num_negatives)
                idx = [int(pos)] + [int(n) for n in negs]
                out.append(Group(query.qid, query.query, [query.docnos[i] for i in idx],
                                 [query.texts[i] for i in idx], [float(query.labels[i]) for i in idx]))
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def num_groups(self) -> int:
        """Number of groups per epoch (one per positive that has at least one negative)."""
        return sum(1 for q in self.queries for p in q.positives if len(self._negative_pool(q, p)))


class TeacherRankedExamples:
    """Label-free training groups: the teacher's own ranking of each query's candidates picks the pairs.

    For each query, its ``num_positives`` top candidates by teacher score are positives, and negatives are drawn
    from the candidates ranked ``negative_start`` or lower (default: just below the positives). Queries that have
    qrels can keep them (``judged``: a :class:`TrainingExamples` over those queries), so judged queries and
    pseudo-queries mix in one fit. Groups carry the teacher scores, and labels 1 (positive) / 0 (negatives).
    """

    def __init__(self, results: pd.DataFrame, teacher_scores: dict[tuple[str, str], float], *,
                 num_positives: int = 1, negative_start: int | None = None, num_negatives: int = 1,
                 judged: TrainingExamples | None = None, text_field: str = "text", seed: int = 0):
        if num_positives < 1 or num_negatives < 1:
            raise ValueError(f"num_positives and num_negatives must be >= 1, got {num_positives}, {num_negatives}")
        self.num_positives = num_positives
        self.negative_start = num_positives if negative_start is None else negative_start
        if self.negative_start < 1:
            raise ValueError(f"negative_start must be >= 1 (rank 0 is the teacher's top), got {negative_start}")
        self.num_negatives = num_negatives
        self.judged = judged
        self.seed = seed
        judged_qids = {q.qid for q in judged.queries} if judged is not None else set()
        results = results.assign(qid=results["qid"].astype(str), docno=results["docno"].astype(str))
        results = results.drop_duplicates(["qid", "docno"])
        self.queries: list[_Query] = []
        too_short = 0
        for qid, group in results.groupby("qid", sort=False):
            if qid in judged_qids:
                continue
            scores = np.array([teacher_scores[qid, d] for d in group["docno"]], dtype=float)
            order = np.argsort(-scores, kind="stable")
            if len(order) <= self.negative_start:
                too_short += 1
                continue
            self.queries.append(_Query(qid, group["query"].iloc[0], group["docno"].to_numpy()[order].tolist(),
                                       group[text_field].to_numpy()[order].tolist(), None,
                                       np.arange(min(num_positives, len(order) - 1)), teacher=scores[order]))
        self.report = {"teacher_ranked_queries": len(self.queries), "judged_queries": len(judged_qids),
                       "skipped_too_few_candidates": too_short}
        if judged is not None:
            self.report.update({f"judged_{k}": v for k, v in judged.report.items()})
        if not self.queries and judged is None:
            raise ValueError(f"no query has more than {self.negative_start} candidates: label-free training needs "
                             "candidates below the teacher's positives to use as negatives")

    def _pool(self, query: _Query, positive: int) -> np.ndarray:
        return np.arange(max(self.negative_start, positive + 1), len(query.docnos))

    def groups(self, epoch: int = 0) -> list[Group]:
        """The epoch's groups (teacher-ranked and judged) in training order."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        out = list(self.judged.groups(epoch)) if self.judged is not None else []
        for query in self.queries:
            for pos in query.positives:
                pool = self._pool(query, int(pos))
                negs = rng.choice(pool, size=self.num_negatives, replace=len(pool) < self.num_negatives)
                idx = [int(pos)] + [int(n) for n in negs]
                out.append(Group(query.qid, query.query, [query.docnos[i] for i in idx],
                                 [query.texts[i] for i in idx], [1.0] + [0.0] * len(negs),
                                 [float(query.teacher[i]) for i in idx], judged=False))
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def num_groups(self) -> int:
        """Number of groups per epoch."""
        own = sum(len(q.positives) for q in self.queries)
        return own + (self.judged.num_groups() if self.judged is not None else 0)


class AnnotatedGroups:
    """A group source whose groups get per-(qid, docno) values computed over whole candidate lists: the teacher's
    scores (a teacher that normalises per query, such as a fused one) and/or the normalised first-stage scores."""

    def __init__(self, source: GroupSource, *, teacher: dict[tuple[str, str], float] | None = None,
                 first_stage: dict[tuple[str, str], float] | None = None):
        self.source = source
        self.teacher = teacher
        self.first_stage = first_stage
        self.report = source.report

    @property
    def has_teacher_scores(self) -> bool:
        return self.teacher is not None

    def num_groups(self) -> int:
        return self.source.num_groups()

    def groups(self, epoch: int) -> Iterable[Group]:
        for group in self.source.groups(epoch):
            if self.teacher is not None:
                group.teacher = [self._value(self.teacher, "teacher score", group.qid, d) for d in group.docnos]
            if self.first_stage is not None:
                group.first_stage = [self._value(self.first_stage, "first-stage score", group.qid, d)
                                     for d in group.docnos]
            yield group

    @staticmethod
    def _value(values: dict[tuple[str, str], float], what: str, qid: str, docno: str) -> float:
        try:
            return values[qid, docno]
        except KeyError:
            raise ValueError(f"no {what} for (qid, docno)=({qid!r}, {docno!r}): the training groups hold a document "
                             "that is not among the query's candidates") from None
