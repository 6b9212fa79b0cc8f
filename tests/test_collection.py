"""Reading real collections from the shared folder layout."""
from __future__ import annotations

import pandas as pd
import pytest

import pyterrier_marginkd as mkd


def test_local_folder_topics_qrels_and_text(cranfield):
    assert cranfield.splits() == ["test", "train"]
    train, test = cranfield.topics("train"), cranfield.topics("test")
    assert len(train) == 150 and len(test) == 75 and list(train.columns) == ["qid", "query"]
    assert not set(train.qid) & set(test.qid)
    assert not train["query"].str.contains(r"[^\w\s]").any()
    qrels = cranfield.qrels("train")
    assert list(qrels.columns) == ["qid", "docno", "label"] and qrels["label"].max() == 4
    res = pd.DataFrame({"qid": ["1"], "docno": ["1"]})
    text = cranfield.get_text()(res)["text"].iloc[0]
    assert text.startswith("experimental investigation of the aerodynamics")
    with pytest.raises(KeyError, match="docno 'nope'"):
        cranfield.get_text()(pd.DataFrame({"qid": ["1"], "docno": ["nope"]}))
    with pytest.raises(FileNotFoundError, match="split 'dev'"):
        cranfield.topics("dev")


def test_has_titles(cranfield, vaswani):
    assert cranfield.has_titles() and not vaswani.has_titles()


def test_not_a_collection(tmp_path):
    with pytest.raises(FileNotFoundError, match="docs.jsonl.gz"):
        mkd.Collection(tmp_path)


def test_clean_query():
    assert mkd.clean_query("what's the   (lift) of a wing?") == "what s the lift of a wing"


def test_pisa_bm25_retrieves(cranfield, cranfield_bm25):
    res = cranfield_bm25(cranfield.topics("test").head(3))
    assert set(res.columns) >= {"qid", "docno", "score", "rank"}
    assert res.groupby("qid").size().max() == 20


def _folder_without_splits(path, num_queries=10):
    import gzip
    import json

    with gzip.open(path / "docs.jsonl.gz", "wt") as out:
        for i in range(3):
            out.write(json.dumps({"docno": f"d{i}", "text": f"document {i}"}) + "\n")
    (path / "topics.tsv").write_text("".join(f"q{i}\tquery {i}\n" for i in range(num_queries)))
    (path / "qrels.txt").write_text("".join(f"q{i} 0 d{i % 3} 1\n" for i in range(num_queries)))
    return path


def test_collection_without_splits_holds_out_a_fixed_test_split(tmp_path):
    coll = mkd.Collection(_folder_without_splits(tmp_path))
    assert coll.splits() == [] and coll.derived_splits
    train, test = coll.topics("train"), coll.topics("test")
    assert len(test) == 3 and len(train) == 7
    assert not set(train.qid) & set(test.qid) and set(train.qid) | set(test.qid) == {f"q{i}" for i in range(10)}
    assert set(coll.qrels("test").qid) == set(test.qid) and set(coll.qrels("train").qid) == set(train.qid)
    again = mkd.Collection(tmp_path)
    assert list(again.topics("test").qid) == list(test.qid)           # the same split every time
    assert len(mkd.Collection(tmp_path, test_fraction=0.5).topics("test")) == 5
    with pytest.raises(FileNotFoundError, match="split 'dev'"):
        coll.topics("dev")                                           # only train/test are derived
    with pytest.raises(ValueError, match="test_fraction"):
        mkd.Collection(tmp_path, test_fraction=1.0)
    with pytest.raises(ValueError, match="too few"):
        mkd.Collection(_folder_without_splits(tmp_path, num_queries=1)).topics("train")


def test_cranfield_keeps_its_own_splits(cranfield):
    assert not cranfield.derived_splits


def test_irds_splits_from_the_registry():
    assert mkd.Collection("irds:beir/scifact").splits() == ["test", "train"]
    assert mkd.Collection("irds:vaswani").derived_splits
    with pytest.raises(KeyError, match="no dataset 'msmarco-passage/test'"):
        mkd.Collection("irds:msmarco-passage").topics("test")


def _docs_then_failure(collection, fail_after):
    """The collection's documents, with a download failure after ``fail_after`` of them."""
    def docs_iter():
        for i, doc in enumerate(mkd.Collection.docs_iter(collection)):
            if i == fail_after:
                raise ConnectionError("the download failed")
            yield doc
    return docs_iter


@pytest.mark.parametrize("fail_after", [0, 50])
def test_a_failed_indexing_leaves_nothing_behind(cranfield, tmp_path, monkeypatch, fail_after):
    collection = mkd.Collection(cranfield.path)
    monkeypatch.setattr(collection, "docs_iter", _docs_then_failure(collection, fail_after))
    with pytest.raises(ConnectionError, match="the download failed"):
        collection.bm25(tmp_path / "cranfield.pisa")
    assert list(tmp_path.iterdir()) == []   # no index folder, no temporary folder
    monkeypatch.undo()
    res = collection.bm25(tmp_path / "cranfield.pisa", num_results=5)(cranfield.topics("test").head(2))
    assert res.groupby("qid").size().tolist() == [5, 5]
    assert (tmp_path / "cranfield.pisa" / mkd.collection.INDEX_MARKER).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cranfield.pisa"]


def test_an_index_without_the_completion_marker_is_rebuilt(cranfield, tmp_path, caplog):
    from pyterrier_pisa import PisaIndex

    # what the old code left after a download failed midway: PISA indexed what it got and wrote its metadata
    partial = PisaIndex(str(tmp_path / "cranfield.pisa"), stemmer="porter2")
    partial.indexer(text_field="text").index({"docno": d["docno"], "text": d["text"]}
                                             for _, d in zip(range(20), cranfield.docs_iter()))
    with caplog.at_level("WARNING", logger="pyterrier_marginkd.data.collection"):
        bm25 = cranfield.bm25(tmp_path / "cranfield.pisa", num_results=50)
    assert "has no marginkd_complete.json: it is an incomplete index" in caplog.text
    res = bm25(cranfield.topics("test").head(5))
    assert res["docno"].astype(int).max() > 20   # documents beyond the partial index's first 20
    caplog.clear()
    cranfield.bm25(tmp_path / "cranfield.pisa")   # complete now: reused without a rebuild
    assert "incomplete" not in caplog.text


def test_an_index_folder_holding_other_files_is_not_replaced(cranfield, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="neither empty nor a PISA index"):
        cranfield.bm25(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
