"""`marginkd rerank` on a TREC run with texts from a collection (no Java needed), and the run files it reads and writes:
the same candidates come out, ordered by the model's own scores; what the run names and the topics or documents lack
is counted and named before any model loads."""
from __future__ import annotations

import importlib.util

import ir_datasets
import pandas as pd
import pyterrier as pt
import pytest
from ir_datasets.datasets.base import Dataset
from ir_datasets.formats import TsvDocs
from ir_datasets.util import LocalDownload

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.data.runs import RunWriter, read_run, read_topics

IRDS = "marginkd-test/rerank-docs"


def write(path, text: str):
    path.write_text(text)
    return path


def test_read_run_orders_by_score_keeps_top_k_and_ties_in_file_order(tmp_path):
    run = write(tmp_path / "run", "q1 Q0 a 1 1.5 t\nq1 Q0 b 2 3.0 t\nq1 Q0 c 3 1.5 t\n\nq2\tQ0\td\t1\t-2\tt\n")
    first, second = read_run(run)
    assert (first.qid, first.docnos, first.scores) == ("q1", ["b", "a", "c"], [3.0, 1.5, 1.5])
    assert (second.qid, second.docnos) == ("q2", ["d"])
    assert [q.docnos for q in read_run(run, k=2)] == [["b", "a"], ["d"]]


@pytest.mark.parametrize("text, message", [
    ("q1 Q0 a 1 1.0\n", r"run:1: a TREC run line has 6 fields .* got 5"),
    ("q1 Q0 a 1 high t\n", r"run:1: the score 'high' is not a number"),
    ("q1 Q0 a 1 1 t\nq2 Q0 a 1 1 t\nq1 Q0 b 2 0 t\n", r"run:3: qid 'q1' appears again after other queries.*sort"),
    ("q1 Q0 a 1 1 t\nq1 Q0 a 2 0 t\n", r"run:2: docno 'a' is listed twice for qid 'q1' \(first at line 1\)"),
])
def test_read_run_names_the_bad_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        list(read_run(write(tmp_path / "run", text)))


def test_read_topics(tmp_path):
    assert read_topics(write(tmp_path / "t", "1\twhat is lift?\n2\ta\tb\n\n")) == {"1": "what is lift?", "2": "a\tb"}
    with pytest.raises(ValueError, match=r"t:1: a topic line is qid<TAB>query"):
        read_topics(write(tmp_path / "t", "1 no tab\n"))
    with pytest.raises(ValueError, match=r"t:2: qid '1' appears twice"):
        read_topics(write(tmp_path / "t", "1\ta\n1\tb\n"))


def test_run_writer_replaces_the_file_only_when_closed(tmp_path):
    path = write(tmp_path / "out.trec", "old\n")
    writer = RunWriter(path, "tag")
    writer.write("q1", ["a", "b"], [2.5, 1.0])
    writer.discard()
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]
    writer = RunWriter(path, "tag")
    writer.write("q1", ["a", "b"], [2.5, 1.0])
    assert path.read_text() == "old\n"
    writer.close()
    assert path.read_text() == "q1 Q0 a 1 2.5 tag\nq1 Q0 b 2 1.0 tag\n"
    with pytest.raises(ValueError, match="one word"):
        RunWriter(path, "two words")


@pytest.fixture(scope="module")
def pisa_run(cranfield, cranfield_bm25, tmp_path_factory):
    """A TREC run of PISA BM25 (top 20) for 4 Cranfield test queries, written by PyTerrier, and its topics file."""
    folder = tmp_path_factory.mktemp("rerank")
    topics = cranfield.topics("test", clean=False).head(4)
    (folder / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in zip(topics["qid"], topics["query"])))
    results = cranfield_bm25(cranfield.topics("test").head(4))
    pt.io.write_results(results, str(folder / "bm25.trec"), format="trec")
    return folder


def rerank(*args: str) -> None:
    cli.main(["rerank", *args])


