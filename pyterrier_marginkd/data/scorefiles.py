"""Teacher-score files in the published Margin-MSE format: write them (resumably), read and stream them.

One training triple per line, tab-separated::

    score_pos  score_neg  query_id  pos_doc_id  neg_doc_id     (the "ids" version)
    score_pos  score_neg  query     pos_text    neg_text       (the "text" version)
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import pyterrier as pt

from pyterrier_marginkd.data.docpairs import DocPairs
from pyterrier_marginkd.data.frames import valid_unicode
from pyterrier_marginkd.data.groups import Group, TrainingExamples
from pyterrier_marginkd.data.stream import DocTexts, chunked, query_texts, shuffled
from pyterrier_marginkd.data.teacher_check import CheckedTeacher

FORMATS = ("ids", "text")
_NEWLINES_AND_TABS = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


@dataclass(frozen=True)
class ScoredTriple:
    """One line of a teacher-score file: teacher scores, then query/positive/negative (ids or texts)."""

    score_pos: float
    score_neg: float
    query: str
    pos: str
    neg: str
    line: int = 0


def format_line(score_pos: float, score_neg: float, query: str, pos: str, neg: str, *, fmt: str = "ids") -> str:
    """One file line (with its newline); texts lose tabs and newlines (and read lone surrogates as U+FFFD), ids must
    have none."""
    fields = [query, pos, neg]
    if fmt == "text":
        fields = [_as_written(f) for f in fields]
    elif any(("\t" in f or "\n" in f or "\r" in f) for f in fields):
        raise ValueError(f"ids must not contain tabs or newlines: {fields!r}")
    for score in (score_pos, score_neg):
        if not math.isfinite(score):
            raise ValueError(f"teacher scores must be finite, got {score!r} for {fields!r}")
    return f"{float(score_pos)!r}\t{float(score_neg)!r}\t{fields[0]}\t{fields[1]}\t{fields[2]}\n"


def _as_written(text: str) -> str:
    """A text as the text version of a file holds it: tabs and newlines as spaces, lone surrogates as U+FFFD."""
    return valid_unicode(text.translate(_NEWLINES_AND_TABS))


def read_score_file(path: str | os.PathLike) -> Iterator[ScoredTriple]:
    """Stream the lines of a teacher-score file, checked: a malformed line raises a ValueError naming its number."""
    with open(path, "rb") as fin:
        for number, raw in enumerate(fin, start=1):
            try:
                line = raw.decode("utf8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}, line {number}: not UTF-8 ({err.reason} at byte {err.start})") from None
            yield parse_line(line, path, number)


def parse_line(line: str, path: str | os.PathLike, number: int) -> ScoredTriple:
    """Parse one line of a teacher-score file (``number`` counts from 1 and goes into error messages)."""
    cols = line.rstrip("\n").rstrip("\r").split("\t")
    where = f"{path}, line {number}"
    if len(cols) != 5:
        raise ValueError(f"{where}: expected 5 tab-separated columns (score_pos, score_neg, query, positive, "
                         f"negative), got {len(cols)}: {line[:120]!r}")
    scores = []
    for name, value in (("score_pos", cols[0]), ("score_neg", cols[1])):
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"{where}: {name} is not a number: {value[:60]!r}") from None
        if not math.isfinite(score):
            raise ValueError(f"{where}: {name} is not finite: {value!r}")
        scores.append(score)
    return ScoredTriple(scores[0], scores[1], cols[2], cols[3], cols[4], number)


def count_lines(path: str | os.PathLike) -> int:
    """Number of lines of a file (a last line without a newline counts), read in blocks."""
    count, last = 0, b"\n"
    with open(path, "rb") as fin:
        while block := fin.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def complete_lines(path: str | os.PathLike) -> int:
    """Number of complete (newline-terminated) lines, after cutting off a torn last line left by a killed writer."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    with open(path, "rb+") as fh:
        tail = 0
        while tail < size:
            step = min(1 << 16, size - tail)
            fh.seek(size - tail - step)
            block = fh.read(step)
            pos = block.rfind(b"\n")
            if pos >= 0:
                keep = size - tail - step + pos + 1
                break
            tail += step
        else:
            keep = 0
        if keep < size:
            fh.truncate(keep)
    return count_lines(path)


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf8"), digest_size=8).hexdigest()


