"""Pseudo-queries made from a collection's documents, for the teacher to label when judged queries are scarce."""
from __future__ import annotations

import re
import warnings
from typing import Iterable

import numpy as np
import pandas as pd

from pyterrier_marginkd.data.collection import Collection, clean_query

METHODS = ("title", "first_sentence", "span")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def natural_method(has_titles: bool) -> str:
    """The pseudo-query method a collection offers by itself: its documents' titles, else their first sentences."""
    return "title" if has_titles else "first_sentence"


def _docs(docs: Iterable[dict] | str | Collection) -> Iterable[dict]:
    if isinstance(docs, Collection):
        return docs.docs_iter()
    if isinstance(docs, str):
        return Collection(docs).docs_iter()
    return docs


def pseudo_queries(docs: Iterable[dict] | str | Collection, method: str = "title", *, num: int | None = None,
                   seed: int = 0, min_words: int = 3, max_words: int = 16, span_words: tuple[int, int] = (4, 10),
                   qid_prefix: str = "pq") -> pd.DataFrame:
    """A topics frame (``qid, query, docno``) of pseudo-queries made from documents.

    Methods: ``"title"`` (the document's title), ``"first_sentence"`` (its first sentence) and ``"span"`` (a random
    span of ``span_words`` words, inverse-cloze style). Punctuation is stripped (it breaks query parsers), queries
    are cut to ``max_words``; empty or shorter than ``min_words`` ones are skipped and counted
    (``frame.attrs["skipped"]``). ``num`` keeps a seeded random sample. ``docno`` names the source document;
    qids are ``<qid_prefix>-<method>-<docno>``, which cannot clash with real (numeric or named) qids.
    ``docs`` is an iterable of dicts (``docno``, ``text``, optional ``title``), a Collection, or an ``irds:`` id.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pseudo-query method {method!r}; choose from {METHODS}")
    if not 1 <= span_words[0] <= span_words[1]:
        raise ValueError(f"span_words must be (low, high) with 1 <= low <= high, got {span_words}")
    rng = np.random.default_rng(seed)
    rows, skipped, seen, no_title = [], 0, 0, 0
    for doc in _docs(docs):
        seen += 1
        if "docno" not in doc:
            raise KeyError(f"document #{seen} has no 'docno' field (fields: {sorted(doc)})")
        text = doc.get("text")
        if method == "title":
            source = doc.get("title")
            no_title += source is None
        elif not isinstance(text, str):
            raise ValueError(f"document {doc['docno']!r} has no text (got {text!r}); pseudo-queries need 'text'")
        elif method == "first_sentence":
            source = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
        else:
            words = clean_query(text).split()
            length = int(rng.integers(span_words[0], span_words[1] + 1))
            start = int(rng.integers(0, max(len(words) - length, 0) + 1))
            source = " ".join(words[start:start + length])
        words = clean_query(source or "").split()[:max_words]
        if len(words) < min_words:
            skipped += 1
            continue
        rows.append((f"{qid_prefix}-{method}-{doc['docno']}", " ".join(words), str(doc["docno"])))
    if method == "title" and seen and no_title == seen:
        raise ValueError("no document has a 'title' field; use method='first_sentence' or 'span'")
    frame = pd.DataFrame(rows, columns=["qid", "query", "docno"])
    if num is not None and num < len(frame):
        frame = frame.iloc[np.sort(rng.choice(len(frame), size=num, replace=False))].reset_index(drop=True)
    frame.attrs["skipped"] = skipped
    if skipped:
        warnings.warn(f"pseudo_queries({method!r}): skipped {skipped} of {seen} documents whose query would have "
                      f"fewer than {min_words} words", stacklevel=2)
    return frame


def pseudo_qrels(queries: pd.DataFrame, label: int = 1) -> pd.DataFrame:
    """Qrels (``qid, docno, label``) that judge each pseudo-query's source document relevant.

    With them a student (or a teacher) trains on pseudo-queries from hard labels alone, e.g. to adapt a
    cross-encoder to a collection before its few judged queries: ``(bm25 >> get_text >> Distiller(model, None,
    loss=losses.RankNet())).fit(pq, pseudo_qrels(pq))``. Other candidates count as negatives (unjudged).
    """
    if not isinstance(queries, pd.DataFrame):
        raise TypeError(f"pseudo_qrels needs the frame pseudo_queries returns, got {type(queries).__name__}")
    missing = [c for c in ("qid", "docno") if c not in queries.columns]
    if missing:
        raise KeyError(f"pseudo-queries are missing column(s) {missing}: pass the frame pseudo_queries returns "
                       f"(found {list(queries.columns)})")
    if len(queries) == 0:
        raise ValueError("there are no pseudo-queries to make qrels for")
    if label <= 0:
        raise ValueError(f"the source document's label must be > 0 (relevant), got {label}")
    return pd.DataFrame({"qid": queries["qid"].astype(str), "docno": queries["docno"].astype(str),
                         "label": int(label)})