def test_rerank_scores_the_same_candidates_with_the_model(cranfield, pisa_run, student_dir, tmp_path):
    out = tmp_path / "student.trec"
    rerank("--model", str(student_dir), "--run", str(pisa_run / "bm25.trec"), "--topics", str(pisa_run / "topics.tsv"),
           "--docs", str(cranfield.path), "--k", "5", "--output", str(out), "--tag", "mine")
    before = {q.qid: q for q in read_run(pisa_run / "bm25.trec", k=5)}
    after = pt.io.read_results(str(out))
    assert len(after) == 20 and set(after["name"]) == {"mine"}
    topics = read_topics(pisa_run / "topics.tsv")
    for qid, ranked in after.groupby("qid"):
        assert set(ranked["docno"]) == set(before[qid].docnos)
        frame = pd.DataFrame({"qid": qid, "query": topics[qid], "docno": before[qid].docnos})
        expected = mkd.load(student_dir)(cranfield.get_text()(frame)).sort_values("rank")
        assert list(ranked.sort_values("rank")["docno"]) == list(expected["docno"])
        assert ranked.sort_values("rank")["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-6)


def test_rerank_counts_and_names_unknown_qids_and_docnos(cranfield, pisa_run, student_dir, tmp_path):
    out = tmp_path / "out.trec"
    run = (pisa_run / "bm25.trec").read_text()
    bad_qids = write(tmp_path / "qids.trec", run + "x1 Q0 1 1 9 t\nx2 Q0 1 1 9 t\n")
    common = ["--model", str(student_dir), "--topics", str(pisa_run / "topics.tsv"), "--docs", str(cranfield.path),
              "--output", str(out)]
    with pytest.raises(SystemExit, match=r"2 of the 6 qids of the run .*qids.trec have no query in .*topics.tsv: "
                                         r"'x1', 'x2'"):
        rerank(*common, "--run", str(bad_qids))
    qid = run.splitlines()[-1].split()[0]  # the last query's lines go on
    bad_docnos = write(tmp_path / "docnos.trec", run + f"{qid} Q0 nope 99 -98 t\n{qid} Q0 nada 99 -99 t\n")
    with pytest.raises(SystemExit, match=r"2 of the \d+ docnos of the run's top 100 are not in the collection "
                                         r".*cranfield \(--docs\): 'nope', 'nada'"):
        rerank(*common, "--run", str(bad_docnos))
    rerank(*common, "--run", str(bad_docnos), "--k", "20")  # they are below the top 20
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()) and out.exists()
    with pytest.raises(SystemExit, match=r"qids.trec:1: a TREC run line has 6 fields"):
        rerank(*common, "--run", str(write(bad_qids, "q1 Q0 a 1 1.0\n")))


def test_rerank_names_a_text_source_it_cannot_read(pisa_run, student_dir, tmp_path, monkeypatch):
    common = ["--model", str(student_dir), "--run", str(pisa_run / "bm25.trec"), "--topics",
              str(pisa_run / "topics.tsv"), "--output", str(tmp_path / "out.trec")]
    with pytest.raises(SystemExit, match=r"marginkd rerank: .*nowhere' is not a Lucene index"):
        rerank(*common, "--index", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match=r"marginkd rerank: .*nowhere' is neither an irds: id nor a folder"):
        rerank(*common, "--docs", str(tmp_path / "nowhere"))
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "segments_1").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyserini" else real(name, *a))
    with pytest.raises(SystemExit, match=r"marginkd rerank: Pyserini is not installed: pip install "
                                         r"pyterrier-marginkd\[pyserini\]"):
        rerank(*common, "--index", str(tmp_path / "index"))
    assert not (tmp_path / "out.trec").exists()


@pytest.mark.parametrize("args, message", [
    (["--docs", "d", "--index", "i"], "not allowed with argument"),
    ([], "one of the arguments --docs --index is required"),
    (["--docs", "d", "--k", "0"], "--k must be at least 1"),
])
def test_rerank_argument_errors(args, message, capsys):
    with pytest.raises(SystemExit):
        rerank("--model", "m", "--run", "r", "--topics", "t", "--output", "o", *args)
    assert message in capsys.readouterr().err


def test_rerank_reads_texts_of_an_ir_datasets_collection(cranfield, pisa_run, student_dir, tmp_path):
    docnos = sorted({d for q in read_run(pisa_run / "bm25.trec", k=3) for d in q.docnos})
    (tmp_path / "docs.tsv").write_text("".join(f"{d}\t{' '.join(cranfield.text(d).split())}\n" for d in docnos))
    if IRDS not in ir_datasets.registry:
        ir_datasets.registry.register(IRDS, Dataset(TsvDocs(LocalDownload(tmp_path / "docs.tsv"))))
    assert mkd.Collection(f"irds:{IRDS}").missing_docnos([docnos[0], "nope", docnos[1], "nope"]) == ["nope"]
    common = ["--model", str(student_dir), "--run", str(pisa_run / "bm25.trec"), "--topics",
              str(pisa_run / "topics.tsv"), "--docs", f"irds:{IRDS}", "--output", str(tmp_path / "out.trec")]
    rerank(*common, "--k", "3")
    assert len(pt.io.read_results(str(tmp_path / "out.trec"))) == 12
    with pytest.raises(SystemExit, match=r"of the run's top 4 are not in the collection irds:"):
        rerank(*common, "--k", "4")


def test_missing_ids_are_named_up_to_ten_and_counted():
    from pyterrier_marginkd.data.runs import name_ids

    assert name_ids(["a", "b"]) == "'a', 'b'"
    assert name_ids([str(i) for i in range(12)]) == ", ".join(f"'{i}'" for i in range(10)) + " and 2 more"
