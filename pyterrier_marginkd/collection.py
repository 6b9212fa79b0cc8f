"""Real collections the same way everywhere: a local folder (docs.jsonl.gz, topics*.tsv, qrels*.txt) or an irds: id."""
from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyterrier as pt

#: environment variable naming the folder that holds the shared collections (default ../shared/data)
DATA_ENV = "MARGINKD_DATA"
_PUNCT = re.compile(r"[^\w\s]+", re.UNICODE)


def shared_data_dir() -> Path:
    """Folder of the shared test collections: $MARGINKD_DATA, else ../shared/data next to the working directory."""
    return Path(os.environ.get(DATA_ENV, Path("..") / "shared" / "data"))


def clean_query(query: str) -> str:
    """Replace punctuation (which breaks query parsers such as Terrier's) by spaces and squeeze whitespace."""
    return " ".join(_PUNCT.sub(" ", query).split())


class Collection:
    """Documents, topics and qrels of one collection, from a local folder or an ``irds:`` id.

    A local folder has ``docs.jsonl.gz`` (``docno``, ``text`` and optionally ``title``), ``topics[.<split>].tsv``
    (``qid<TAB>query``) and ``qrels[.<split>].txt`` (TREC format). An ``irds:<id>`` names an ir_datasets dataset;
    its split ``s`` is the dataset ``<id>/s``.
    """

    def __init__(self, data: str | os.PathLike):
        self.data = str(data)
        self._docs: dict[str, dict] | None = None
        self._irds = self.data.startswith("irds:")
        if not self._irds:
            self.path = Path(self.data)
            if not (self.path / "docs.jsonl.gz").exists():
                raise FileNotFoundError(f"{self.data!r} is neither an irds: id nor a folder with docs.jsonl.gz "
                                        "(see ../shared/data/README.md for the layout)")

    @property
    def name(self) -> str:
        """Short name of the collection (folder name or dataset id)."""
        return self.data[5:].replace("/", "-") if self._irds else self.path.resolve().name

    def __repr__(self) -> str:
        return f"Collection({self.data!r})"

    def _dataset(self, split: str | None = None):
        ident = self.data if split is None else f"{self.data}/{split}"
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

    def splits(self) -> list[str]:
        """Names of the topic splits of a local folder (e.g. ``['test', 'train']``)."""
        if self._irds:
            return []
        return sorted(p.name[len("topics."):-len(".tsv")] for p in self.path.glob("topics.*.tsv"))

    def topics(self, split: str | None = None, *, clean: bool = True) -> pd.DataFrame:
        """Topics (``qid, query``) of a split (None: all); punctuation stripped from queries unless ``clean=False``."""
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

    def bm25(self, index_path: str | os.PathLike, *, num_results: int = 100, threads: int = 1) -> pt.Transformer:
        """PISA BM25 (porter2) over this collection; the index is built at ``index_path`` once and reused."""
        from pyterrier_pisa import PisaIndex

        index = PisaIndex(str(index_path), stemmer="porter2", threads=threads)
        if not index.built():
            index.indexer(text_field="text").index({"docno": d["docno"], "text": d["text"]} for d in self.docs_iter())
        return index.bm25(num_results=num_results)


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