class ScoreFile:
    """A teacher-score file as a stream of training groups ``(query, [positive, negative])`` with the file's teacher
    scores (so no teacher runs) and no labels; never loaded whole.

    For the ids version give ``queries`` (a topics frame, a dict qid -> text, an ir_datasets dataset) and ``docs``
    (a dict docno -> text, a :class:`~pyterrier_marginkd.Collection`, an ir_datasets docstore/dataset); without them
    the file is read as the text version. Each epoch is shuffled through a buffer of ``shuffle_buffer`` lines.
    """

    def __init__(self, path: str | os.PathLike, queries: Any = None, docs: Any = None, *,
                 shuffle_buffer: int = 10_000, seed: int = 0, text_field: str = "text", chunk_size: int = 512):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no teacher-score file at {str(self.path)!r}")
        if (queries is None) != (docs is None):
            raise ValueError("give both queries and docs (ids version) or neither (text version)")
        self.format = "text" if docs is None else "ids"
        self.queries = query_texts(queries) if queries is not None else None
        self.docs = DocTexts(docs, text_field) if docs is not None else None
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.chunk_size = chunk_size
        self._count: tuple[tuple[int, float], int] | None = None
        self.report: dict[str, Any] = {"score_file": str(self.path), "format": self.format}

    def num_groups(self) -> int:
        """Number of lines of the file (counted once per file version)."""
        stat = self.path.stat()
        version = (stat.st_size, stat.st_mtime)
        if self._count is None or self._count[0] != version:
            self._count = (version, count_lines(self.path))
        return self._count[1]

    def triples(self) -> Iterator[ScoredTriple]:
        """The file's lines in file order, checked."""
        return read_score_file(self.path)

    def groups(self, epoch: int = 0) -> Iterator[Group]:
        """The epoch's groups, shuffled through the bounded buffer; texts looked up in chunks."""
        rows = shuffled(self.triples(), self.shuffle_buffer, self.seed, epoch)
        for chunk in chunked(rows, self.chunk_size):
            yield from self._resolve(chunk)

    def _resolve(self, chunk: list[ScoredTriple]) -> list[Group]:
        if self.docs is None:
            return [Group(_short_hash(t.query), t.query, [_short_hash(t.pos), _short_hash(t.neg)], [t.pos, t.neg],
                          [1.0, 0.0], [t.score_pos, t.score_neg]) for t in chunk]
        texts = self.docs.texts([d for t in chunk for d in (t.pos, t.neg)])
        groups = []
        for t in chunk:
            if t.query not in self.queries:
                raise ValueError(f"{self.path}, line {t.line}: unknown query id {t.query!r} (not among the "
                                 f"{len(self.queries)} queries given)")
            for docno in (t.pos, t.neg):
                if docno not in texts:
                    raise ValueError(f"{self.path}, line {t.line}: unknown document id {docno!r} (not in {self.docs})")
            groups.append(Group(t.query, self.queries[t.query], [t.pos, t.neg], [texts[t.pos], texts[t.neg]],
                                [1.0, 0.0], [t.score_pos, t.score_neg]))
        return groups

    def __repr__(self) -> str:
        return f"ScoreFile({str(self.path)!r}, format={self.format!r})"


