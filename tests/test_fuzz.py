"""Hostile inputs (hypothesis, bounded): every public transformer and the Distiller either work as documented or
raise a ValueError/KeyError/TypeError that names the column (and row) — never a deep torch/pandas error, never a
wrong-length output.

Documented behaviour checked here: ids (``qid``, ``docno``) of any type — str, int, UTF-8 bytes, mixed — are kept
as they are and ranks are computed per distinct ``qid``; empty, whitespace-only, control-character and any-Unicode
texts score (lone surrogates are read as U+FFFD); texts longer than ``max_length`` are truncated; duplicated rows
are scored once each; old ``score``/``rank`` columns are replaced and other columns kept. A missing column is a
KeyError; a missing (or non-UTF-8 bytes) id or a non-string query/text a ValueError naming the row; a non-DataFrame
given to ``transform`` a TypeError (a list of dicts given to the transformer itself is PyTerrier's record
convention: records in, records out).
"""
from __future__ import annotations

import math
import os
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CountingTeacher
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data.scorefiles import format_line, read_score_file

#: CI runs the same 25 examples per test; MARGINKD_FUZZ_EXAMPLES=500 explores that many fresh random ones instead
DEEP = int(os.environ.get("MARGINKD_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP or 25, deadline=None, derandomize=not DEEP,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: name -> factory(tiny BERT folder) of each public transformer (a new one adds a line)
SCORERS = {
    "CrossEncoder": lambda path: mkd.CrossEncoder.from_pretrained(path, max_length=48, batch_size=4),
    "DotEncoder": lambda path: mkd.DotEncoder(path, pooling="mean", dim=8, shared_encoder=False, max_length=48),
    "ColBERT": lambda path: mkd.ColBERT(path, dim=16, query_length=8, mask_punctuation=True, max_length=48),
    "PreTT": lambda path: mkd.PreTT(path, max_length=48),
    "TK": lambda path: mkd.TK(path, num_layers=1, num_heads=2, ff_dim=16, max_query_length=8, max_length=48),
    "Distiller": lambda path: mkd.Distiller(mkd.CrossEncoder.from_pretrained(path, max_length=48, batch_size=4),
                                            CountingTeacher()),
    "Ensemble": lambda path: mkd.Ensemble([mkd.CrossEncoder.from_pretrained(path, max_length=48, batch_size=4),
                                           mkd.CrossEncoder.from_pretrained(path, max_length=24, batch_size=8)],
                                          weights=[1.0, 2.0]),
    "Cascade": lambda path: mkd.Cascade(mkd.CrossEncoder.from_pretrained(path, max_length=24, batch_size=4),
                                        mkd.CrossEncoder.from_pretrained(path, max_length=48, batch_size=4),
                                        k=2, passage_length=8, stride=8),
}
#: documented exceptions: an Ensemble cannot match members' scores to duplicated (qid, docno) rows, so refuses them
REJECTS_DUPLICATES = {"Ensemble"}

IDS = st.one_of(st.text(max_size=6), st.integers(-3, 10**12), st.text(min_size=1, max_size=4).map(str.encode))
TEXTS = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(exclude_categories=()), max_size=12),  # includes control characters and surrogates
    st.text(st.characters(max_codepoint=0x1F), max_size=8),
    st.sampled_from(["", " ", "\x00", "\ud800", "\udcff tail", "💥 émoji 中文 עברית", "\u200b\ufeff\u202e", "\t\n\r"]),
    st.builds(lambda word, n: word * n, st.sampled_from(["word ", "x", "ü "]), st.integers(500, 5000)),
)


@st.composite
def result_frames(draw, min_rows: int = 0) -> pd.DataFrame:
    """A result frame with hostile but valid values: odd ids and texts, duplicates, extra and stale columns."""
    rows = draw(st.lists(st.tuples(IDS, IDS, TEXTS, TEXTS), min_size=min_rows, max_size=10))
    # object columns from the start: pandas' pyarrow-backed strings (pandas 3 with pyarrow installed) cannot hold lone
    # surrogates
    frame = pd.DataFrame(rows, columns=["qid", "docno", "query", "text"], dtype=object)
    if len(frame) and draw(st.booleans()):
        frame = pd.concat([frame, frame.sample(n=draw(st.integers(1, len(frame))), replace=True, random_state=0)])
    if draw(st.booleans()):
        frame["extra"] = [{"any": "object"}] * len(frame)
    if draw(st.booleans()):
        frame["score"], frame["rank"] = np.nan, np.inf
    index = draw(st.sampled_from(["range", "repeated", "strings"]))
    if index == "repeated":
        frame.index = [7] * len(frame)
    elif index == "strings":
        frame.index = [f"r{i}" for i in range(len(frame))]
    return frame


