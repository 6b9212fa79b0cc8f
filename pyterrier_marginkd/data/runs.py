"""TREC run files of any engine (Pyserini, Anserini, Terrier, PISA, trec_eval's format) read query by query, and
topic files (``qid<TAB>query``). Standard library only."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

#: ids named in a message about missing ones (the rest are counted)
SHOWN = 10


def name_ids(ids: Sequence[str]) -> str:
    """The first :data:`SHOWN` ids quoted, and how many more there are: for messages about missing qids or docnos."""
    shown = ", ".join(repr(i) for i in ids[:SHOWN])
    return shown + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


@dataclass
class Candidates:
    """One query's candidates from a run: docnos and scores, best first."""

    qid: str
    docnos: list[str]
    scores: list[float]


def read_topics(path: str | os.PathLike) -> dict[str, str]:
    """qid -> query text of a ``qid<TAB>query`` file (no header; the query as it is)."""
    topics: dict[str, str] = {}
    with open(path, encoding="utf8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            qid, tab, query = line.partition("\t")
            if not tab:
                raise ValueError(f"{path}:{number}: a topic line is qid<TAB>query, got {line[:80]!r}")
            if qid in topics:
                raise ValueError(f"{path}:{number}: qid {qid!r} appears twice")
            topics[qid] = query
    return topics


def read_run(path: str | os.PathLike, k: int | None = None) -> Iterator[Candidates]:
    """Each query's top ``k`` candidates (all with None) of a TREC run (``qid Q0 docno rank score tag``), query by
    query in the file's order, best first: by score (as trec_eval orders them), ties in the file's order.

    A run must keep each query's lines together (every engine writes them so); a malformed line, a qid that appears
    again after other queries, or a docno listed twice for one query is a ValueError naming the line.
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    seen: set[str] = set()
    current: str | None = None
    docnos: list[str] = []
    scores: list[float] = []
    where: dict[str, int] = {}

    def done() -> Candidates:
        order = sorted(range(len(docnos)), key=lambda i: -scores[i])[:k]
        return Candidates(current, [docnos[i] for i in order], [scores[i] for i in order])

    with open(path, encoding="utf8") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise ValueError(f"{path}:{number}: a TREC run line has 6 fields (qid Q0 docno rank score tag), got "
                                 f"{len(fields)}: {line.strip()[:80]!r}")
            qid, docno = fields[0], fields[2]
            try:
                score = float(fields[4])
            except ValueError:
                raise ValueError(f"{path}:{number}: the score {fields[4]!r} is not a number") from None
            if qid != current:
                if qid in seen:
                    raise ValueError(f"{path}:{number}: qid {qid!r} appears again after other queries; the run must "
                                     f"keep each query's lines together (sort it first: sort -s -k1,1 {path})")
                if current is not None:
                    yield done()
                seen.add(qid)
                current, docnos, scores, where = qid, [], [], {}
            if docno in where:
                raise ValueError(f"{path}:{number}: docno {docno!r} is listed twice for qid {qid!r} (first at line "
                                 f"{where[docno]})")
            where[docno] = number
            docnos.append(docno)
            scores.append(score)
    if current is not None:
        yield done()


class RunWriter:
    """Writes a TREC run (ranks from 1) to a temporary file that replaces ``path`` only when :meth:`close` is called
    after every query: a failed or killed re-ranking leaves no partial run behind."""

    def __init__(self, path: str | os.PathLike, tag: str):
        if not tag or any(c.isspace() for c in tag):
            raise ValueError(f"a run tag is one word without spaces, got {tag!r}")
        self.path = Path(path)
        self.tag = tag
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
        self._file = open(self._tmp, "w", encoding="utf8")

    def write(self, qid: str, docnos: list[str], scores: list[float]) -> None:
        """One query's ranking, best first."""
        self._file.writelines(f"{qid} Q0 {docno} {rank} {float(score)!r} {self.tag}\n"
                              for rank, (docno, score) in enumerate(zip(docnos, scores), 1))

    def close(self) -> None:
        """Finish the run: it replaces ``path`` now."""
        self._file.close()
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        """Drop what was written; ``path`` stays as it was."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)
