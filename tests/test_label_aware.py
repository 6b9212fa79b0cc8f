"""Teachers and students that use the labels: students that mix in the first stage as fusion members, cross-fitted
fold models, the choice between the zero-shot and the label-aware teacher, and judged-only hard-label terms in a fit
that mixes judged queries with teacher-labelled pseudo-queries."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.ensemble import FirstStageScore, reads_first_stage
from pyterrier_marginkd.models.identity import describe
from pyterrier_marginkd.training.teacher_cache import LISTS_FOLDER, list_teacher_scores
from pyterrier_marginkd.training.teachers import ScoredOnce


def results(num_queries: int = 12, per_query: int = 6, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidate lists with a noisy first-stage score, and qrels judging each query's documents 0 and 1 relevant."""
    rng = np.random.default_rng(seed)
    rows = [{"qid": f"q{q}", "query": f"query {q}", "docno": f"d{d}", "text": f"text {q} {d}",
             "score": float(rng.normal())} for q in range(num_queries) for d in range(per_query)]
    qrels = pd.DataFrame([{"qid": f"q{q}", "docno": f"d{d}", "label": 1} for q in range(num_queries) for d in (0, 1)])
    return pd.DataFrame(rows), qrels


def oracle(strength: float = 1.0, noise: float = 0.0, seed: int = 1) -> pt.Transformer:
    """A scorer that knows the qrels (documents d0 and d1 are relevant), plus noise fixed per (seed, query, doc)."""
    def score(row) -> float:
        rng = np.random.default_rng([seed, *(ord(c) for c in f"{row['qid']}/{row['docno']}")])
        return strength * (row["docno"] in ("d0", "d1")) + noise * float(rng.normal())
    return pt.apply.doc_score(score)


def test_a_student_mixing_the_first_stage_is_a_fusion_member(tiny_bert_dir, small_results, tmp_path):
    student = mkd.DotEncoder.from_pretrained(tiny_bert_dir, first_stage="zscore", max_length=64)
    student.set_first_stage_weights(1.0, 2.0)
    assert reads_first_stage(student) and reads_first_stage(FirstStageScore())
    scored = small_results.assign(score=[3.0, 2.0, 1.0, 1.0, 2.0, 3.0])
    fused = mkd.Ensemble([FirstStageScore(), student], normalize="zscore")
    assert "score" in fused.transform_inputs[0]
    direct = fused(scored)
    # the Distiller's path scores whole lists through member caches: the mixing student gets the first-stage score
    via_cache = list_teacher_scores(fused, scored, tmp_path / "cache")
    np.testing.assert_allclose([via_cache[q, d] for q, d in zip(direct["qid"], direct["docno"])], direct["score"],
                               rtol=1e-6, atol=1e-6)
    calls = []
    spy = pt.apply.doc_score(lambda row: calls.append(1) or 0.0)
    with pytest.raises(KeyError, match="score"):  # refused before any member scores
        mkd.Ensemble([spy, student], normalize="zscore")(small_results)
    assert not calls


def test_cross_fitted_scores_each_judged_query_out_of_fold():
    frame, _ = results(num_queries=4, per_query=2)
    members = [pt.apply.doc_score(lambda row: 10.0), pt.apply.doc_score(lambda row: 20.0),
               pt.apply.doc_score(lambda row: 60.0)]
    # model i trained on every fold but i: a query of fold i is scored by model i alone, the one that never saw it
    folds = {"q0": 0, "q1": 1, "q2": 2}  # q3 is in no fold: a query none of the models trained on
    scored = mkd.CrossFitted(members, folds)(frame).set_index(["qid", "docno"])["score"]
    assert scored["q0", "d0"] == 10.0 and scored["q1", "d1"] == 20.0 and scored["q2", "d0"] == 60.0
    assert scored["q3", "d0"] == 30.0
    with pytest.raises(ValueError, match="at least 2 fold models"):
        mkd.CrossFitted(members[:1], {})
    with pytest.raises(ValueError, match=r"fold\(s\) \[3\]"):
        mkd.CrossFitted(members, {"q0": 3})


