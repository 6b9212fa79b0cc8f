"""The real Pyserini (Anserini's Lucene) on Cranfield: BM25 through the project close to PISA's, an index built once
and atomically that Pyserini's own command line searches and reads texts from, `marginkd rerank` over its run with
texts from the index or the collection alike (JAVA_HOME unset), and Pyserini's hits re-ranked in one call.

Skipped, with the reason, where pyserini or a Java >= 21 is missing; the checks that need neither always run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyterrier as pt
import pytest
from conftest import PROJECT, pyserini_missing
from ir_measures import nDCG

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.data import java, lucene
from pyterrier_marginkd.data.runs import read_run, read_topics

MISSING = pyserini_missing()
needs_pyserini = pytest.mark.skipif(MISSING is not None, reason=f"the real Pyserini cannot run here: {MISSING}")
#: Cranfield test queries searched by Pyserini's command line and re-ranked
NUM_QUERIES = 5


def without_java_settings() -> dict[str, str]:
    """This environment without JAVA_HOME and OPENAI_API_KEY: what a user who set neither has."""
    return {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "OPENAI_API_KEY")}


@pytest.fixture(scope="module")
def index_path(cranfield, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lucene") / "cranfield.lucene"
    cranfield.bm25(path, engine="anserini")
    return path


@pytest.fixture(scope="module")
def pyserini_run(cranfield, index_path, tmp_path_factory) -> tuple[Path, Path]:
    """A BM25 run (top 20) of the first Cranfield test queries written by ``python -m pyserini.search.lucene`` over
    the project's index, and its topics file (raw queries)."""
    folder = tmp_path_factory.mktemp("pyserini-run")
    topics = cranfield.topics("test", clean=False).head(NUM_QUERIES)
    (folder / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in zip(topics["qid"], topics["query"])))
    env = {**without_java_settings(), "JAVA_HOME": java.find_java(), "OPENAI_API_KEY": "unused"}
    subprocess.run([sys.executable, "-m", "pyserini.search.lucene", "--index", str(index_path), "--topics",
                    str(folder / "topics.tsv"), "--output", str(folder / "bm25.trec"), "--bm25", "--hits", "20"],
                   check=True, env=env, capture_output=True, timeout=300)
    return folder / "bm25.trec", folder / "topics.tsv"