@pytest.fixture(scope="module", params=sorted(SCORERS))
def named_scorer(request, tiny_bert_dir):
    torch.manual_seed(0)
    return request.param, SCORERS[request.param](tiny_bert_dir)


@FUZZ
@given(frame=result_frames())
def test_any_valid_frame_is_scored_row_for_row(named_scorer, frame):
    name, scorer = named_scorer
    if name in REJECTS_DUPLICATES and frame[["qid", "docno"]].astype(str).duplicated().any():
        with pytest.raises(ValueError, match=r"duplicate \(qid, docno\)"):
            scorer(frame)
        return
    out = scorer(frame)
    assert len(out) == len(frame)
    kept = [c for c in frame.columns if c not in ("score", "rank")]
    assert set(kept + ["score", "rank"]) <= set(out.columns)
    assert out["docno"].tolist() == frame["docno"].tolist()  # row order kept
    assert np.isfinite(out["score"].to_numpy(dtype=float)).all()
    for _, group in out.groupby("qid", sort=False):
        assert sorted(group["rank"]) == list(range(len(group)))
        assert group.sort_values("rank")["score"].is_monotonic_decreasing
    same = out.assign(pair=list(zip(out["query"], out["text"]))).groupby("pair", sort=False)["score"]
    np.testing.assert_allclose(same.transform("max"), same.transform("min"), atol=1e-4)