def test_choose_teacher_takes_the_label_aware_fusion_only_when_it_is_clearly_better():
    frame, qrels = results(num_queries=16)
    zero_shot = mkd.Ensemble([FirstStageScore(), oracle(noise=3.0)], normalize="zscore").fit(frame, qrels)
    chosen, report = mkd.choose_teacher(zero_shot, oracle(noise=0.1), frame, qrels)
    assert report["chosen"] == "label-aware" and chosen is not zero_shot and len(chosen.members) == 3
    assert report["gain"] > report["gain_standard_error"] > 0
    useless = pt.apply.doc_score(lambda row: 0.0)
    chosen, report = mkd.choose_teacher(zero_shot, useless, frame, qrels)
    assert report["chosen"] == "zero-shot" and chosen is zero_shot
    # out-of-fold scores of the training queries: the weights come from them, validation measures both as they are
    train, train_qrels = results(num_queries=16, seed=5)
    folds = {f"q{q}": q % 2 for q in range(16)}
    tuned = mkd.CrossFitted([oracle(noise=0.1), oracle(noise=0.1, seed=2)], folds)
    chosen, report = mkd.choose_teacher(zero_shot, tuned, frame.assign(qid="v" + frame["qid"]),
                                        qrels.assign(qid="v" + qrels["qid"]), fit_res=train, fit_qrels=train_qrels)
    assert report["chosen"] == "label-aware" and "out-of-fold" in report["label_aware"]
    assert report["validation_queries"] == 32  # chosen over the out-of-fold and the validation queries together
    # a teacher cache key tells fold assignments apart: other folds are another teacher
    other = mkd.CrossFitted(tuned.members, {q: 1 - f for q, f in folds.items()})
    assert describe(mkd.Ensemble([tuned])) != describe(mkd.Ensemble([other]))
    with pytest.raises(ValueError, match="fitted zero-shot fusion"):
        mkd.choose_teacher(mkd.Ensemble([FirstStageScore()], normalize="zscore"), useless, frame, qrels)


def test_out_of_fold_scores_choose_where_a_few_validation_queries_cannot():
    """Three validation queries cannot show a modest gain beyond one standard error; the 40 out-of-fold queries can."""
    valid, valid_qrels = results(num_queries=3, seed=7)
    valid, valid_qrels = valid.assign(qid="e" + valid["qid"]), valid_qrels.assign(qid="e" + valid_qrels["qid"])
    train, train_qrels = results(num_queries=40, seed=8)
    train = train.assign(qid="t" + train["qid"])
    train_qrels = train_qrels.assign(qid="t" + train_qrels["qid"])
    zero_shot = mkd.Ensemble([FirstStageScore(), oracle(noise=2.0, seed=3)], normalize="zscore").fit(train, train_qrels)
    weights = list(zero_shot.weights)
    folds = {q: i % 2 for i, q in enumerate(sorted(set(train["qid"])))}
    tuned = mkd.CrossFitted([oracle(noise=1.0, seed=4), oracle(noise=1.0, seed=5)], folds)
    _, on_validation = mkd.choose_teacher(zero_shot, tuned, valid, valid_qrels)
    # a gain on the 3 validation queries, but within one standard error of none
    assert on_validation["chosen"] == "zero-shot" and on_validation["validation_queries"] == 3
    assert 0 < on_validation["gain"] < on_validation["gain_standard_error"]
    chosen, everywhere = mkd.choose_teacher(zero_shot, tuned, valid, valid_qrels, fit_res=train, fit_qrels=train_qrels)
    assert everywhere["chosen"] == "label-aware" and everywhere["validation_queries"] == 43
    assert everywhere["gain"] > everywhere["gain_standard_error"] and len(chosen.members) == 3
    assert zero_shot.weights == weights  # cross-validating the zero-shot fusion left its weights as they were
    # fold models to choose, the model trained on every fitting query to teach (weights from the validation queries)
    full = oracle(noise=0.5, seed=6)
    chosen, refit = mkd.choose_teacher(zero_shot, full, valid, valid_qrels, fit_res=train, fit_qrels=train_qrels,
                                       out_of_fold=tuned)
    assert (refit["chosen"], refit["gain"], refit["validation_queries"]) == ("label-aware", everywhere["gain"], 43)
    assert chosen.members[2] is full and "validation queries" in refit["label_aware"]
    fitted = mkd.Ensemble([*zero_shot.members, full], normalize="zscore").fit(valid, valid_qrels)
    assert chosen.weights == fitted.weights
    # the full member as a function: trained only when chosen, and the same teacher as above
    made = []

    def member():
        made.append(full)
        return full
    chosen, lazy = mkd.choose_teacher(zero_shot, member, valid, valid_qrels, fit_res=train, fit_qrels=train_qrels,
                                      out_of_fold=tuned)
    assert made == [full] and chosen.members[2] is full and chosen.weights == fitted.weights and lazy == refit
    useless = mkd.CrossFitted([oracle(noise=50.0, seed=9), oracle(noise=50.0, seed=10)], folds)
    chosen, kept = mkd.choose_teacher(zero_shot, member, valid, valid_qrels, fit_res=train, fit_qrels=train_qrels,
                                      out_of_fold=useless)
    assert kept["chosen"] == "zero-shot" and chosen is zero_shot and kept["label_aware_weights"] is None
    assert made == [full]  # not trained for a teacher that was not chosen
    with pytest.raises(ValueError, match="a function that makes it is taken only with out_of_fold"):
        mkd.choose_teacher(zero_shot, member, valid, valid_qrels, fit_res=train, fit_qrels=train_qrels)
    with pytest.raises(ValueError, match="returned NoneType, not a scorer"):
        mkd.choose_teacher(zero_shot, lambda: None, valid, valid_qrels, fit_res=train, fit_qrels=train_qrels,
                           out_of_fold=tuned)
    with pytest.raises(ValueError, match="out_of_fold needs fit_res"):
        mkd.choose_teacher(zero_shot, full, valid, valid_qrels, out_of_fold=tuned)
    with pytest.raises(ValueError, match="share 3 queries"):
        mkd.choose_teacher(zero_shot, tuned, valid, valid_qrels, fit_res=pd.concat([train, valid]),
                           fit_qrels=train_qrels)


