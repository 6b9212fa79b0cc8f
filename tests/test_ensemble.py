"""Ensemble: the (weighted) mean of its members' scores, aligned by (qid, docno), with named errors."""
from __future__ import annotations

import numpy as np
import pyterrier as pt
import pytest

import pyterrier_marginkd as mkd


def length_scorer():
    return pt.apply.doc_score(lambda row: float(len(row["text"])))


def overlap_scorer():
    return pt.apply.doc_score(lambda row: float(len(set(row["query"].split()) & set(row["text"].split()))))


def test_score_is_the_mean_of_its_members(small_results, tiny_ce):
    members = [length_scorer(), overlap_scorer(), tiny_ce]
    out = mkd.Ensemble(members)(small_results)
    each = [m(small_results)["score"].to_numpy() for m in members]
    np.testing.assert_allclose(out["score"], np.mean(each, axis=0), rtol=1e-9)
    assert list(out["extra"]) == list(small_results["extra"])
    assert {"rank", "query", "text"} <= set(out.columns)
    assert out.groupby("qid")["rank"].min().eq(0).all()


def test_weighted_mean(small_results):
    out = mkd.Ensemble([length_scorer(), overlap_scorer()], weights=[3, 1])(small_results)
    expected = (3 * length_scorer()(small_results)["score"] + overlap_scorer()(small_results)["score"]) / 4
    np.testing.assert_allclose(out["score"], expected)


def test_members_are_aligned_by_qid_and_docno(small_results):
    reversing = pt.apply.generic(lambda df: df.iloc[::-1].assign(score=[float(len(t)) for t in df["text"][::-1]]))
    out = mkd.Ensemble([reversing, length_scorer()])(small_results)
    np.testing.assert_allclose(out["score"], small_results["text"].str.len())


def test_empty_in_empty_out(small_results):
    out = mkd.Ensemble([length_scorer()])(small_results.iloc[:0])
    assert len(out) == 0 and {"score", "rank", "extra"} <= set(out.columns)


def test_errors_name_the_member(small_results):
    dropping = pt.apply.generic(lambda df: df.iloc[1:].assign(score=1.0))
    with pytest.raises(ValueError, match="member 1 .* no score for 1 of the 6 rows"):
        mkd.Ensemble([length_scorer(), dropping])(small_results)
    nan = pt.apply.generic(lambda df: df.assign(score=np.where(df["docno"] == "d2", np.nan, 1.0)))
    with pytest.raises(ValueError, match="member 0 .* non-finite"):
        mkd.Ensemble([nan])(small_results)
    no_score = pt.apply.generic(lambda df: df.assign(relevance=1.0))
    with pytest.raises(ValueError, match="must return a 'score' column"):
        mkd.Ensemble([no_score])(small_results)
    with pytest.raises(ValueError, match="duplicate"):
        mkd.Ensemble([length_scorer()])(small_results.iloc[[0, 0, 1]])
    with pytest.raises(ValueError, match="2 weights for 1 members"):
        mkd.Ensemble([length_scorer()], weights=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        mkd.Ensemble([length_scorer()], weights=[-1])
    with pytest.raises(TypeError, match="member 0"):
        mkd.Ensemble([lambda df: df])
    with pytest.raises(pt.validate.InputValidationError):
        mkd.Ensemble([mkd.Ensemble([length_scorer()])])(small_results.drop(columns=["docno"]))


def test_repr_inputs_and_schematic(tiny_ce):
    ensemble = mkd.Ensemble([tiny_ce, length_scorer()], weights=[2, 1])
    assert repr(ensemble).startswith("Ensemble([CrossEncoder(") and repr(ensemble).endswith("weights=[2.0, 1.0])")
    assert pt.inspect.transformer_inputs(ensemble) == [["qid", "docno", "query", "text"]]
    assert pt.inspect.subtransformers(ensemble) == {"members": ensemble.members}


class TextLength(pt.Transformer):
    """A scorer that declares its inputs and has no online documentation (pt.apply's help_url goes online)."""

    transform_inputs = [["qid", "docno", "text"]]

    def transform(self, inp):
        return inp.assign(score=inp["text"].str.len().astype(float))

    def schematic(self, *, input_columns=None):
        return {"label": "TextLength", "help_url": None}


@pt.testing.transformer_test_class
def test_ensemble_is_a_pyterrier_transformer():
    return mkd.Ensemble([TextLength(), TextLength()], weights=[1, 2])


def test_rank_cutoff_after_a_reranker_keeps_its_top_k(small_results, tiny_ce):
    """``reranker % k`` re-ranks every candidate, then keeps the top k of each query; no re-ranker of ours claims to
    fuse the cutoff into itself (a ``fuse_rank_cutoff`` that only returned None was dead code)."""
    from pyterrier.transformer import SupportsFuseRankCutoff

    frame = small_results.assign(score=[3.0, 2.0, 1.0, 3.0, 2.0, 1.0])
    rerankers = [mkd.Ensemble([mkd.FirstStageScore(), tiny_ce], normalize="zscore"), mkd.FirstStageScore(),
                 mkd.Cascade(tiny_ce, tiny_ce, k=2, passage_length=8, stride=4), tiny_ce]
    assert not isinstance(mkd.Distiller(tiny_ce), SupportsFuseRankCutoff)
    for reranker in rerankers:
        assert not isinstance(reranker, SupportsFuseRankCutoff), reranker
        full = reranker(frame).sort_values(["qid", "score"], ascending=[True, False], kind="stable")
        top = (reranker % 2)(frame)
        assert sorted(zip(top["qid"], top["docno"])) == sorted(zip(full.groupby("qid").head(2)["qid"],
                                                                   full.groupby("qid").head(2)["docno"])), reranker
