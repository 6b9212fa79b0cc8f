"""Training triples from ir_datasets docpairs (query_id, doc_id_a, doc_id_b), streamed with texts from a docstore."""
from __future__ import annotations

import itertools
from typing import Any, Iterator

from pyterrier_marginkd.data.groups import Group
from pyterrier_marginkd.data.stream import DocTexts, chunked, load_irds, query_texts, shuffled


class DocPairs:
    """The docpairs of an ir_datasets dataset (e.g. ``msmarco-passage/train/triples-small``) as a stream of training
    groups ``(query, [doc_a, doc_b])`` labelled ``[1, 0]``; never loaded whole.

    Query texts come from ``queries`` (default: the dataset's ``queries_iter()``, held as a dict) and document texts
    from ``docs`` (default: the dataset's ``docs_store()``), looked up in chunks. ``max_pairs`` keeps only the first
    pairs of the file; each epoch is shuffled through a buffer of ``shuffle_buffer`` pairs.
    """

    def __init__(self, dataset: Any, *, queries: Any = None, docs: Any = None, max_pairs: int | None = None,
                 shuffle_buffer: int = 10_000, seed: int = 0, text_field: str = "text", chunk_size: int = 512):
        self.dataset = load_irds(dataset)
        if not hasattr(self.dataset, "docpairs_iter"):
            raise TypeError(f"{self.dataset!r} has no docpairs; use a dataset such as "
                            "'msmarco-passage/train/triples-small' (or any object with docpairs_iter())")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
        self.queries = query_texts(queries if queries is not None else self.dataset)
        self.docs = DocTexts(docs if docs is not None else self.dataset, text_field)
        self.max_pairs = max_pairs
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.chunk_size = chunk_size
        self._count: int | None = None
        self.report: dict[str, Any] = {"docpairs": repr(self.dataset)}

    def pairs(self) -> Iterator[tuple[str, str, str]]:
        """(query_id, doc_id_a, doc_id_b) in file order (the first ``max_pairs``)."""
        pairs = ((str(p.query_id), str(p.doc_id_a), str(p.doc_id_b)) for p in self.dataset.docpairs_iter())
        return itertools.islice(pairs, self.max_pairs)

    def num_groups(self) -> int:
        """Number of pairs (from the dataset's metadata when it has a count, else counted once by streaming)."""
        if self._count is None:
            counter = getattr(self.dataset, "docpairs_count", None)
            count = counter() if callable(counter) else None
            if count is None:
                count = sum(1 for _ in self.pairs())
            self._count = count if self.max_pairs is None else min(count, self.max_pairs)
        return self._count

    def groups(self, epoch: int = 0) -> Iterator[Group]:
        """The epoch's groups, shuffled through the bounded buffer; texts looked up in chunks."""
        numbered = shuffled(enumerate(self.pairs(), start=1), self.shuffle_buffer, self.seed, epoch)
        for chunk in chunked(numbered, self.chunk_size):
            texts = self.docs.texts([d for _, (_, a, b) in chunk for d in (a, b)])
            for number, (qid, doc_a, doc_b) in chunk:
                if qid not in self.queries:
                    raise ValueError(f"docpair {number} of {self.dataset!r}: unknown query id {qid!r}")
                for docno in (doc_a, doc_b):
                    if docno not in texts:
                        raise ValueError(f"docpair {number} of {self.dataset!r}: unknown document id {docno!r}")
                yield Group(qid, self.queries[qid], [doc_a, doc_b], [texts[doc_a], texts[doc_b]], [1.0, 0.0])

    def __repr__(self) -> str:
        return f"DocPairs({self.dataset!r})"
