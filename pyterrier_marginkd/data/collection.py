"""Real collections the same way everywhere: a local folder (docs.jsonl.gz, topics*.tsv, qrels*.txt) or an irds: id."""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_marginkd import _files

#: split names a collection without split files still answers, by holding out part of its queries
DERIVED_SPLITS = ("train", "test")
_PUNCT = re.compile(r"[^\w\s]+", re.UNICODE)
#: file written into a PISA index folder once every document is indexed; a folder without it is built again
INDEX_MARKER = "marginkd_complete.json"
logger = logging.getLogger(__name__)


def clean_query(query: str) -> str:
    """Replace punctuation (which breaks query parsers such as Terrier's) by spaces and squeeze whitespace."""
    return " ".join(_PUNCT.sub(" ", query).split())


class Collection:
    """Documents, topics and qrels of one collection, from a local folder or an ``irds:`` id.

    A local folder has ``docs.jsonl.gz`` (``docno``, ``text`` and optionally ``title``), ``topics[.<split>].tsv``
    (``qid<TAB>query``) and ``qrels[.<split>].txt`` (TREC format). An ``irds:<id>`` names an ir_datasets dataset;
    its split ``s`` is the dataset ``<id>/s``.

    A collection that ships no splits (Vaswani, ``irds:vaswani``) still answers ``"train"`` and ``"test"``: its
    queries are split once, the same way on every machine (a permutation of the sorted qids with seed 0), with
    ``test_fraction`` of them held out for testing; :attr:`derived_splits` says when this happened.
    """

    def __init__(self, data: str | os.PathLike, *, test_fraction: float = 0.3):
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
        self.data = str(data)
        self.test_fraction = test_fraction
        self._docs: dict[str, dict] | None = None
        self._holdout: dict[str, set[str]] | None = None
        self._irds = self.data.startswith("irds:")
        if not self._irds:
            self.path = Path(self.data)
            if not (self.path / "docs.jsonl.gz").exists():
                raise FileNotFoundError(f"{self.data!r} is neither an irds: id nor a folder with docs.jsonl.gz "
                                        "(a local collection is a folder with docs.jsonl.gz, topics.<split>.tsv "
                                        "and qrels.<split>.txt)")

    @property
    def name(self) -> str:
        """Short name of the collection (folder name or dataset id)."""
        return self.data[5:].replace("/", "-") if self._irds else self.path.resolve().name

    def __repr__(self) -> str:
        return f"Collection({self.data!r})"

    def _dataset(self, split: str | None = None):
        ident = self.data if split is None else f"{self.data}/{split}"
        if split is not None:
            import ir_datasets

            if ident[len("irds:"):] not in ir_datasets.registry:
                raise KeyError(f"ir_datasets has no dataset {ident[len('irds:'):]!r} for split {split!r} "
                               f"(splits of {self.data}: {self.splits() or 'none'})")
        return pt.get_dataset(ident)

    def docs_iter(self) -> Iterator[dict]:
        """Iterate over documents as dicts with at least ``docno`` and ``text``."""
        if self._irds:
            yield from self._dataset().get_corpus_iter()
            return
        with gzip.open(self.path / "docs.jsonl.gz", "rt", encoding="utf8") as fin:
            for line in fin:
                doc = json.loads(line)
                doc["docno"] = str(doc["docno"])
                yield doc

    def has_titles(self) -> bool:
        """Whether the documents have titles (judged by the first document's non-empty ``title``): the quickstart
        then makes its pseudo-queries from titles, else from first sentences."""
        first = next(iter(self.docs_iter()), {})
        return bool(first.get("title"))

    def splits(self) -> list[str]:
        """Names of the topic splits the collection ships (e.g. ``['test', 'train']``); [] when it ships none."""
        if self._irds:
            import ir_datasets

            ident = self.data[len("irds:"):]
            return sorted(s for s in ("train", "dev", "valid", "test")
                          if f"{ident}/{s}" in ir_datasets.registry)
        return sorted(p.name[len("topics."):-len(".tsv")] for p in self.path.glob("topics.*.tsv"))

    @property
    def derived_splits(self) -> bool:
        """True when ``"train"``/``"test"`` are this object's own holdout split (the collection ships no splits)."""
        return not self.splits()

    def _derived_qids(self, split: str) -> set[str]:
        if self._holdout is None:  # computed once: topics and qrels of both splits share it
            qids = sorted(self.topics(clean=False)["qid"])
            order = np.random.default_rng(0).permutation(len(qids))
            num_test = max(1, round(self.test_fraction * len(qids)))
            if num_test >= len(qids):
                raise ValueError(f"{self.data!r} has {len(qids)} queries: too few to hold out a test split")
            self._holdout = {"test": {qids[i] for i in order[:num_test]}, "train": {qids[i] for i in order[num_test:]}}
        return self._holdout[split]

    def _is_derived(self, split: str | None) -> bool:
        return split in DERIVED_SPLITS and self.derived_splits

    def topics(self, split: str | None = None, *, clean: bool = True) -> pd.DataFrame:
        """Topics (``qid, query``) of a split (None: all); punctuation stripped from queries unless ``clean=False``."""
        if self._is_derived(split):
            topics = self.topics(clean=clean)
            return topics[topics["qid"].isin(self._derived_qids(split))].reset_index(drop=True)
        if self._irds:
            topics = self._dataset(split).get_topics()
            if "text" in topics.columns and "query" not in topics.columns:
                topics = topics.rename(columns={"text": "query"})
            topics = topics[["qid", "query"]]
        else:
            file = self.path / (f"topics.{split}.tsv" if split else "topics.tsv")
            if not file.exists():
                raise FileNotFoundError(f"no topics for split {split!r}: {file} does not exist "
                                        f"(splits here: {self.splits() or 'none'})")
            topics = pd.read_csv(file, sep="\t", header=None, names=["qid", "query"], dtype=str,
                                 keep_default_na=False, quoting=3)
        topics = topics.astype({"qid": str})
        if clean:
            topics = topics.assign(query=topics["query"].map(clean_query))
        return topics.reset_index(drop=True)

    def qrels(self, split: str | None = None) -> pd.DataFrame:
        """Qrels (``qid, docno, label``) of a split (None: all)."""
        if self._is_derived(split):
            qrels = self.qrels()
            return qrels[qrels["qid"].isin(self._derived_qids(split))].reset_index(drop=True)
        if self._irds:
            qrels = self._dataset(split).get_qrels()
        else:
            file = self.path / (f"qrels.{split}.txt" if split else "qrels.txt")
            if not file.exists():
                raise FileNotFoundError(f"no qrels for split {split!r}: {file} does not exist")
            qrels = pd.read_csv(file, sep=r"\s+", header=None, names=["qid", "iteration", "docno", "label"],
                                dtype={"qid": str, "iteration": str, "docno": str, "label": int})
        return qrels[["qid", "docno", "label"]].astype({"qid": str, "docno": str}).reset_index(drop=True)

    def text(self, docno: str) -> str:
        """Text of one document."""
        return self._doc_store()[docno]["text"]

    def _doc_store(self) -> dict[str, dict]:
        if self._docs is None:
            self._docs = {d["docno"]: d for d in self.docs_iter()}
        return self._docs

    def get_text(self, fields: str | list[str] = "text") -> pt.Transformer:
        """A transformer that adds document text fields to a result frame (by ``docno``)."""
        if self._irds:
            return pt.text.get_text(self._dataset(), fields)
        return _LocalText(self, [fields] if isinstance(fields, str) else list(fields))

    def missing_docnos(self, docnos: Iterable[str]) -> list[str]:
        """The docnos (in their order, once each) that are not in the collection."""
        docnos = list(dict.fromkeys(str(d) for d in docnos))
        if not self._irds:
            store = self._doc_store()
            return [d for d in docnos if d not in store]
        lookup = self._dataset().irds_ref().docs_store()
        missing = []
        for start in range(0, len(docnos), 10_000):
            chunk = docnos[start:start + 10_000]
            found = lookup.get_many(chunk)
            missing.extend(d for d in chunk if d not in found)
        return missing

    def bm25(self, index_path: str | os.PathLike, *, num_results: int = 100, threads: int = 1,
             engine: str = "pisa") -> pt.Transformer:
        """BM25 over this collection (``qid, query -> docno, score, rank``); the index is built at ``index_path`` once
        and reused.

        ``engine="pisa"`` (default): embedded PISA, porter2 stemming. ``engine="anserini"``: a Lucene index built
        through Pyserini (``pip install pyterrier-marginkd[pyserini]``, Java >= 21), its contents and raw text stored
        so that Pyserini's own tools search it and read the texts back (``LuceneIndex(index_path)``); Anserini's
        English analyzer (Porter stemming, stopwords removed). Both use k1=0.9, b=0.4.

        The index is built in a temporary folder beside ``index_path`` and moved there only once every document is
        indexed (with a completion marker, :data:`INDEX_MARKER`): a failed download or indexing leaves nothing
        behind, and a folder without the marker (an interrupted or partial index) is rebuilt.
        """
        if engine == "anserini":
            from pyterrier_marginkd.data.lucene import LuceneIndex

            index = LuceneIndex.build(({"docno": d["docno"], "text": d["text"]} for d in self.docs_iter()),
                                      index_path, threads=threads, source=self.data)
            return index.bm25(num_results=num_results)
        if engine != "pisa":
            raise ValueError(f"unknown BM25 engine {engine!r}: 'pisa' or 'anserini'")
        from pyterrier_pisa import PisaIndex

        index_path = Path(index_path)
        _files.recover_dir(index_path)  # tidy up after a process killed while building
        if not (index_path / INDEX_MARKER).exists():
            if index_path.exists():
                _check_rebuildable(index_path)
                logger.warning("%s has no %s: it is an incomplete index (an indexing that failed or was interrupted, "
                               "or one built before the marker existed); building it again", index_path, INDEX_MARKER)
            self._build_index(index_path, threads)
        index = PisaIndex(str(index_path), stemmer="porter2", threads=threads)
        return index.bm25(num_results=num_results)

    def _build_index(self, index_path: Path, threads: int) -> None:
        from pyterrier_pisa import PisaIndex

        docs = _Completion({"docno": d["docno"], "text": d["text"]} for d in self.docs_iter())
        first = docs.peek()  # a failed download raises here, before PISA starts (it aborts on an empty input)
        if first is None:
            raise ValueError(f"{self!r} has no documents to index")
        with _files.atomic_dir(index_path) as tmp:
            PisaIndex(str(tmp), stemmer="porter2", threads=threads).indexer(text_field="text").index(docs)
            docs.check()  # PISA indexes what it got when the documents stop early: refuse that index
            (tmp / INDEX_MARKER).write_text(json.dumps({"collection": self.data, "documents": docs.count}))