def test_not_an_index_and_unknown_engine_are_refused(cranfield, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not a Lucene index .*engine='anserini'"):
        mkd.LuceneIndex(tmp_path)
    with pytest.raises(ValueError, match=r"unknown BM25 engine 'lucene': 'pisa' or 'anserini'"):
        cranfield.bm25(tmp_path / "x", engine="lucene")


@needs_pyserini
def test_anserini_bm25_is_within_005_ndcg10_of_pisa(cranfield, cranfield_bm25, index_path):
    anserini = cranfield.bm25(index_path, num_results=20, engine="anserini")
    topics = cranfield.topics("test")
    results = anserini(topics.head(3))
    assert list(results.columns) == ["qid", "query", "docno", "score", "rank"]
    for _, ranked in results.groupby("qid"):
        assert list(ranked["rank"]) == list(range(20)) and ranked["score"].is_monotonic_decreasing
    table = pt.Experiment([cranfield_bm25, anserini], topics, cranfield.qrels("test"), [nDCG @ 10],
                          names=["PISA", "Anserini"]).set_index("name")
    assert 0.3 < table.loc["Anserini", "nDCG@10"] and abs(table.loc["Anserini", "nDCG@10"]
                                                            - table.loc["PISA", "nDCG@10"]) < 0.05, table
    empty = anserini(pd.DataFrame({"qid": ["e", "q"], "query": ["", "wing flutter"]}))
    assert set(empty["qid"]) == {"q"}


@needs_pyserini
def test_the_index_is_built_once_and_atomically(cranfield, index_path, tmp_path):
    assert json.loads((index_path / lucene.INDEX_MARKER).read_text()) == \
        {"collection": str(cranfield.path), "documents": 1400, "indexed": 1398, "empty": 2}

    def unread():
        raise AssertionError("the documents of a complete index were read again")
        yield
    assert mkd.LuceneIndex.build(unread(), index_path).path == index_path

    def failing():
        yield {"docno": "a", "text": "first document"}
        raise OSError("the collection broke off")
    with pytest.raises(OSError, match="broke off"):
        mkd.LuceneIndex.build(failing(), tmp_path / "broken.lucene")
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    blank = [{"docno": "a", "text": "real words"}, {"docno": "nbsp", "text": "\u00a0"},
             {"docno": "control", "text": "\x01 \t"}, {"docno": "empty", "text": ""}]
    built = mkd.LuceneIndex.build(blank, tmp_path / "blank.lucene")  # Anserini skips what Java's trim() empties
    assert json.loads((built.path / lucene.INDEX_MARKER).read_text())["empty"] == 2
    assert built.missing_docnos([d["docno"] for d in blank]) == ["control", "empty"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not an index")
    with pytest.raises(FileExistsError, match="neither empty nor a Lucene index"):
        mkd.LuceneIndex.build([{"docno": "a", "text": "x"}], tmp_path / "mine")


@needs_pyserini
def test_pyserini_searches_the_index_and_reads_its_texts(cranfield, index_path, pyserini_run):
    run, topics_file = pyserini_run
    topics = read_topics(topics_file)
    ours = mkd.LuceneIndex(index_path).bm25(num_results=20)(
        pd.DataFrame({"qid": list(topics), "query": list(topics.values())}))
    theirs = {q.qid: q for q in read_run(run)}
    for qid, ranked in ours.groupby("qid"):
        assert list(ranked["docno"]) == theirs[qid].docnos
        assert ranked["score"].tolist() == pytest.approx(theirs[qid].scores, abs=1e-4)
    searcher = mkd.LuceneIndex(index_path).searcher()
    assert searcher.doc("1").contents() == cranfield.text("1")  # Pyserini reads the texts back


@needs_pyserini
def test_texts_from_the_index_are_the_collections(cranfield, index_path):
    frame = pd.DataFrame({"qid": "1", "docno": ["1", "700", "1400", "700"], "extra": range(4)})
    texts = mkd.LuceneIndex(index_path).get_text()(frame)
    assert texts["text"].tolist() == cranfield.get_text()(frame)["text"].tolist()
    assert texts["extra"].tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match=r"2 docnos are not in the Lucene index .*: 'nope', 'nada' \(Anserini"):
        mkd.LuceneIndex(index_path).get_text()(pd.DataFrame({"qid": "1", "docno": ["1", "nope", "nada", "nope"]}))
    assert mkd.LuceneIndex(index_path).missing_docnos(["1", "x", "2", "x"]) == ["x"]


@needs_pyserini
def test_rerank_gives_the_same_run_from_the_index_or_the_collection(cranfield, index_path, pyserini_run,
                                                                    student_dir, tmp_path):
    run, topics_file = pyserini_run
    common = ["rerank", "--model", str(student_dir), "--run", str(run), "--topics", str(topics_file), "--k", "10"]
    cli.main([*common, "--docs", str(cranfield.path), "--output", str(tmp_path / "docs.trec")])
    # a fresh process with JAVA_HOME and OPENAI_API_KEY unset: the command finds Java itself
    done = subprocess.run([sys.executable, "-c", "from pyterrier_marginkd.cli import main; main()", *common,
                           "--index", str(index_path), "--output", str(tmp_path / "index.trec")],
                          capture_output=True, text=True, timeout=300, cwd=PROJECT, env=without_java_settings())
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "index.trec").read_text() == (tmp_path / "docs.trec").read_text()
    before = {q.qid: set(q.docnos) for q in read_run(run, k=10)}
    assert {q.qid: set(q.docnos) for q in read_run(tmp_path / "index.trec")} == before
    assert len(before) == NUM_QUERIES
    qid = run.read_text().splitlines()[-1].split()[0]
    bad = tmp_path / "bad.trec"
    bad.write_text(run.read_text() + f"{qid} Q0 nope 99 -99 t\n")  # the last query's candidates go on
    with pytest.raises(SystemExit, match=r"1 of the \d+ docnos of the run's top 100 are not in the Lucene index "
                                         r".* \(--index\): 'nope'"):
        cli.main([*common[:-2], "--run", str(bad), "--index", str(index_path), "--output", str(tmp_path / "x")])


