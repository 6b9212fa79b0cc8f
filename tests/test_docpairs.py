"""ir_datasets docpairs offline: a local dataset (docs, queries, docpairs from Cranfield) streamed into training."""
from __future__ import annotations

import ir_datasets
import numpy as np
import pytest
from conftest import CountingTeacher
from ir_datasets.datasets.base import Dataset
from ir_datasets.formats import TsvDocPairs, TsvDocs, TsvQueries
from ir_datasets.util import LocalDownload

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses
from pyterrier_marginkd.data.stream import DocTexts


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def local_dataset(cranfield, tmp_path_factory):
    """Cranfield's first 40 training queries as an ir_datasets dataset with docpairs (relevant, random other)."""
    folder = tmp_path_factory.mktemp("irds")
    topics, qrels = cranfield.topics("train").head(40), cranfield.qrels("train")
    relevant = qrels[(qrels["label"] > 0) & qrels["qid"].isin(topics["qid"])]
    docnos = sorted(set(relevant["docno"]) | {str(d) for d in range(1, 201)}, key=int)
    (folder / "docs.tsv").write_text("".join(f"{d}\t{one_line(cranfield.text(d))}\n" for d in docnos))
    (folder / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in zip(topics["qid"], topics["query"])))
    rng = np.random.default_rng(0)
    lines = [f"{r.qid}\t{r.docno}\t{rng.choice(docnos)}\n" for r in relevant.itertuples()]
    (folder / "docpairs.tsv").write_text("".join(lines))
    dataset = Dataset(TsvDocs(LocalDownload(folder / "docs.tsv")), TsvQueries(LocalDownload(folder / "queries.tsv")),
                      TsvDocPairs(LocalDownload(folder / "docpairs.tsv")))
    if "marginkd-test/cranfield-pairs" not in ir_datasets.registry:
        ir_datasets.registry.register("marginkd-test/cranfield-pairs", dataset)
    return dataset, [line.split() for line in lines]


def test_docpairs_stream_query_and_document_texts(local_dataset, cranfield):
    dataset, pairs = local_dataset
    source = mkd.DocPairs(dataset, shuffle_buffer=8, seed=2)
    groups = source.groups(0)
    assert not isinstance(groups, list)
    groups = list(groups)
    assert source.num_groups() == len(groups) == len(pairs)
    assert sorted((g.qid, *g.docnos) for g in groups) == sorted(map(tuple, pairs))
    queries = dict(zip(cranfield.topics("train")["qid"], cranfield.topics("train")["query"]))
    for g in groups[:5]:
        assert g.labels == [1.0, 0.0] and g.teacher is None and g.query == queries[g.qid]
        assert g.texts == [one_line(cranfield.text(d)) for d in g.docnos]
    assert mkd.DocPairs("marginkd-test/cranfield-pairs", max_pairs=7).num_groups() == 7
    assert [p for p in mkd.DocPairs(dataset, max_pairs=3).pairs()] == [tuple(p) for p in pairs[:3]]
    docs = DocTexts(mkd.Collection("irds:marginkd-test/cranfield-pairs"))
    assert docs.texts(["3", "no-such-doc"]) == {"3": one_line(cranfield.text("3"))}


def test_unknown_ids_and_datasets_without_docpairs_are_named(local_dataset):
    dataset, _ = local_dataset
    with pytest.raises(ValueError, match="docpair 1 of .*unknown document id"):
        next(iter(mkd.DocPairs(dataset, docs={}, shuffle_buffer=0).groups(0)))
    with pytest.raises(ValueError, match="docpair 1 of .*unknown query id"):
        next(iter(mkd.DocPairs(dataset, queries={}, shuffle_buffer=0).groups(0)))
    with pytest.raises(TypeError, match="has no docpairs"):
        mkd.DocPairs(ir_datasets.create_dataset(queries_tsv=dataset.queries_path()))


def test_fit_pairs_with_labels_only_and_with_a_cached_teacher(local_dataset, tiny_bert_dir, tmp_path):
    dataset, pairs = local_dataset
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    baseline = mkd.Distiller(student, None, loss=losses.RankNet(), batch_size=8, output_dir=tmp_path / "labels")
    baseline.fit_pairs(dataset, shuffle_buffer=16)
    assert len(baseline.history) == -(-len(pairs) // 8)
    teacher = CountingTeacher()
    distiller = mkd.Distiller(student, teacher, batch_size=8, output_dir=tmp_path / "kd")
    distiller.fit_pairs("irds:marginkd-test/cranfield-pairs", max_pairs=24)
    assert distiller.report["groups_per_epoch"] == 24 and teacher.pairs <= 48
    scored = teacher.pairs
    again = mkd.Distiller(student, teacher, batch_size=8, output_dir=tmp_path / "kd", resume=False)
    again.fit_pairs("marginkd-test/cranfield-pairs", max_pairs=24)
    assert teacher.pairs == scored
    mkd.load(tmp_path / "kd" / "student")


def test_score_file_from_docpairs(local_dataset, tiny_bert_dir, tmp_path):
    dataset, pairs = local_dataset
    source = mkd.DocPairs(dataset)
    mkd.write_score_file(tmp_path / "s.tsv", source.pairs(), CountingTeacher(), source.queries, source.docs)
    read = list(mkd.read_score_file(tmp_path / "s.tsv"))
    assert [[t.query, t.pos, t.neg] for t in read] == pairs
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    trained = mkd.Distiller(student, None, batch_size=16, max_steps=2,
                            output_dir=tmp_path / "run")
    trained.fit_file(tmp_path / "s.tsv", dataset, dataset)
    assert len(trained.history) == 2