def _check_rebuildable(path: Path) -> None:
    """Refuse to replace a folder that is neither empty nor a PISA index (it may hold someone's files)."""
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder: it cannot hold the PISA index")
    if any(path.iterdir()) and not ((path / "pt_meta.json").exists() or (path / "pt_pisa_config.json").exists()
                                    or any(path.glob("inv.*"))):
        raise FileExistsError(f"{path} is neither empty nor a PISA index: choose another index folder (or delete it)")


class _Completion:
    """Iterates over documents for an indexer that consumes them in another thread: remembers the first error (which
    ends the iteration there instead of in the indexer's thread) and whether the documents were exhausted."""

    def __init__(self, docs: Iterator[dict]):
        self._docs = iter(docs)
        self._first: list[dict] = []
        self.count = 0
        self.error: BaseException | None = None
        self.finished = False

    def peek(self) -> dict | None:
        """The first document (None when there is none); an error reading it is raised here."""
        if not self._first:
            try:
                self._first.append(next(self._docs))
            except StopIteration:
                self.finished = True
                return None
        return self._first[0]

    def __iter__(self) -> Iterator[dict]:
        try:
            while self._first:
                self.count += 1
                yield self._first.pop()
            for doc in self._docs:
                self.count += 1
                yield doc
        except Exception as err:  # re-raised by check() in the caller's thread
            self.error = err
            return
        self.finished = True

    def check(self) -> None:
        """Raise the error that stopped the documents, or a RuntimeError when they were not all read."""
        if self.error is not None:
            raise self.error
        if not self.finished:
            raise RuntimeError(f"indexing stopped after {self.count} documents, before the end of the collection")


class _LocalText(pt.Transformer):
    """Adds document fields from a local collection's docs.jsonl.gz to a result frame."""

    def __init__(self, collection: Collection, fields: list[str]):
        self.collection = collection
        self.fields = fields

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.columns(inp, includes=["docno"], context=self)
        store = self.collection._doc_store()
        out = inp.copy()
        for field in self.fields:
            values = []
            for docno in out["docno"]:
                doc = store.get(str(docno))
                if doc is None:
                    raise KeyError(f"docno {docno!r} is not in {self.collection!r}")
                if field not in doc:
                    raise KeyError(f"documents of {self.collection!r} have no field {field!r} "
                                   f"(fields: {sorted(doc)})")
                values.append(doc[field])
            out[field] = values
        return out

    def __repr__(self) -> str:
        return f"{self.collection!r}.get_text({self.fields!r})"
