"""IDCM cascade: equals max-passage scoring when nothing is cut, scores exactly k passages per document otherwise,
keeps PyTerrier's contract, and its selector learns from the scorer."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import torch
from conftest import overlap_score

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses


class Counting(pt.Transformer):
    """Scores passages with ``fn`` and remembers which passages it was asked to score."""

    def __init__(self, fn):
        self.fn = fn
        self.seen: list[str] = []

    def transform(self, inp):
        self.seen.extend(inp["docno"])
        return inp.assign(score=[float(self.fn(r)) for _, r in inp.iterrows()])

    def schematic(self, *, input_columns=None):
        return {"label": "Counting", "help_url": None}

    def __repr__(self):
        return "Counting()"


def hits(row) -> float:
    return row["text"].split().count("hit") + 0.001 * len(row["text"])


def first_passages(row) -> float:
    return -float(row["docno"].rsplit("%p", 1)[1])


def words(n: int, hit_every: int) -> str:
    return " ".join("hit" if i % hit_every == 0 else f"w{i}" for i in range(n))


@pytest.fixture()
def docs() -> pd.DataFrame:
    """Three documents of 1, 4 and 9 passages (8 words every 4) for two queries, plus a column to keep."""
    texts = {"short": "hit or miss", "mid": words(20, 7), "long": words(40, 3)}
    rows = [(q, f"query {q}", d, t) for q in ("q1", "q2") for d, t in texts.items()]
    frame = pd.DataFrame(rows, columns=["qid", "query", "docno", "text"])
    return frame.assign(extra=range(len(frame)), score=0.0, rank=0)


def reference_max_passage(docs: pd.DataFrame) -> pd.Series:
    pipe = pt.text.sliding(text_attr="text", length=8, stride=4, prepend_attr=None) >> pt.apply.doc_score(hits) \
        >> pt.text.max_passage()
    out = pipe(docs[["qid", "query", "docno", "text"]])
    return out.set_index(["qid", "docno"])["score"]


def test_all_passages_selected_equals_max_passage_scoring(docs):
    selector, scorer = Counting(first_passages), Counting(hits)
    out = mkd.Cascade(selector, scorer, k=9, passage_length=8, stride=4)(docs)
    expected = reference_max_passage(docs)
    got = out.set_index(["qid", "docno"])["score"]
    np.testing.assert_allclose(got.loc[expected.index], expected, rtol=1e-9)
    assert selector.seen == []                      # no document has more than k passages: nothing to select
    assert len(scorer.seen) == 2 * (1 + 4 + 9)


def test_small_k_scores_exactly_k_passages_per_document(docs):
    selector, scorer = Counting(first_passages), Counting(hits)
    cascade = mkd.Cascade(selector, scorer, k=2, passage_length=8, stride=4)
    out = cascade(docs)
    per_doc = Counter(d.rsplit("%p", 1)[0] for d in scorer.seen)
    assert per_doc == {"short": 2 * 1, "mid": 2 * 2, "long": 2 * 2}
    # the selector ranked early passages first, so the scorer read passages 0 and 1 of each long document
    assert sorted(set(scorer.seen)) == ["long%p0", "long%p1", "mid%p0", "mid%p1", "short%p0"]
    assert Counter(d.rsplit("%p", 1)[0] for d in selector.seen) == {"mid": 2 * 4, "long": 2 * 9}
    passages = cascade.passages(docs).assign(score=lambda f: [hits(r) for _, r in f.iterrows()])
    long_q1 = passages[(passages.qid == "q1") & (passages.parent_docno == "long")]
    assert out.set_index(["qid", "docno"]).loc[("q1", "long"), "score"] == pytest.approx(
        long_q1[long_q1.passage < 2]["score"].max())


def test_first_k_averages_the_selected_passages(docs):
    cascade = mkd.Cascade(Counting(first_passages), Counting(hits), k=3, passage_length=8, stride=4,
                          aggregate="first-k")
    out = cascade(docs).set_index(["qid", "docno"])["score"]
    passages = cascade.passages(docs).assign(score=lambda f: [hits(r) for _, r in f.iterrows()])
    mid = passages[(passages.qid == "q2") & (passages.parent_docno == "mid") & (passages.passage < 3)]
    assert out.loc[("q2", "mid")] == pytest.approx(mid["score"].mean())
    assert out.loc[("q2", "short")] == pytest.approx(hits({"text": "hit or miss"}))


def test_pyterrier_contract(docs):
    cascade = mkd.Cascade(Counting(first_passages), Counting(hits), k=2, passage_length=8, stride=4)
    out = cascade(docs)
    assert len(out) == len(docs) and set(out.columns) == set(docs.columns)
    assert sorted(out["extra"]) == list(range(len(docs)))
    assert out.groupby("qid")["rank"].apply(lambda r: sorted(r) == list(range(len(r)))).all()
    assert (out.sort_values(["qid", "rank"]).groupby("qid")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    empty = cascade(docs.iloc[:0])
    assert len(empty) == 0 and {"score", "rank"} <= set(empty.columns)
    with pytest.raises(pt.validate.InputValidationError, match="text"):
        cascade(docs.drop(columns=["text"]))
    assert list(cascade.subtransformers()) == ["selector", "scorer"]
    assert repr(cascade).startswith("Cascade(Counting(), Counting(), k=2")


def test_titles_are_prepended_to_every_passage(docs):
    titled = docs.assign(title="A Title")
    passages = mkd.Cascade(Counting(first_passages), Counting(hits), k=2, passage_length=8, stride=4,
                           title_field="title").passages(titled)
    assert passages["text"].str.startswith("A Title ").all()
    assert len(passages) == 2 * (1 + 4 + 9)


def test_bad_settings_and_stages_are_named(docs):
    with pytest.raises(ValueError, match="aggregate must be one of"):
        mkd.Cascade(Counting(hits), Counting(hits), aggregate="mean")
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        mkd.Cascade(Counting(hits), Counting(hits), k=0)
    dropping = pt.apply.generic(lambda df: df.iloc[1:].assign(score=1.0))
    with pytest.raises(ValueError, match="scorer .* dropped 1 of"):
        mkd.Cascade(Counting(hits), dropping, k=9, passage_length=8, stride=4)(docs)
    with pytest.raises(ValueError, match="selector .* must return a frame with a 'score' column"):
        mkd.Cascade(pt.apply.generic(lambda df: df), Counting(hits), k=1, passage_length=8, stride=4)(docs)


@pt.testing.transformer_test_class
def test_cascade_is_a_pyterrier_transformer():
    return mkd.Cascade(Counting(first_passages), Counting(hits), k=2, passage_length=8, stride=4)


def groups_loss(selector, groups, loss) -> float:
    batch = groups.groups(0)
    scores = selector.score_pairs([g.query for g in batch for _ in g.docnos], [t for g in batch for t in g.texts])
    student = torch.tensor(scores, dtype=torch.float32).view(len(batch), -1)
    return float(loss(student, torch.tensor([g.teacher for g in batch])))


def test_selector_distils_from_the_scorer(cranfield, cranfield_bm25, tiny_bert_dir, tmp_path):
    results = (cranfield_bm25 % 4 >> cranfield.get_text())(cranfield.topics("train").head(6))
    torch.manual_seed(0)
    selector = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=48)
    scorer = Counting(overlap_score)
    cascade = mkd.Cascade(selector, scorer, k=2, passage_length=24, stride=12)
    groups = cascade.selector_groups(results, group_size=4)
    assert groups.report["documents_used"] > 10 and len(scorer.seen) == groups.report["passages_scored"]
    first = groups.groups(0)[0]
    assert len(first.docnos) == 4 and first.labels is None and first.teacher[0] == max(first.teacher)
    loss = losses.MarginMSE()
    before = groups_loss(selector, groups, loss)
    distiller = mkd.Distiller(selector, scorer, loss=loss, epochs=8, batch_size=4, lr=1e-2, seed=1, teacher_scale=None,
                              output_dir=tmp_path / "selector")
    distiller.fit_groups(groups)
    assert len(scorer.seen) == groups.report["passages_scored"]     # teacher scores came with the groups
    assert groups_loss(selector, groups, loss) < 0.5 * before
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        cascade.selector_groups(results, group_size=1)
