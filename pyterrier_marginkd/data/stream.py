"""Streaming helpers shared by teacher-score files and docpairs: id -> text lookups and a bounded shuffle."""
from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import pandas as pd

from pyterrier_marginkd.data.collection import Collection

T = TypeVar("T")


def shuffled(items: Iterable[T], buffer_size: int, seed: int, epoch: int) -> Iterator[T]:
    """``items`` in a random order that only ever holds ``buffer_size`` of them (deterministic per seed and epoch)."""
    if buffer_size <= 1:
        yield from items
        return
    rng = random.Random(seed * 1_000_003 + epoch)
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        slot = rng.randrange(buffer_size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def load_irds(dataset: Any) -> Any:
    """An ir_datasets dataset from its id (``"msmarco-passage/train/triples-small"``, ``"irds:..."``) or as given."""
    if isinstance(dataset, str):
        import ir_datasets

        return ir_datasets.load(dataset[5:] if dataset.startswith("irds:") else dataset)
    return dataset


def _record_text(record: Any, text_field: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, Mapping):
        return record[text_field]
    if hasattr(record, text_field):
        return getattr(record, text_field)
    return record.default_text()


def query_texts(queries: Any) -> dict[str, str]:
    """qid -> query text from a topics frame (qid, query), a dict, or an ir_datasets dataset (or its id)."""
    if isinstance(queries, pd.DataFrame):
        missing = [c for c in ("qid", "query") if c not in queries.columns]
        if missing:
            raise KeyError(f"the topics frame lacks column(s) {missing}; expected qid, query "
                           f"(found {list(queries.columns)})")
        return dict(zip(queries["qid"].astype(str), queries["query"].astype(str)))
    if isinstance(queries, Mapping):
        return {str(qid): _record_text(query, "text") for qid, query in queries.items()}
    queries = load_irds(queries)
    if hasattr(queries, "queries_iter"):
        return {str(q.query_id): _record_text(q, "text") for q in queries.queries_iter()}
    raise TypeError(f"queries must be a topics DataFrame (qid, query), a dict qid -> text or an ir_datasets dataset, "
                    f"got {type(queries).__name__}")


class DocTexts:
    """docno -> text through a dict, a :class:`~pyterrier_marginkd.Collection`, an ir_datasets docstore (or a dataset
    or dataset id, whose ``docs_store()`` is used); only the documents asked for are read."""

    def __init__(self, docs: Any, text_field: str = "text"):
        docs = docs.docs if isinstance(docs, DocTexts) else docs
        if isinstance(docs, Collection) and docs.data.startswith("irds:"):
            docs = docs.data  # its docstore reads only the documents asked for
        docs = load_irds(docs)
        if hasattr(docs, "docs_store") and not hasattr(docs, "get_many"):
            docs = docs.docs_store()
        if not (isinstance(docs, Mapping) or hasattr(docs, "get_many") or hasattr(docs, "text")):
            raise TypeError(f"docs must be a dict docno -> text, a pyterrier_marginkd.Collection or an ir_datasets "
                            f"docstore/dataset, got {type(docs).__name__}")
        self.docs = docs
        self.text_field = text_field

    def texts(self, docnos: Sequence[str]) -> dict[str, str]:
        """Text of each docno that exists (unknown docnos are left out)."""
        wanted = list(dict.fromkeys(docnos))
        if isinstance(self.docs, Mapping):
            return {d: _record_text(self.docs[d], self.text_field) for d in wanted if d in self.docs}
        if hasattr(self.docs, "get_many"):
            found = self.docs.get_many(wanted)
            return {str(d): _record_text(doc, self.text_field) for d, doc in found.items()}
        out = {}
        for docno in wanted:
            try:
                out[docno] = self.docs.text(docno)
            except KeyError:
                continue
        return out

    def __repr__(self) -> str:
        if isinstance(self.docs, Mapping):
            return f"the {len(self.docs)} documents given"
        return repr(self.docs) if hasattr(self.docs, "text") else f"the docstore {type(self.docs).__name__}"
