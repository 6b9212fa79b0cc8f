"""Anserini/Pyserini Lucene indexes: built once from a collection (atomically), BM25 over them, the texts they store,
and Pyserini's own search hits re-ranked by any re-ranker. Pyserini is imported on first use
(``pip install pyterrier-marginkd[pyserini]``) after :func:`~pyterrier_marginkd.data.java.init_pyserini`."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import pyterrier as pt

from pyterrier_marginkd import _files
from pyterrier_marginkd.data.java import init_pyserini
from pyterrier_marginkd.data.runs import name_ids

#: file written into an index folder once every document is indexed; a folder without it is built again
INDEX_MARKER = "marginkd_complete.json"
#: what the index stores besides postings: the text (``contents``) and the raw JSON document, so that Pyserini's
#: ``doc(docid).contents()`` / ``.raw()`` read them back; positions and document vectors for Pyserini's other tools
STORE_ARGS = ("-storeContents", "-storeRaw", "-storePositions", "-storeDocvectors")
#: documents handed to Anserini's indexer at once
INDEX_BATCH = 1000
#: what Java's String.trim() strips (every character up to the space): Anserini skips a document whose text is only
#: these (Python's str.strip() strips other characters too, e.g. U+00A0, and not the control characters)
_JAVA_TRIM = "".join(map(chr, range(0x21)))
logger = logging.getLogger(__name__)


def stored_text(document: Any, docno: str) -> str:
    """The text a Lucene document stores: its ``contents`` field, else its raw document (the ``contents`` or ``text``
    of a raw JSON document, the raw text as it is otherwise). ``document`` is a Lucene or Pyserini document."""
    contents = document.get("contents")
    if contents is not None:
        return str(contents)
    raw = document.get("raw")
    if raw is None:
        raise ValueError(f"the Lucene index stores no text for docno {docno!r}: index with --storeContents or "
                         "--storeRaw (pyserini.index.lucene), or take the texts from the collection instead")
    try:
        parsed = json.loads(raw)
    except ValueError:
        return str(raw)
    if isinstance(parsed, dict):
        for field in ("contents", "text"):
            if isinstance(parsed.get(field), str):
                return parsed[field]
    return str(raw)


def _is_lucene_index(path: Path) -> bool:
    return path.is_dir() and any(path.glob("segments_*"))


class LuceneIndex:
    """A Lucene index of Anserini or Pyserini (``python -m pyserini.index.lucene``, or :meth:`build`): BM25 retrieval
    (:meth:`bm25`) and the texts it stores (:meth:`get_text`). Java starts on first use, not here."""

    def __init__(self, path: str | os.PathLike, *, threads: int = 1):
        self.path = Path(path)
        self.threads = threads
        if not _is_lucene_index(self.path):
            raise FileNotFoundError(f"{str(path)!r} is not a Lucene index (a folder with segments_* files): build one "
                                    "with Collection(...).bm25(path, engine='anserini') or python -m "
                                    "pyserini.index.lucene")
        self._searcher = None

    def __repr__(self) -> str:
        return f"LuceneIndex({str(self.path)!r})"

    @classmethod
    def build(cls, docs: Iterable[dict], path: str | os.PathLike, *, threads: int = 1,
              source: str | None = None) -> LuceneIndex:
        """The index at ``path``, built from ``docs`` (dicts with ``docno`` and ``text``) unless a complete one is
        there already; ``docs`` is not read then.

        Built in a temporary folder beside ``path`` and moved there with a completion marker (:data:`INDEX_MARKER`)
        once every document is indexed: a failed build leaves nothing behind, and a folder without the marker is
        rebuilt. Each document's text is its ``contents``, stored with the raw JSON document, so Pyserini's tools
        search the index and read the texts back. Anserini skips empty documents.
        """
        path = Path(path)
        _files.recover_dir(path)  # tidy up after a process killed while building
        if (path / INDEX_MARKER).exists():
            return cls(path, threads=threads)
        if path.exists():
            if not path.is_dir() or (any(path.iterdir()) and not _is_lucene_index(path)):
                raise FileExistsError(f"{path} is neither empty nor a Lucene index: choose another index folder "
                                      "(or delete it)")
            logger.warning("%s has no %s: it is an incomplete index; building it again", path, INDEX_MARKER)
        init_pyserini()
        from pyserini.index.lucene import LuceneIndexer
        from pyserini.search.lucene import LuceneSearcher

        with _files.atomic_dir(path) as tmp:
            # absolute paths for Java: it resolves relative ones against the folder it started in, not os.getcwd()
            indexer = LuceneIndexer(args=["-index", str(tmp.absolute()), *STORE_ARGS], threads=threads)
            count = empty = 0
            try:
                batch = []
                for doc in docs:
                    docno, text = str(doc["docno"]), doc["text"]
                    if not isinstance(text, str):
                        raise ValueError(f"document {docno!r} has a {type(text).__name__} text, not a string")
                    batch.append(json.dumps({"id": docno, "contents": text}))
                    count += 1
                    empty += not text.strip(_JAVA_TRIM)
                    if len(batch) == INDEX_BATCH:
                        indexer.add_batch_raw(batch)
                        batch = []
                if batch:
                    indexer.add_batch_raw(batch)
            finally:
                indexer.close()
            if count == 0:
                raise ValueError(f"no documents to index into {path}")
            searcher = LuceneSearcher(str(tmp.absolute()))
            indexed = searcher.num_docs
            searcher.close()
            if indexed != count - empty:
                raise RuntimeError(f"the Lucene index holds {indexed} documents, expected {count - empty} ({count} "
                                   f"read, {empty} empty, which Anserini skips)")
            (tmp / INDEX_MARKER).write_text(json.dumps({"collection": source, "documents": count,
                                                        "indexed": indexed, "empty": empty}))
        return cls(path, threads=threads)

    def searcher(self):
        """Pyserini's ``LuceneSearcher`` over this index (Java started on a Java >= 21 first)."""
        if self._searcher is None:
            init_pyserini()
            from pyserini.search.lucene import LuceneSearcher

            self._searcher = LuceneSearcher(str(self.path.absolute()))
        return self._searcher

    def bm25(self, num_results: int = 100, *, k1: float = 0.9, b: float = 0.4) -> LuceneBM25:
        """Anserini BM25 over this index: ``qid, query -> docno, score, rank`` (ranks from 0)."""
        return LuceneBM25(self, num_results=num_results, k1=k1, b=b)

    def get_text(self, field: str = "text") -> LuceneText:
        """A transformer that adds each row's stored text (:func:`stored_text`) as column ``field``, by ``docno``."""
        return LuceneText(self, field=field)

    def texts(self, docnos: Iterable[str]) -> dict[str, str]:
        """Stored text of each docno the index has (the others are left out)."""
        docnos = list(dict.fromkeys(str(d) for d in docnos))
        found = {}
        for start in range(0, len(docnos), 10_000):
            documents = self.searcher().batch_doc(docnos[start:start + 10_000], self.threads)
            found.update({docno: stored_text(doc, docno) for docno, doc in documents.items()})
        return found

    def missing_docnos(self, docnos: Iterable[str]) -> list[str]:
        """The docnos (in their order, once each) that are not in this index."""
        docnos = list(dict.fromkeys(str(d) for d in docnos))
        missing = []
        for start in range(0, len(docnos), 10_000):
            chunk = docnos[start:start + 10_000]
            found = self.searcher().batch_doc(chunk, self.threads)
            missing.extend(d for d in chunk if d not in found)
        return missing