@needs_pyserini
def test_rerank_hits_of_lucene_searcher(cranfield, index_path, student_dir):
    mkd.init_pyserini()
    from pyserini.search.lucene import LuceneSearcher

    searcher = LuceneSearcher(str(index_path))
    student = mkd.load(student_dir)
    query = "what similarity laws must be obeyed when constructing aeroelastic models"
    hits = searcher.search(query, k=10)
    ranked = mkd.rerank_hits(student, query, hits)
    assert list(ranked.columns[:4]) == ["qid", "query", "docno", "text"] and list(ranked["rank"]) == list(range(10))
    frame = pd.DataFrame({"qid": "1", "query": query, "docno": [h.docid for h in hits]})
    expected = student(cranfield.get_text()(frame)).sort_values("rank")
    assert list(ranked["docno"]) == list(expected["docno"])
    assert ranked["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-6)
    batch = searcher.batch_search([query, "wing flutter"], ["a", "b"], k=5)
    both = mkd.rerank_hits(student, {"a": query, "b": "wing flutter"}, batch)
    assert both.groupby("qid").size().to_dict() == {"a": 5, "b": 5}
    with pytest.raises(KeyError, match="1 qids of the hits have no query text: 'b'"):
        mkd.rerank_hits(student, {"a": query}, batch)
    with pytest.raises(TypeError, match="dict qid -> query"):
        mkd.rerank_hits(student, query, batch)


@needs_pyserini
def test_relative_paths_after_the_process_changed_folder(tmp_path, monkeypatch):
    mkd.init_pyserini()  # Java runs, and resolves relative paths against the folder it started in
    monkeypatch.chdir(tmp_path)
    index = mkd.LuceneIndex.build([{"docno": "a", "text": "wing flutter"}], "relative.lucene")
    assert (tmp_path / "relative.lucene" / lucene.INDEX_MARKER).exists()
    assert index.bm25()(pd.DataFrame({"qid": ["1"], "query": ["flutter"]}))["docno"].tolist() == ["a"]
    again = mkd.LuceneIndex("relative.lucene")
    assert again.get_text()(pd.DataFrame({"qid": ["1"], "docno": ["a"]}))["text"].tolist() == ["wing flutter"]


@needs_pyserini
def test_a_real_openai_key_is_left_alone(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-users-own")
    home = mkd.init_pyserini()
    assert os.environ["OPENAI_API_KEY"] == "sk-the-users-own" and java.java_version(home) >= java.MIN_JAVA
    monkeypatch.delenv("OPENAI_API_KEY")
    mkd.init_pyserini()
    assert os.environ["OPENAI_API_KEY"] == java.PLACEHOLDER_OPENAI_KEY


def tiny_index() -> lucene.LuceneIndex:
    """A three-document index (PyTerrier's transformer test factories take no fixtures)."""
    docs = [{"docno": f"d{i}", "text": text} for i, text in enumerate(["wing flutter", "heat transfer", "lift"])]
    return mkd.LuceneIndex.build(docs, Path(tempfile.mkdtemp()) / "tiny.lucene")


@needs_pyserini
@pt.testing.transformer_test_class
def test_lucene_bm25_is_a_pyterrier_transformer():
    return tiny_index().bm25(num_results=2)


@needs_pyserini
@pt.testing.transformer_test_class
def test_lucene_text_is_a_pyterrier_transformer():
    return tiny_index().get_text()
