"""IDCM: an intra-document cascade for long documents — a fast selector picks the passages a slow scorer reads."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_marginkd.data.frames import (
    RecordsTransformer,
    add_scores,
    check_id_columns,
    check_text_column,
    pair_keys,
    valid_unicode,
    validate_results,
)
from pyterrier_marginkd.data.groups import Group

AGGREGATES = ("max", "first-k")


class Cascade(RecordsTransformer, pt.Transformer):
    """Intra-document cascade (IDCM) as one re-ranker: ``score(d) = agg(scorer(p) for p in top_k(selector, d))``.

    Each document is split into passages (``pt.text.sliding``: ``passage_length`` words every ``stride`` words,
    ``title_field`` prepended to each passage when given); the fast ``selector`` scores the passages of every
    document that has more than ``k`` (a document with at most ``k`` passages needs no selection), only the
    selector's top ``k`` passages of each document go to the expensive ``scorer``, and their scores make the
    document's score: ``"max"`` (the best selected passage) or ``"first-k"`` (the mean over the k selected).
    Returns the input rows with ``score`` and ``rank``, every other column kept.

    The selector can be distilled from the scorer: see :meth:`selector_groups`. References: Hofstätter, Mitra,
    Zamani, Craswell and Hanbury, "Intra-Document Cascading: Learning to Select Passages for Neural Document
    Ranking" (SIGIR 2021).

    Example::

        cascade = Cascade(student, teacher, k=3, passage_length=64, stride=32)
        pipe = bm25 >> collection.get_text() >> cascade
    """

    schematic_label = "Cascade"

    def __init__(self, selector: pt.Transformer, scorer: pt.Transformer, *, k: int = 4, passage_length: int = 150,
                 stride: int = 75, aggregate: str = "max", text_field: str = "text", title_field: str | None = None):
        if k < 1:
            raise ValueError(f"k (passages scored per document) must be >= 1, got {k}")
        if passage_length < 1 or stride < 1:
            raise ValueError(f"passage_length and stride must be >= 1, got {passage_length} and {stride}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        self.selector = selector
        self.scorer = scorer
        self.k = k
        self.passage_length = passage_length
        self.stride = stride
        self.aggregate = aggregate
        self.text_field = text_field
        self.title_field = title_field

    # --- PyTerrier ---------------------------------------------------------------------------------------
    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Score each (query, document) row by its selected passages; return the rows with ``score`` and ``rank``."""
        validate_results(inp, self.text_field, self)
        if len(inp) == 0:
            return add_scores(inp, np.zeros(0))
        passages = self.passages(inp)
        selected = self._select(passages)
        scored = self._run(self.scorer, selected, "scorer")
        agg = "max" if self.aggregate == "max" else "mean"
        doc_scores = scored.groupby(["qid", "parent_docno"], sort=False)["score"].agg(agg)
        return add_scores(inp, doc_scores.reindex(pair_keys(inp)).to_numpy(dtype=float))

    def subtransformers(self) -> dict[str, pt.Transformer]:
        return {"selector": self.selector, "scorer": self.scorer}

    def schematic(self, *, input_columns=None):
        return {"label": self.schematic_label, "help_url": None}

    def __repr__(self) -> str:
        return (f"Cascade({self.selector!r}, {self.scorer!r}, k={self.k}, passage_length={self.passage_length}, "
                f"stride={self.stride}, aggregate={self.aggregate!r})")

    # --- passages --------------------------------------------------------------------------------------------
    def passages(self, results: pd.DataFrame) -> pd.DataFrame:
        """The passages of each distinct (qid, docno): ``qid, query, docno`` (``<docno>%p<i>``), the text field,
        ``parent_docno`` and ``passage`` (its position in the document)."""
        validate_results(results, self.text_field, self)
        check_id_columns(results)
        check_text_column(results, "query")  # pt.text.sliding would silently turn a missing query into ""
        check_text_column(results, self.text_field)
        columns = ["qid", "query", "docno", self.text_field] + ([self.title_field] if self.title_field else [])
        missing = [c for c in columns if c not in results.columns]
        if missing:
            raise KeyError(f"{self!r} needs column(s) {missing}; add them with collection.get_text([...])")
        # lone surrogates (valid in a Python str, not in UTF-8) would stop pandas' pyarrow-backed strings in
        # pt.text.sliding; the scorers would replace them anyway
        docs = results[columns].assign(qid=results["qid"].astype(str), docno=results["docno"].astype(str),
                                       **{c: results[c].map(valid_unicode) for c in ("query", self.text_field)})
        docs = docs.drop_duplicates(["qid", "docno"])
        # the title is prepended here rather than by pt.text.sliding (whose prepend_attr fails on short documents)
        sliding = pt.text.sliding(text_attr=self.text_field, length=self.passage_length, stride=self.stride,
                                  prepend_attr=None)
        out = sliding(docs[["qid", "query", "docno", self.text_field]])
        parent_passage = out["docno"].str.rsplit("%p", n=1, expand=True)
        out = out.assign(parent_docno=parent_passage[0], passage=parent_passage[1].astype(int))
        if self.title_field:
            titles = dict(zip(zip(docs["qid"], docs["docno"]), docs[self.title_field].fillna("").astype(str)))
            out[self.text_field] = [f"{titles[q, d]} {text}" for q, d, text in
                                    zip(out["qid"], out["parent_docno"], out[self.text_field])]
        return out.reset_index(drop=True)

    def _select(self, passages: pd.DataFrame) -> pd.DataFrame:
        """The selector's top ``k`` passages of each document (all passages of documents with at most ``k``)."""
        counts = passages.groupby(["qid", "parent_docno"], sort=False)["passage"].transform("size")
        long = counts > self.k
        if not long.any():
            return passages
        chosen = self._run(self.selector, passages[long], "selector")
        chosen = chosen.sort_values(["qid", "parent_docno", "score", "passage"], ascending=[True, True, False, True],
                                    kind="stable")
        chosen = chosen[chosen.groupby(["qid", "parent_docno"], sort=False).cumcount() < self.k]
        return pd.concat([passages[~long], chosen.drop(columns=["score"])], ignore_index=True)

    def _run(self, stage: pt.Transformer, passages: pd.DataFrame, role: str) -> pd.DataFrame:
        """``passages`` with the ``score`` that ``stage`` gives each of them (matched by qid and passage docno)."""
        inp = passages[["qid", "query", "docno", self.text_field]]
        out = stage(inp)
        if not isinstance(out, pd.DataFrame) or "score" not in out.columns:
            raise ValueError(f"the cascade's {role} {stage!r} must return a frame with a 'score' column")
        scores = dict(zip(zip(out["qid"].astype(str), out["docno"].astype(str)), out["score"].astype(float)))
        values = [scores.get(key) for key in zip(passages["qid"], passages["docno"])]
        if any(v is None for v in values):
            lost = sum(v is None for v in values)
            raise ValueError(f"the cascade's {role} {stage!r} dropped {lost} of the {len(passages)} passages it was "
                             "given; it must score every row")
        return passages.assign(score=np.asarray(values, dtype=float))

    # --- training the selector -------------------------------------------------------------------------------
    def selector_groups(self, results: pd.DataFrame, *, group_size: int = 4, seed: int = 0) -> PassageGroups:
        """Training groups that distil the scorer's passage ranking into the selector (IDCM's selector training).

        Runs the scorer once on every passage of ``results`` (first-stage results with text); each document with
        at least two passages becomes a group: the scorer's best passage first, then ``group_size - 1`` other
        passages of the same document, the scorer's scores as teacher scores. No qrels are needed::

            groups = cascade.selector_groups(train_results)
            Distiller(cascade.selector, cascade.scorer, loss=losses.KLDiv()).fit_groups(groups)
        """
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a passage to rank above others), got {group_size}")
        passages = self._run(self.scorer, self.passages(results), "scorer")
        return PassageGroups(passages, group_size=group_size, seed=seed, text_field=self.text_field)