class LuceneBM25(pt.Transformer):
    """BM25 retrieval from a :class:`LuceneIndex` through Pyserini's ``LuceneSearcher`` (Anserini's English analyzer:
    Porter stemming, stopwords removed)."""

    schematic_label = "Anserini BM25"

    def __init__(self, index: LuceneIndex, *, num_results: int = 100, k1: float = 0.9, b: float = 0.4):
        if num_results < 1:
            raise ValueError(f"num_results must be at least 1, got {num_results}")
        self.index = index
        self.num_results = num_results
        self.k1 = k1
        self.b = b
        self._searcher = None

    def __repr__(self) -> str:
        return f"{self.index!r}.bm25(num_results={self.num_results}, k1={self.k1}, b={self.b})"

    def schematic(self, *, input_columns=None):
        return {"label": self.schematic_label, "help_url": None}

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.query_frame(inp, extra_columns=["query"])
        columns = [c for c in inp.columns if c not in ("docno", "score", "rank")]
        if inp.empty:
            return pd.DataFrame(columns=[*columns, "docno", "score", "rank"])
        if self._searcher is None:  # its own searcher: BM25 parameters are a searcher's setting
            init_pyserini()
            from pyserini.search.lucene import LuceneSearcher

            self._searcher = LuceneSearcher(str(self.index.path.absolute()))
            self._searcher.set_bm25(float(self.k1), float(self.b))
        rows, docnos, scores, ranks = [], [], [], []
        for row, query in enumerate(inp["query"]):
            if not isinstance(query, str):
                raise ValueError(f"query of row {row} (qid {inp['qid'].iloc[row]!r}) is a {type(query).__name__}, "
                                 "not a string")
            hits = self._searcher.search(query, k=self.num_results)
            rows.extend([row] * len(hits))
            docnos.extend(str(hit.docid) for hit in hits)
            scores.extend(float(hit.score) for hit in hits)
            ranks.extend(range(len(hits)))  # Lucene's order: by score, ties by index order
        out = inp[columns].iloc[rows].reset_index(drop=True)
        return out.assign(docno=docnos, score=scores, rank=ranks)


