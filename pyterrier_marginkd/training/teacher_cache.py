"""Teacher scores: checked once, cached on disk per (query, docno), looked up for training groups."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyterrier as pt
import torch
from pyterrier_caching import Sqlite3ScorerCache

from pyterrier_marginkd.data.frames import valid_unicode
from pyterrier_marginkd.data.teacher_check import CheckedTeacher
from pyterrier_marginkd.models.ensemble import Ensemble, reads_first_stage
from pyterrier_marginkd.models.identity import describe


def teacher_key(teacher: pt.Transformer, teacher_id: str | None = None) -> str:
    """A short stable name for a teacher's cache: from ``teacher_id`` when given, else from :func:`describe` (the
    weights' content for our models, so a retrained teacher never meets the scores of its previous weights)."""
    ident = teacher_id if teacher_id is not None else describe(teacher)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Run a block with torch's global random state (CPU, and CUDA once initialised) saved and restored: a teacher
    that draws random numbers while scoring (dropout left on, sampling) never shifts the training's random stream,
    however many of its pairs were already cached (a resumed run scores fewer, or none)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        yield


class TeacherScores:
    """Teacher scores of (qid, query, docno, text) pairs, computed once and kept in a pyterrier-caching
    ``Sqlite3ScorerCache`` (one SQLite transaction per chunk: a killed run loses at most the chunk in flight and
    never leaves a partial entry). With ``shard`` (one per process of a distributed run) the scores go to the
    process's own cache ``<shared_path>.<shard>``, merged into ``shared_path`` after training."""

    def __init__(self, teacher: pt.Transformer, cache_dir: str | os.PathLike, *, teacher_id: str | None = None,
                 chunk_size: int = 1024, text_field: str = "text", verbose: bool = False, shard: str | None = None):
        self.teacher = CheckedTeacher(teacher, text_field)
        self.shared_path = Path(cache_dir) / teacher_key(teacher, teacher_id)
        self.path = self.shared_path if shard is None else Path(f"{self.shared_path}.{shard}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not (self.path / "pt_meta.json").exists():
            # a run killed while pyterrier-caching created the store: pt_meta.json comes before any score, so the
            # folder holds no score and is made again
            shutil.rmtree(self.path)
        self.cache = Sqlite3ScorerCache(str(self.path), self.teacher)
        self.chunk_size = chunk_size
        self.text_field = text_field
        self.verbose = verbose

    def scores(self, pairs: pd.DataFrame) -> dict[tuple[str, str], float]:
        """Teacher score of each (qid, docno) in ``pairs`` (columns qid, query, docno, text).

        The cache is keyed by (query text, docno), so queries with different qids but the same text share scores;
        lone surrogates in queries and docnos, which SQLite cannot store, reach the cache and teacher as U+FFFD.
        """
        queries = pairs["query"].map(valid_unicode)
        docnos = pairs["docno"].astype(str).map(valid_unicode)
        unique = pairs.assign(query=queries, docno=docnos).drop_duplicates(["query", "docno"])
        # grouped by document, a chunk holds few distinct documents: a teacher that encodes each distinct text once
        # per call (DotEncoder, ColBERT-style) then encodes each document about once, not once per query
        unique = unique.sort_values("docno", kind="stable").reset_index(drop=True)
        by_text: dict[tuple[str, str], float] = {}
        chunks: Iterable[int] = range(0, len(unique), self.chunk_size)
        if self.verbose:
            chunks = pt.tqdm(chunks, desc="teacher scores", unit="chunk")
        with kept_rng():
            for start in chunks:
                chunk = unique.iloc[start:start + self.chunk_size]
                scored = self._score_chunk(chunk[["qid", "query", "docno", self.text_field]])
                by_text.update(zip(zip(scored["query"], scored["docno"]), scored["score"].astype(float)))
        return {(str(qid), str(docno)): by_text[key]
                for qid, docno, key in zip(pairs["qid"], pairs["docno"], zip(queries, docnos))}

    def _score_chunk(self, chunk: pd.DataFrame, attempts: int = 3) -> pd.DataFrame:
        """Cached scores of one chunk. Fits sharing a cache (``cache_dir``) may run at once: when another process
        stored some of the chunk's pairs between our lookup and our insert, SQLite refuses the duplicates (the whole
        insert rolls back); the chunk is then looked up again, and only what is still missing is scored."""
        for _ in range(attempts - 1):
            try:
                return self.cache(chunk)
            except sqlite3.IntegrityError:
                self.cache.db.rollback()
        return self.cache(chunk)

    def close(self) -> None:
        self.cache.close()

    def fill(self, groups: list) -> None:
        """Set ``group.teacher`` of the training groups lacking it, scoring each (query, docno) once via the cache."""
        todo = [g for g in groups if g.teacher is None]
        if not todo:
            return
        # object columns: pandas' pyarrow-backed strings cannot hold a text with a lone surrogate (a valid Python str)
        pairs = pd.DataFrame([(g.qid, g.query, d, t) for g in todo for d, t in zip(g.docnos, g.texts)],
                             columns=["qid", "query", "docno", self.text_field], dtype=object)
        scores = self.scores(pairs)
        for g in todo:
            g.teacher = [scores[g.qid, d] for d in g.docnos]


def margin_std(groups: list) -> float | None:
    """Standard deviation of the teacher margins (first document minus each other one) of scored groups; None when
    fewer than two margins exist."""
    margins = [g.teacher[0] - t for g in groups if g.teacher is not None for t in g.teacher[1:]]
    return float(np.std(margins)) if len(margins) >= 2 else None


class _CachedMember(pt.Transformer):
    """An Ensemble member whose raw scores of (query, docno) pairs go through its own on-disk cache."""

    def __init__(self, member: pt.Transformer, cache_dir: str | os.PathLike, text_field: str, verbose: bool):
        self.member = member
        # big chunks: a bi-encoder member encodes each distinct query and document about once per chunk
        self.scores = TeacherScores(member, cache_dir, text_field=text_field, verbose=verbose, chunk_size=16384)
        self.text_field = text_field

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        scores = self.scores.scores(inp[["qid", "query", "docno", self.text_field]])
        values = [scores[str(q), str(d)] for q, d in zip(inp["qid"], inp["docno"])]
        return inp.drop(columns=["score", "rank"], errors="ignore").assign(score=np.asarray(values, dtype=float))

    def close(self) -> None:
        self.scores.close()

    def __repr__(self) -> str:
        return repr(self.member)


#: the folder under a teacher cache that keeps whole-list teacher scores (one file per teacher and candidate set)
LISTS_FOLDER = "lists"


def results_digest(results: pd.DataFrame, text_field: str = "text") -> str:
    """A digest of what whole-list teacher scores depend on in ``results``: each row's qid, query, docno, first-stage
    score and text, in (qid, docno) order."""
    rows = results.sort_values(["qid", "docno"], kind="stable")
    scores = rows["score"] if "score" in rows.columns else pd.Series(np.nan, index=rows.index)
    digest = hashlib.sha256()
    for values in zip(rows["qid"].astype(str), rows["query"].astype(str), rows["docno"].astype(str),
                      scores.astype(float), rows[text_field].astype(str)):
        digest.update(repr(values).encode("utf8", "surrogatepass"))
    return digest.hexdigest()[:24]


def list_teacher_scores(teacher: pt.Transformer, results: pd.DataFrame, cache_dir: str | os.PathLike, *,
                        text_field: str = "text", verbose: bool = False,
                        teacher_id: str | None = None) -> dict[tuple[str, str], float]:
    """Scores of a teacher whose score of a row depends on its query's other candidates (an Ensemble with a
    per-query normalisation), computed over each query's whole candidate list in ``results``.

    An Ensemble's members keep their raw pair scores in on-disk caches under ``cache_dir`` (one per member, keyed by
    its weights' content): each pair is scored once by each member, however often the candidates are fused again.
    Members that read the first stage's score (``FirstStageScore``, a student mixing it in) score a row relative to
    its query's list, so they score the whole lists, as do teachers that are not an Ensemble. The fused scores of a
    candidate set are kept too (``cache_dir/lists``, keyed by the teacher, ``teacher_id`` when given, and a digest of
    every row's qid, query, docno, first-stage score and text): students trained on the same candidates after the
    first read them instead of scoring the lists again; any other candidate set is scored afresh.
    """
    results = results.assign(qid=results["qid"].astype(str), docno=results["docno"].astype(str))
    results = results.drop_duplicates(["qid", "docno"]).reset_index(drop=True)
    file = (Path(cache_dir) / LISTS_FOLDER
            / f"{teacher_key(teacher, teacher_id)}-{results_digest(results, text_field)}.npz")
    if file.exists():
        with np.load(file, allow_pickle=False) as saved:
            kept = dict(zip(zip(saved["qid"].tolist(), saved["docno"].tolist()), saved["score"].tolist()))
        if len(kept) == len(results):
            if verbose:
                print(f"teacher: reusing the whole-list scores of {len(kept)} candidates in {file}", flush=True)
            return kept
    if not isinstance(teacher, Ensemble):
        out = CheckedTeacher(teacher, text_field)(results)
        scores = dict(zip(zip(out["qid"].astype(str), out["docno"].astype(str)), out["score"].astype(float)))
    else:
        members = [m if reads_first_stage(m) else _CachedMember(m, cache_dir, text_field, verbose)
                   for m in teacher.members]
        try:
            fused = Ensemble(members, teacher.weights, normalize=teacher.normalize)
            base, matrix = fused.member_scores(results)
            values = fused.fuse(base["qid"], matrix)
        finally:
            for member in members:
                if isinstance(member, _CachedMember):
                    member.close()
        scores = dict(zip(zip(base["qid"].astype(str), base["docno"].astype(str)), values.astype(float)))
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f"{file.stem}.partial.npz")  # written whole, then renamed: never a half file
    keys = list(scores)
    np.savez(partial, qid=np.asarray([q for q, _ in keys], dtype=str),
             docno=np.asarray([d for _, d in keys], dtype=str),
             score=np.asarray([scores[k] for k in keys], dtype=np.float64))
    os.replace(partial, file)
    return scores
