"""Teacher-score files: round trip, resumable writing, named errors, streaming, training with zero teacher calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CountingTeacher, overlap_score

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses
from pyterrier_marginkd.data.scorefiles import complete_lines, count_lines, examples_triples, format_line, parse_line


@pytest.fixture(scope="module")
def examples(cranfield, cranfield_bm25):
    topics = cranfield.topics("train").head(10)
    res = (cranfield_bm25 % 10 >> cranfield.get_text())(topics)
    qrels = cranfield.qrels("train")
    return mkd.data.TrainingExamples(res, qrels[qrels["qid"].isin(topics["qid"])], num_negatives=2, seed=3)


@pytest.fixture(scope="module")
def triples(examples):
    return examples_triples(examples)


@pytest.fixture()
def student(tiny_bert_dir):
    return mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64)


def test_write_then_read_gives_the_same_triples_and_scores(triples, tmp_path):
    ids, queries, docs = triples
    teacher = CountingTeacher()
    report = mkd.write_score_file(tmp_path / "s.tsv", ids, teacher, queries, docs, chunk_size=7)
    assert report == {"lines_existing": 0, "lines_written": len(ids), "pairs_scored": teacher.pairs}
    read = list(mkd.read_score_file(tmp_path / "s.tsv"))
    assert [(t.query, t.pos, t.neg) for t in read] == ids
    for t in read:
        assert t.score_pos == overlap_score({"query": queries[t.query], "text": docs[t.pos]})
        assert t.score_neg == overlap_score({"query": queries[t.query], "text": docs[t.neg]})
    mkd.write_score_file(tmp_path / "t.tsv", ids, CountingTeacher(), queries, docs, fmt="text")
    text = list(mkd.read_score_file(tmp_path / "t.tsv"))
    assert [(t.score_pos, t.score_neg) for t in text] == [(t.score_pos, t.score_neg) for t in read]
    assert [t.query for t in text] == [queries[q].replace("\n", " ") for q, _, _ in ids]
    assert [t.neg for t in text] == [docs[n].replace("\n", " ").replace("\t", " ") for _, _, n in ids]


def test_lines_round_trip_exactly():
    rng = np.random.default_rng(0)
    for score_pos, score_neg in rng.normal(scale=30, size=(200, 2)):
        line = format_line(score_pos, score_neg, "q 1", "d\t1", "d\n2", fmt="text")
        got = parse_line(line, "f", 1)
        assert (got.score_pos, got.score_neg) == (score_pos, score_neg)
        assert (got.query, got.pos, got.neg) == ("q 1", "d 1", "d 2")
    with pytest.raises(ValueError, match="tabs or newlines"):
        format_line(1.0, 0.0, "q", "d\t1", "d2")
    with pytest.raises(ValueError, match="finite"):
        format_line(float("nan"), 0.0, "q", "d1", "d2")


def test_writing_resumes_after_a_kill_and_a_torn_line(triples, tmp_path):
    ids, queries, docs = triples
    mkd.write_score_file(tmp_path / "full.tsv", ids, CountingTeacher(), queries, docs, chunk_size=4)

    def dies_after(n):
        yield from ids[:n]
        raise KeyboardInterrupt("killed")
    with pytest.raises(KeyboardInterrupt):
        mkd.write_score_file(tmp_path / "part.tsv", dies_after(9), CountingTeacher(), queries, docs, chunk_size=4)
    assert count_lines(tmp_path / "part.tsv") == 8  # the chunk in flight is lost, finished chunks are kept
    with open(tmp_path / "part.tsv", "a") as out:
        out.write("1.25\t-0.5\t1\t18")  # a line torn by the kill
    teacher = CountingTeacher()
    report = mkd.write_score_file(tmp_path / "part.tsv", ids, teacher, queries, docs, chunk_size=4, verbose=True)
    assert report["lines_existing"] == 8 and report["lines_written"] == len(ids) - 8
    assert (tmp_path / "part.tsv").read_bytes() == (tmp_path / "full.tsv").read_bytes()
    assert teacher.pairs <= 2 * (len(ids) - 8)
    again = mkd.write_score_file(tmp_path / "part.tsv", ids, teacher, queries, docs)
    assert again["lines_written"] == 0
    with pytest.raises(ValueError, match="line 1 .* written from other data"):
        mkd.write_score_file(tmp_path / "part.tsv", ids[::-1], teacher, queries, docs)
    with pytest.raises(ValueError, match=r"holds \d+ lines but the triples to score number only 3"):
        mkd.write_score_file(tmp_path / "part.tsv", ids[:3], teacher, queries, docs)


def test_complete_lines_cuts_a_torn_tail(tmp_path):
    path = tmp_path / "f.tsv"
    path.write_bytes(b"torn")
    assert complete_lines(path) == 0 and path.read_bytes() == b""
    path.write_bytes(b"a\nb\n" + b"x" * 70_000)
    assert complete_lines(path) == 2 and path.read_bytes() == b"a\nb\n"
    assert complete_lines(tmp_path / "absent.tsv") == 0


@pytest.mark.parametrize("line, message", [
    ("1.0\t2.0\t{q}\t{p}\n", "expected 5 tab-separated columns .* got 4"),
    ("high\t2.0\t{q}\t{p}\t{n}\n", "score_pos is not a number: 'high'"),
    ("1.0\tnan\t{q}\t{p}\t{n}\n", "score_neg is not finite"),
    ("1.0\t2.0\tno-such-query\t{p}\t{n}\n", "unknown query id 'no-such-query'"),
    ("1.0\t2.0\t{q}\t{p}\tno-such-doc\n", "unknown document id 'no-such-doc' .* documents given"),
    ("\n", "got 1"),
])
def test_malformed_lines_are_named_by_number(triples, tmp_path, line, message):
    ids, queries, docs = triples
    path = tmp_path / "bad.tsv"
    q, p, n = ids[0]
    good = "".join(format_line(1.0, 0.0, *t) for t in ids[:4])
    path.write_text(good + line.format(q=q, p=p, n=n) + format_line(1.0, 0.0, *ids[0]))
    source = mkd.ScoreFile(path, queries, docs, shuffle_buffer=3)
    with pytest.raises(ValueError, match=f"bad.tsv, line 5: .*{message}"):
        list(source.groups(0))


def test_the_file_is_streamed_and_shuffled_per_epoch(triples, tmp_path):
    ids, queries, docs = triples
    mkd.write_score_file(tmp_path / "s.tsv", ids, CountingTeacher(), queries, docs)
    source = mkd.ScoreFile(tmp_path / "s.tsv", queries, docs, shuffle_buffer=5, seed=1)
    groups = source.groups(0)
    assert not isinstance(groups, list)
    first = list(groups)
    assert source.num_groups() == len(ids) == len(first)
    assert sorted((g.qid, *g.docnos) for g in first) == sorted(ids)
    assert [g.docnos for g in first] != [list(t[1:]) for t in ids]
    assert [g.docnos for g in source.groups(0)] == [g.docnos for g in first]
    assert [g.docnos for g in source.groups(1)] != [g.docnos for g in first]
    assert all(g.labels == [1.0, 0.0] and g.teacher is not None and g.query == queries[g.qid] for g in first)
    assert first[0].texts == [docs[d] for d in first[0].docnos]
    with pytest.raises(ValueError, match="both queries and docs"):
        mkd.ScoreFile(tmp_path / "s.tsv", queries)
    with pytest.raises(FileNotFoundError):
        mkd.ScoreFile(tmp_path / "absent.tsv")


def test_fit_file_runs_zero_teacher_calls(triples, student, tmp_path, cranfield):
    ids, queries, docs = triples
    mkd.write_score_file(tmp_path / "s.tsv", ids, CountingTeacher(), queries, docs)
    teacher = CountingTeacher()
    distiller = mkd.Distiller(student, teacher, epochs=2, batch_size=4, lr=1e-2, output_dir=tmp_path / "run")
    distiller.fit_file(tmp_path / "s.tsv", cranfield.topics("train"), cranfield)
    assert teacher.pairs == 0
    assert len(distiller.history) == distiller.report["total_steps"] == 2 * -(-len(ids) // 4)
    assert distiller.report["format"] == "ids"
    mkd.load(tmp_path / "run" / "student")
    # no teacher at all, the text version; file triples are (positive, negative) so label losses train too
    mkd.write_score_file(tmp_path / "t.tsv", ids, CountingTeacher(), queries, docs, fmt="text")
    no_teacher = mkd.Distiller(student, None, batch_size=4, output_dir=tmp_path / "text")
    no_teacher.fit_file(tmp_path / "t.tsv")
    assert no_teacher.report["format"] == "text" and len(no_teacher.history) == -(-len(ids) // 4)
    combined = mkd.Distiller(student, None, loss=losses.MarginMSE() + losses.RankNet(), batch_size=4,
                             output_dir=tmp_path / "labels")
    combined.fit_file(tmp_path / "t.tsv")
    assert len(combined.history) == -(-len(ids) // 4)


def test_cli_scores_resumes_and_trains_from_the_file(tiny_bert_dir, tmp_path, cranfield, capsys):
    from pyterrier_marginkd import cli

    torch.manual_seed(0)
    mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64).save_pretrained(tmp_path / "teacher")
    common = ["--data", str(cranfield.path), "--k", "10", "--index", str(tmp_path / "pisa")]
    args = ["score-teacher", *common, "--num-queries", "6", "--teacher", str(tmp_path / "teacher"),
            str(tmp_path / "teacher"),
            "--output", str(tmp_path / "scores.tsv"), "--max-length", "64"]
    cli.main(args)
    lines = count_lines(tmp_path / "scores.tsv")
    assert lines > 0 and f"0 lines were there, {lines} written" in capsys.readouterr().out
    cli.main(args)
    assert f"{lines} lines were there, 0 written" in capsys.readouterr().out
    cli.main(["train", *common, "--scores", str(tmp_path / "scores.tsv"), "--student", str(tiny_bert_dir),
              "--max-length", "64", "--batch-size", "4", "--output", str(tmp_path / "run")])
    assert mkd.load(tmp_path / "run" / "student").model is not None


def test_a_text_file_whose_texts_held_lone_surrogates_resumes(tmp_path):
    """The writer reads lone surrogates as U+FFFD; the resume check must compare the texts the same way."""
    queries = {"q1": "wing\ud800 flutter", "q2": "heat\ttransfer \udcff"}
    docs = {"d1": "flutter of a \udc80wing", "d2": "laminar\nboundary layer", "d3": "supersonic \ud83d flow"}
    triples = [("q1", "d1", "d2"), ("q1", "d1", "d3"), ("q2", "d2", "d3")]
    first = mkd.write_score_file(tmp_path / "s.tsv", triples[:2], CountingTeacher(), queries, docs, fmt="text")
    assert first["lines_written"] == 2
    assert "\ufffd" in (tmp_path / "s.tsv").read_text(encoding="utf8")
    again = mkd.write_score_file(tmp_path / "s.tsv", triples, CountingTeacher(), queries, docs, fmt="text")
    assert (again["lines_existing"], again["lines_written"]) == (2, 1)
    assert [t.query for t in mkd.read_score_file(tmp_path / "s.tsv")] == ["wing\ufffd flutter"] * 2 + \
        ["heat transfer \ufffd"]