class LuceneText(pt.Transformer):
    """Adds each row's text as stored in a :class:`LuceneIndex` (by ``docno``); a docno the index lacks is an error
    that counts and names them."""

    schematic_label = "Lucene text"

    def __init__(self, index: LuceneIndex, *, field: str = "text"):
        self.index = index
        self.field = field

    def __repr__(self) -> str:
        return f"{self.index!r}.get_text({self.field!r})"

    def schematic(self, *, input_columns=None):
        return {"label": self.schematic_label, "help_url": None}

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.columns(inp, includes=["docno"])
        if inp.empty:
            return inp.assign(**{self.field: pd.Series(dtype=object)})
        docnos = [str(d) for d in inp["docno"]]
        texts = self.index.texts(docnos)
        missing = [d for d in dict.fromkeys(docnos) if d not in texts]
        if missing:
            raise KeyError(f"{len(missing)} docnos are not in the Lucene index {str(self.index.path)!r}: "
                           f"{name_ids(missing)} (Anserini leaves empty documents out of an index)")
        return inp.assign(**{self.field: [texts[d] for d in docnos]})


def rerank_hits(reranker: pt.Transformer, query: str | dict[str, str], hits: Sequence | dict[str, Sequence], *,
                qid: str = "1") -> pd.DataFrame:
    """Re-rank Pyserini's hits with ``reranker``: those of ``LuceneSearcher.search(query)`` (``query`` a string,
    its qid ``qid``), or those of ``batch_search(queries, qids)`` (``query`` a dict qid -> query, ``hits`` the dict
    it returned). Texts come from the hits' stored documents (:func:`stored_text`); the hits' scores are the input
    ``score`` (students with ``first_stage="zscore"`` read it). Returns ``qid, query, docno, text, score, rank``,
    best first within each query."""
    if isinstance(hits, dict):
        if not isinstance(query, dict):
            raise TypeError("hits of batch_search (a dict qid -> hits) need a dict qid -> query text as query")
        missing = [q for q in hits if q not in query]
        if missing:
            raise KeyError(f"{len(missing)} qids of the hits have no query text: {name_ids(missing)}")
        by_qid = hits
    else:
        if not isinstance(query, str):
            raise TypeError(f"the hits of one search need the query as a string, got {type(query).__name__}")
        by_qid, query = {qid: hits}, {qid: query}
    records = []
    for key, found in by_qid.items():
        for rank, hit in enumerate(found):
            docno = str(hit.docid)
            records.append({"qid": str(key), "query": query[key], "docno": docno,
                            "text": stored_text(hit.lucene_document, docno), "score": float(hit.score), "rank": rank})
    frame = pd.DataFrame(records, columns=["qid", "query", "docno", "text", "score", "rank"])
    return reranker(frame).sort_values(["qid", "rank"], kind="stable").reset_index(drop=True)
