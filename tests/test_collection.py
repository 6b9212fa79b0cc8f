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


def test_not_a_collection(tmp_path):
    with pytest.raises(FileNotFoundError, match="docs.jsonl.gz"):
        mkd.Collection(tmp_path)


def test_clean_query():
    assert mkd.clean_query("what's the   (lift) of a wing?") == "what s the lift of a wing"


def test_pisa_bm25_retrieves(cranfield, cranfield_bm25):
    res = cranfield_bm25(cranfield.topics("test").head(3))
    assert set(res.columns) >= {"qid", "docno", "score", "rank"}
    assert res.groupby("qid").size().max() == 20
