"""`marginkd train --scores` gives the student the query texts `marginkd score-teacher` gave the teacher."""
from __future__ import annotations

import ir_datasets
import pytest
import torch
from ir_datasets.datasets.base import Dataset
from ir_datasets.formats import TsvDocPairs, TsvDocs, TsvQueries
from ir_datasets.util import LocalDownload

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.training import distiller as distill

DATASET = "marginkd-test/raw-query-pairs"


@pytest.fixture(scope="module")
def raw_pairs(cranfield, tmp_path_factory):
    """Docpairs of Cranfield's first 6 training queries, with their raw texts (punctuation kept) as the queries."""
    folder = tmp_path_factory.mktemp("irds")
    topics, qrels = cranfield.topics("train", clean=False).head(6), cranfield.qrels("train")
    relevant = qrels[(qrels["label"] > 0) & qrels["qid"].isin(topics["qid"])].head(12)
    docnos = sorted(set(relevant["docno"]) | {"1", "2", "3"}, key=int)
    (folder / "docs.tsv").write_text("".join(f"{d}\t{' '.join(cranfield.text(d).split())}\n" for d in docnos))
    (folder / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in zip(topics["qid"], topics["query"])))
    (folder / "docpairs.tsv").write_text("".join(f"{r.qid}\t{r.docno}\t{'1' if r.docno != '1' else '2'}\n"
                                                 for r in relevant.itertuples()))
    if DATASET not in ir_datasets.registry:
        ir_datasets.registry.register(DATASET, Dataset(
            TsvDocs(LocalDownload(folder / "docs.tsv")), TsvQueries(LocalDownload(folder / "queries.tsv")),
            TsvDocPairs(LocalDownload(folder / "docpairs.tsv"))))
    raw = dict(zip(topics["qid"], topics["query"]))
    assert any(raw[q] != mkd.clean_query(raw[q]) for q in relevant["qid"])  # the texts tell raw from cleaned apart
    return {q: raw[q] for q in relevant["qid"]}


@pytest.fixture()
def trained_on(monkeypatch):
    """Instead of training, record qid -> query text of the groups the student would train on."""
    seen = {}

    def record(self, source, *args, **kwargs):
        seen.clear()
        seen.update({g.qid: g.query for g in source.groups(0)})
    monkeypatch.setattr(distill.Distiller, "fit_groups", record)
    return seen


@pytest.fixture(scope="module")
def teacher(tiny_bert_dir, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64).save_pretrained(path)
    return str(path)


def test_train_scores_resolves_docpairs_ids_through_the_scored_query_texts(raw_pairs, teacher, tiny_bert_dir,
                                                                           cranfield, tmp_path, trained_on):
    scores = str(tmp_path / "pairs.tsv")
    cli.main(["score-teacher", "--docpairs", DATASET, "--teacher", teacher, "--output", scores, "--max-length", "64"])
    train = ["train", "--data", str(cranfield.path), "--scores", scores, "--student", str(tiny_bert_dir),
             "--max-length", "64", "--output", str(tmp_path / "run")]
    # the file's qids are Cranfield's too: resolving them through --data would silently train on cleaned texts
    cli.main(train)
    assert trained_on == raw_pairs
    cli.main([*train, "--docpairs", DATASET])
    assert trained_on == raw_pairs
    with pytest.raises(SystemExit, match="scored on the docpairs"):
        cli.main([*train, "--docpairs", "marginkd-test/other"])


def test_train_scores_from_collection_candidates_checks_data_and_split(teacher, tiny_bert_dir, cranfield, tmp_path,
                                                                       trained_on):
    scores = str(tmp_path / "bm25.tsv")
    common = ["--data", str(cranfield.path), "--k", "5", "--index", str(tmp_path / "pisa")]
    cli.main(["score-teacher", *common, "--num-queries", "3", "--teacher", teacher, "--output", scores,
              "--max-length", "64"])
    train = ["train", *common, "--scores", scores, "--student", str(tiny_bert_dir), "--max-length", "64",
             "--output", str(tmp_path / "run")]
    cli.main(train)
    topics = cranfield.topics("train")  # what BM25 and the teacher saw: punctuation stripped
    assert trained_on == {q: t for q, t in zip(topics["qid"], topics["query"]) if q in trained_on}
    assert len(trained_on) == 3
    with pytest.raises(SystemExit, match="give the same --data and --split"):
        cli.main([*train, "--split", "test"])
    with pytest.raises(SystemExit, match="scored on BM25 candidates"):
        cli.main(["score-teacher", *common, "--split", "test", "--teacher", teacher, "--output", scores])


@pytest.mark.parametrize("args", [["train", "--scores", "s.tsv", "--num-queries", "3"],
                                  ["train", "--docpairs", DATASET, "--teacher", "t", "--num-queries", "3"],
                                  ["score-teacher", "--docpairs", DATASET, "--teacher", "t", "--num-queries", "3"]])
def test_num_queries_is_refused_where_it_would_be_ignored(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([*args, "--output", str(tmp_path / "out")])
    assert exit.value.code == 2
    assert "--num-queries picks BM25 candidates' queries" in capsys.readouterr().err


def test_train_scores_without_a_record_resolves_through_raw_query_texts(raw_pairs, tiny_bert_dir, cranfield,
                                                                        tmp_path, trained_on, capsys):
    """A file of other origin (e.g. a published one) was scored on the queries as the dataset gives them."""
    scores = tmp_path / "published.tsv"
    scores.write_text("".join(f"1.5\t-0.5\t{qid}\t1\t2\n" for qid in raw_pairs))
    cli.main(["train", "--data", str(cranfield.path), "--scores", str(scores), "--student", str(tiny_bert_dir),
              "--max-length", "64", "--output", str(tmp_path / "run")])
    assert trained_on == raw_pairs
    assert "no published.tsv.source.json says how it was scored" in capsys.readouterr().out