def counting(scorer: pt.Transformer, seen: list) -> pt.Transformer:
    """``scorer``, noting how many rows it is given."""
    return pt.apply.generic(lambda frame: seen.append(len(frame)) or scorer(frame))


def test_a_choice_scores_each_member_once():
    valid, valid_qrels = results(num_queries=4, seed=7)
    valid, valid_qrels = valid.assign(qid="e" + valid["qid"]), valid_qrels.assign(qid="e" + valid_qrels["qid"])
    train, train_qrels = results(num_queries=20, seed=8)
    zero_seen, fold_seen, full_seen = [], [], []
    zero_shot = mkd.Ensemble([FirstStageScore(), counting(oracle(noise=2.0, seed=3), zero_seen)],
                             normalize="zscore").fit(train, train_qrels)
    folds = {q: i % 2 for i, q in enumerate(sorted(set(train["qid"])))}
    tuned = counting(mkd.CrossFitted([oracle(noise=1.0, seed=4), oracle(noise=1.0, seed=5)], folds), fold_seen)
    full = counting(oracle(noise=0.5, seed=6), full_seen)
    zero_seen.clear()
    chosen, report = mkd.choose_teacher(zero_shot, full, valid, valid_qrels, fit_res=train, fit_qrels=train_qrels,
                                        out_of_fold=tuned)
    # two cross-validated fusions (a fit and a ranking per half) and a fit on the validation queries: once each
    assert report["chosen"] == "label-aware"
    assert sum(zero_seen) == sum(fold_seen) == len(train) + len(valid) and sum(full_seen) == len(valid)
    direct = mkd.Ensemble([*zero_shot.members, full], normalize="zscore").fit(valid, valid_qrels)
    assert chosen.weights == direct.weights  # the same weights as fitted on the members themselves

    # rows it has not scored go to the member (whole queries), in input order
    seen = []
    once = ScoredOnce(counting(oracle(noise=1.0, seed=4), seen), train[train["qid"] != "q3"])
    mixed = pd.concat([valid, train]).sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(once(mixed)["score"], oracle(noise=1.0, seed=4)(mixed)["score"])
    assert seen == [len(train) - 6, len(valid) + 6]