def accepted(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the duplicated (qid, docno) rows that the scorer ``name`` refuses by design."""
    if name in REJECTS_DUPLICATES:
        return frame[~frame[["qid", "docno"]].astype(str).duplicated()]
    return frame


def corrupt_cell(frame: pd.DataFrame, column: str, pos: int, value) -> pd.DataFrame:
    frame = frame.reset_index(drop=True).astype({column: object})
    frame.iat[pos, frame.columns.get_loc(column)] = value
    return frame


@FUZZ
@given(frame=result_frames(min_rows=1), data=st.data())
def test_hostile_frame_raises_a_named_error(named_scorer, frame, data):
    name, scorer = named_scorer
    frame = accepted(name, frame)
    kind = data.draw(st.sampled_from(["drop", "text", "id", "not a frame"]))
    pos = data.draw(st.integers(0, len(frame) - 1))
    if kind == "drop":
        column = data.draw(st.sampled_from(["qid", "query", "docno", "text"]))
        with pytest.raises(KeyError, match=column):
            scorer(frame.drop(columns=[column]))
    elif kind == "text":
        column = data.draw(st.sampled_from(["query", "text"]))
        bad = data.draw(st.sampled_from([None, math.nan, 42, 1.5, b"bytes", ["a list"]]))
        with pytest.raises(ValueError, match=rf"column '{column}'.* row {pos}\b"):
            scorer(corrupt_cell(frame, column, pos, bad))
    elif kind == "id":
        column = data.draw(st.sampled_from(["qid", "docno"]))
        bad = data.draw(st.sampled_from([None, math.nan, pd.NA, b"\x80 not UTF-8"]))
        with pytest.raises(ValueError, match=rf"column '{column}'.* row {pos}\b"):
            scorer(corrupt_cell(frame, column, pos, bad))
    else:
        with pytest.raises(TypeError, match="DataFrame"):
            scorer.transform(data.draw(st.sampled_from([frame.to_dict("records"), None, frame.to_numpy()])))


@settings(FUZZ, max_examples=DEEP or 10)
@given(frame=result_frames(min_rows=1))
def test_records_in_records_out(named_scorer, frame):
    name, scorer = named_scorer
    frame = accepted(name, frame)
    out = scorer(frame.to_dict("records"))  # PyTerrier's list-of-dicts calling convention
    assert isinstance(out, list) and len(out) == len(frame)
    assert all(math.isfinite(r["score"]) for r in out)


@pytest.fixture(scope="module")
def fuzz_student(tiny_bert_dir):
    """A tiny student, reset to the same weights before each example (cheaper than loading it each time)."""
    torch.manual_seed(0)
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=32, batch_size=4)
    initial = {k: v.clone() for k, v in student.model.state_dict().items()}

    def reset() -> mkd.CrossEncoder:
        student.model.load_state_dict(initial)
        return student
    return reset


@st.composite
def training_data(draw):
    """Candidates of 1-3 queries (odd ids and texts, duplicates, shared query texts) and qrels or None."""
    num_queries = draw(st.integers(1, 3))
    shared_query = draw(st.one_of(st.none(), TEXTS))
    rows, qrels = [], []
    for q in range(num_queries):
        qid = draw(st.sampled_from([q, str(q), f"q{q}"]))
        query = shared_query if shared_query is not None else draw(TEXTS)
        for d in range(draw(st.integers(2, 5))):
            docno = draw(st.sampled_from([d, f"d{d}"]))
            rows.append((qid, query, docno, draw(TEXTS)))
            if draw(st.booleans()):
                qrels.append((str(qid), str(docno), draw(st.integers(0, 2))))
    res = pd.DataFrame(rows, columns=["qid", "query", "docno", "text"], dtype=object)  # lone surrogates: see above
    if draw(st.booleans()):
        res = pd.concat([res, res.head(2)])
    qrels = pd.DataFrame(qrels, columns=["qid", "docno", "label"]) if draw(st.booleans()) else None
    return res, qrels


def teacher_score(poison: float | None):
    def score(row) -> float:
        if poison is not None and len(row["text"]) % 3 == 0:
            return poison
        return float(len(set(row["query"].split()) & set(row["text"].split()))) - 0.1 * (len(row["text"]) % 7)
    return score


def cached_values(cache_dir: Path) -> list[float]:
    values = []
    for db in cache_dir.rglob("db.sqlite3"):
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            values += [v for (v,) in conn.execute("SELECT value FROM cache")]
    return values


#: a case hypothesis found in CI: a document that is a lone surrogate, which the teacher cache's pairs frame once
#: turned into a UnicodeEncodeError (pandas' pyarrow-backed strings cannot hold it)
LONE_SURROGATE = (pd.DataFrame([(q, "", d, "\ud800" if (q, d) == (1, 4) else "") for q, n in ((0, 2), (1, 5), (2, 2))
                                for d in range(n)], columns=["qid", "query", "docno", "text"], dtype=object),
                  pd.DataFrame({"qid": ["1"], "docno": ["0"], "label": [1]}))


@pytest.mark.filterwarnings("ignore:.*training queries skipped")
@settings(FUZZ, max_examples=DEEP or 12)
@given(data=training_data(), poison=st.sampled_from([None, None, math.nan, math.inf, -math.inf]))
@example(data=LONE_SURROGATE, poison=None)
def test_distiller_trains_or_names_the_problem(fuzz_student, data, poison):
    res, qrels = data
    with tempfile.TemporaryDirectory() as tmp:
        distiller = mkd.Distiller(fuzz_student(), CountingTeacher(teacher_score(poison)), batch_size=2, max_steps=2,
                                  output_dir=tmp)
        try:
            distiller.fit(res, qrels)
        except ValueError as err:
            message = str(err)
            assert poison is not None or "non-finite" not in message
            reasons = [r for r in ("non-finite", "no training query has a positive", "no query has more than",
                                   "no training groups") if r in message]
            assert reasons, message
            event(f"ValueError: {reasons[0]}")
        else:
            assert distiller.history and all(np.isfinite([h["loss"] for h in distiller.history]))
            out = distiller(res)
            assert len(out) == len(res) and np.isfinite(out["score"]).all()
            assert (Path(tmp) / "student" / "model.safetensors").exists()
            event("trained")
        assert np.isfinite(cached_values(Path(tmp) / "teacher_cache")).all()


FINITE = st.floats(allow_nan=False, allow_infinity=False)
SCORE_LINES = st.one_of(
    st.builds(lambda *a: format_line(*a, fmt="text").encode("utf8"), FINITE, FINITE, TEXTS, TEXTS, TEXTS),
    st.builds(lambda a, b: f"{a}\t{b}\tq\td1\td2\n".encode(), st.floats(),
              st.sampled_from(["1.5", "nan", "-inf", "x"])),
    st.binary(max_size=30).map(lambda b: b + b"\n"),
)


@settings(FUZZ, max_examples=DEEP or 50)
@given(lines=st.lists(SCORE_LINES, max_size=4))
def test_score_file_lines_read_back_or_name_the_line(lines):
    """A teacher-score file: lines written by format_line read back as written; any other line is a ValueError naming
    its number (bad UTF-8, wrong column count, a score that is no finite number)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.tsv"
        path.write_bytes(b"".join(lines))
        read = []
        try:
            for triple in read_score_file(path):
                read.append(triple)
        except ValueError as err:
            assert f"line {len(read) + 1}" in str(err)
        else:
            assert len(read) == len(lines)
        for triple in read:
            assert math.isfinite(triple.score_pos) and math.isfinite(triple.score_neg)
            raw = lines[triple.line - 1].decode("utf8").rstrip("\n").split("\t")
            assert (triple.query, triple.pos, triple.neg) == tuple(raw[2:])