def write_score_file(path: str | os.PathLike, triples: Iterable[tuple[str, str, str]], teacher: pt.Transformer,
                     queries: Any, docs: Any, *, fmt: str = "ids", chunk_size: int = 256, total: int | None = None,
                     text_field: str = "text", verbose: bool = False) -> dict[str, int]:
    """Score (qid, positive docno, negative docno) triples with ``teacher`` and append them to a teacher-score file.

    Resumable: lines already in the file are kept (a torn last line is cut off), checked against the first triples
    and skipped, so a restarted run scores only what is missing. Each chunk is flushed and synced before the next.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = complete_lines(path)
    queries, docs = query_texts(queries), DocTexts(docs, text_field)
    checked = CheckedTeacher(teacher, text_field)
    report = {"lines_existing": done, "lines_written": 0, "pairs_scored": 0}
    bar = pt.tqdm(total=total, initial=min(done, total or done), desc="teacher scores", unit="triple",
                  disable=not verbose)
    existing = read_score_file(path) if done else iter(())
    seen = 0
    try:
        with open(path, "a", encoding="utf8", newline="\n") as out:
            for chunk in chunked(triples, chunk_size):
                skip = min(max(done - seen, 0), len(chunk))
                if skip:
                    _check_written(path, existing, chunk[:skip], queries, docs, fmt)
                    seen += skip
                todo = chunk[skip:]
                if not todo:
                    continue
                rows = _rows(todo, queries, docs)
                pairs = pd.DataFrame([(r[0], r[1], d, t) for r in rows for d, t in ((r[2], r[3]), (r[4], r[5]))],
                                     columns=["qid", "query", "docno", text_field],
                                     dtype=object).drop_duplicates(["qid", "docno"])  # object: lone surrogates too
                scored = checked(pairs)
                scores = dict(zip(zip(scored["qid"].astype(str), scored["docno"].astype(str)), scored["score"]))
                for qid, query, pos, pos_text, neg, neg_text in rows:
                    fields = (qid, pos, neg) if fmt == "ids" else (query, pos_text, neg_text)
                    out.write(format_line(scores[qid, pos], scores[qid, neg], *fields, fmt=fmt))
                out.flush()
                os.fsync(out.fileno())
                report["lines_written"] += len(todo)
                report["pairs_scored"] += len(pairs)
                seen += len(todo)
                bar.update(len(todo))
    finally:
        bar.close()
    if seen < done:
        raise ValueError(f"{path} already holds {done} lines but the triples to score number only {seen}; it was "
                         "written from other data: use another output file or delete it")
    return report


def score_teacher(path: str | os.PathLike, teacher: pt.Transformer, source: TrainingExamples | DocPairs, *,
                  fmt: str = "ids", epoch: int = 0, chunk_size: int = 256, verbose: bool = False) -> dict[str, int]:
    """Write (or complete) the teacher-score file of training examples (one line per positive and sampled negative)
    or of ir_datasets docpairs, scored by ``teacher`` (e.g. an :class:`~pyterrier_marginkd.Ensemble`)."""
    if isinstance(source, DocPairs):
        triples, queries, docs, total = source.pairs(), source.queries, source.docs, source.num_groups()
    else:
        triples, queries, docs = examples_triples(source, epoch)
        total = len(triples)
    return write_score_file(path, triples, teacher, queries, docs, fmt=fmt, chunk_size=chunk_size, total=total,
                            verbose=verbose)


def examples_triples(examples: TrainingExamples, epoch: int = 0) -> tuple[list[tuple[str, str, str]],
                                                                              dict[str, str], dict[str, str]]:
    """(qid, positive, negative) triples of an epoch of training examples (one per negative of each group), with
    the query and document texts they need."""
    triples, queries, docs = [], {}, {}
    for group in examples.groups(epoch):
        queries[group.qid] = group.query
        docs.update(zip(group.docnos, group.texts))
        triples.extend((group.qid, group.docnos[0], neg) for neg in group.docnos[1:])
    return triples, queries, docs


def _rows(triples: list[tuple[str, str, str]], queries: dict[str, str], docs: DocTexts) -> list[tuple[str, ...]]:
    """(qid, query, pos, pos_text, neg, neg_text) for each triple; unknown ids raise a KeyError naming them."""
    texts = docs.texts([d for _, p, n in triples for d in (p, n)])
    rows = []
    for qid, pos, neg in triples:
        if qid not in queries:
            raise KeyError(f"unknown query id {qid!r}: not among the {len(queries)} queries given")
        for docno in (pos, neg):
            if docno not in texts:
                raise KeyError(f"unknown document id {docno!r}: not in {docs}")
        rows.append((qid, queries[qid], pos, texts[pos], neg, texts[neg]))
    return rows


def _check_written(path: Path, existing: Iterator[ScoredTriple], triples: list[tuple[str, str, str]],
                   queries: dict[str, str], docs: DocTexts, fmt: str) -> None:
    """Check that the lines already written hold these triples (so resuming appends to the same run)."""
    expected = triples if fmt == "ids" else [tuple(_as_written(t) for t in (r[1], r[3], r[5]))
                                             for r in _rows(triples, queries, docs)]
    for want in expected:
        line = next(existing)
        if (line.query, line.pos, line.neg) != want:
            found = tuple(f[:40] for f in (line.query, line.pos, line.neg))
            raise ValueError(f"{path}, line {line.line} holds {found} but this run's triple there is "
                             f"{tuple(w[:40] for w in want)}: the file was written from other data; use another "
                             "output file or delete it")