def test_hard_labels_reach_only_the_judged_groups(tiny_bert_dir, cranfield_train, tmp_path):
    res, qrels = cranfield_train
    judged = res[res["qid"].isin(sorted(set(res["qid"]))[:5])]
    pseudo = res[~res["qid"].isin(judged["qid"])].assign(qid=lambda f: "pq-" + f["qid"])
    teacher = pt.apply.doc_score(lambda row: float(len(set(row["query"].split()) & set(row["text"].split()))))
    seen = []

    class Recording(mkd.losses.JudgedOnly):
        def forward(self, student, teacher_scores=None, labels=None, judged=None):
            seen.append(judged.clone())
            return super().forward(student, teacher_scores, labels, judged)

    torch.manual_seed(0)
    student = mkd.DotEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    loss = mkd.losses.KLDiv() + Recording(mkd.losses.RankNet())
    distiller = mkd.Distiller(student, teacher, loss=loss, unjudged="teacher", epochs=1, batch_size=4,
                              num_negatives=3, output_dir=tmp_path / "kd")
    qrels = qrels[qrels["qid"].isin(judged["qid"])]
    groups = distiller.examples(pd.concat([judged, pseudo]), qrels).groups(0)
    assert {g.judged for g in groups if g.qid.startswith("pq-")} == {False}
    assert {g.judged for g in groups if not g.qid.startswith("pq-")} == {True}
    distiller.fit(pd.concat([judged, pseudo]), qrels)
    flags = torch.cat(seen)
    assert flags.any() and not flags.all()  # both kinds of group were trained on, told apart
    assert len(distiller.history) > 0 and np.isfinite(distiller.history[-1]["loss"])


def test_whole_list_scores_are_kept_for_the_same_candidates_and_only_for_them(tiny_bert_dir, small_results, tmp_path):
    student = mkd.DotEncoder.from_pretrained(tiny_bert_dir, first_stage="zscore", frozen_docs=True, max_length=64)
    student.set_first_stage_weights(1.0, 2.0)
    scored = small_results.assign(score=[3.0, 2.0, 1.0, 1.0, 2.0, 3.0])
    fused = mkd.Ensemble([FirstStageScore(), student], [0.5, 0.5], normalize="zscore")
    first = list_teacher_scores(fused, scored, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / LISTS_FOLDER).glob("*.npz"))) == 1
    encoded = []
    student.encode_queries = lambda texts, batch_size=None: encoded.append(list(texts)) or 1 / 0
    again = list_teacher_scores(fused, scored.sample(frac=1.0, random_state=1), tmp_path / "cache")
    assert again == first and not encoded  # the same candidates (in another order): read, nothing scored
    del student.encode_queries
    # another first-stage score, another text, another weight: each scores the lists afresh
    for changed, teacher in [(scored.assign(score=[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]), fused),
                             (scored.assign(text=scored["text"].str.upper()), fused),
                             (scored, mkd.Ensemble([FirstStageScore(), student], [0.2, 0.8], normalize="zscore"))]:
        direct = teacher(changed)
        got = list_teacher_scores(teacher, changed, tmp_path / "cache")
        np.testing.assert_allclose([got[q, d] for q, d in zip(direct["qid"], direct["docno"])], direct["score"],
                                   rtol=1e-6, atol=1e-6)
    assert len(list((tmp_path / "cache" / LISTS_FOLDER).glob("*.npz"))) == 4
    assert not list((tmp_path / "cache" / LISTS_FOLDER).glob("*partial*"))


def test_frozen_document_vectors_encode_each_query_once_per_call(tiny_bert_dir, small_results):
    frozen = mkd.DotEncoder.from_pretrained(tiny_bert_dir, frozen_docs=True, max_length=64)
    frozen.chunk_size = 2  # many chunks: sorted by text, a query would come back in several of them
    queries = [f"query {i % 3}" for i in range(12)]
    texts = [f"document {i % 4}" for i in range(12)]
    expected = np.einsum("ij,ij->i", frozen.encode_queries(queries), frozen.encode_docs(texts))
    seen = []
    encode = frozen.encode_queries
    frozen.encode_queries = lambda batch, batch_size=None: seen.extend(batch) or encode(batch, batch_size)
    np.testing.assert_allclose(frozen.score_pairs(queries, texts), expected, rtol=1e-5, atol=1e-6)
    assert sorted(seen) == sorted(set(queries))