class PassageGroups:
    """Groups of passages of one document each, scored by a teacher: a ``GroupSource`` for ``Distiller``."""

    def __init__(self, passages: pd.DataFrame, *, group_size: int, seed: int = 0, text_field: str = "text"):
        self.group_size = group_size
        self.seed = seed
        self.documents: list[tuple[str, str, list[str], list[str], np.ndarray]] = []
        by_doc = passages.groupby(["qid", "parent_docno"], sort=True)
        for (qid, _), doc in by_doc:
            if len(doc) < 2:
                continue
            order = np.argsort(-doc["score"].to_numpy(dtype=float), kind="stable")
            doc = doc.iloc[order]
            self.documents.append((str(qid), doc["query"].iloc[0], doc["docno"].tolist(), doc[text_field].tolist(),
                                   doc["score"].to_numpy(dtype=float)))
        self.report = {"documents": by_doc.ngroups, "documents_used": len(self.documents),
                       "skipped_single_passage": by_doc.ngroups - len(self.documents),
                       "passages_scored": len(passages)}
        if not self.documents:
            raise ValueError(f"none of the {by_doc.ngroups} documents has two passages to rank; use a shorter "
                             "passage_length or stride, or longer documents")

    def groups(self, epoch: int = 0) -> list[Group]:
        """The epoch's groups in training order (deterministic for a seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        out = []
        for qid, query, docnos, texts, scores in self.documents:
            others = np.arange(1, len(docnos))
            size = self.group_size - 1
            picked = rng.choice(others, size=size, replace=len(others) < size)
            idx = [0] + [int(i) for i in picked]
            out.append(Group(qid, query, [docnos[i] for i in idx], [texts[i] for i in idx], None,
                             [float(scores[i]) for i in idx]))
        return [out[i] for i in rng.permutation(len(out))]

    def num_groups(self) -> int:
        """Number of groups per epoch (one per document with at least two passages)."""
        return len(self.documents)
