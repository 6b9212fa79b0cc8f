"""Teachers that use the labels: a fusion of the first stage, zero-shot scorers and a scorer fine-tuned on the judged
queries, its weights fitted on queries the fine-tuned scorer never trained on, chosen on validation against the
zero-shot fusion."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_marginkd.data.evaluation import per_query_ndcg10
from pyterrier_marginkd.data.frames import add_scores, pair_keys, scores_by_pair
from pyterrier_marginkd.data.groups import validate_qrels
from pyterrier_marginkd.models.ensemble import Ensemble, FirstStageScore


class ScoredOnce(pt.Transformer):
    """``member`` with its scores of ``results`` computed once, up front: choosing a teacher cross-validates fusions
    over the same judged candidates again and again (every fit and every held-out ranking of each fold), and each
    member then scores them once instead of every time. Rows of queries it has not scored go to ``member``; rows come
    back in input order with fresh ranks. A member whose score of a row depends on its query's other candidates (one
    that reads the first-stage score) must be given whole candidate lists, as the choice does."""

    def __init__(self, member: pt.Transformer, results: pd.DataFrame):
        self.member = member
        # a member that mixes in the first-stage score is still one for the Ensemble's input check
        self.first_stage = getattr(member, "first_stage", None)
        self.scores = scores_by_pair(member(results), coerce=True)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        keys = pair_keys(inp)
        values = np.array(self.scores.reindex(keys), dtype=float)
        unscored = ~keys.isin(self.scores.index)
        if unscored.any():  # queries scored now: whole lists, as the member was given them
            rows = inp["qid"].astype(str).isin(set(keys[unscored].get_level_values(0))).to_numpy()
            fresh = scores_by_pair(self.member(inp[rows]), coerce=True)
            values[rows] = fresh.reindex(keys[rows]).to_numpy(dtype=float)
        return add_scores(inp, values)

    def __repr__(self) -> str:
        return f"ScoredOnce({self.member!r}, {len(self.scores)} rows)"


def assign_folds(qids: Sequence[str], folds: int, seed: int = 0) -> dict[str, int]:
    """Each query's fold (0 .. folds - 1): the queries shuffled with ``seed`` and dealt out in turn, so folds differ
    in size by at most one."""
    shuffled = np.random.default_rng(seed).permutation(np.asarray(sorted(qids), dtype=object))
    return {str(q): i % folds for i, q in enumerate(shuffled)}


def cross_validated_ndcg(ensemble: Ensemble, results: pd.DataFrame, qrels: pd.DataFrame, *, folds: int = 2,
                         seed: int = 0, **fit_kwargs: Any) -> pd.Series:
    """nDCG@10 of each judged query of ``results`` ranked by ``ensemble`` with weights fitted out of fold: the judged
    queries are split into ``folds`` parts, and each part is ranked with the weights fitted on the others — an
    estimate that the weights' own queries cannot flatter. ``ensemble.weights`` are left as they were."""
    qrels = validate_qrels(qrels)
    qids = np.array(sorted(set(results["qid"].astype(str)) & set(qrels["qid"])))
    if len(qids) < folds:
        raise ValueError(f"cross-validating fusion weights in {folds} folds needs at least {folds} judged queries, "
                         f"got {len(qids)}")
    saved = ensemble.weights, ensemble.fit_report
    fold_of = assign_folds(qids, folds, seed)
    result_fold = results["qid"].astype(str).map(fold_of)
    ranked = []
    try:
        for fold in range(folds):
            held_out = result_fold == fold
            ensemble.fit(results[~held_out & result_fold.notna()], qrels, **fit_kwargs)
            ranked.append(ensemble.transform(results[held_out]))
    finally:
        ensemble.weights, ensemble.fit_report = saved
    return per_query_ndcg10(pd.concat(ranked, ignore_index=True), qrels)


def choose_teacher(zero_shot: Ensemble, tuned: pt.Transformer | Callable[[], pt.Transformer], valid_res: pd.DataFrame,
                   valid_qrels: pd.DataFrame, *, fit_res: pd.DataFrame | None = None,
                   fit_qrels: pd.DataFrame | None = None, out_of_fold: pt.Transformer | None = None,
                   seed: int = 0) -> tuple[Ensemble, dict[str, Any]]:
    """The better teacher: ``zero_shot`` (a fitted fusion, its weights from other queries) or the label-aware fusion
    of its members and ``tuned``, a scorer fine-tuned on the judged training queries.

    Three ways to measure the label-aware fusion, from the fewest queries to the most:

    - ``tuned`` alone: it has seen the training queries, so the label-aware weights are fitted on the validation
      queries and its validation nDCG@10 is cross-validated there (weights fitted on one half, measured on the other).
    - ``fit_res``/``fit_qrels`` with ``tuned`` a
      :class:`~pyterrier_marginkd.models.crossfit.CrossFitted` scorer: every judged query — the fitting queries
      (scored out of fold) and the validation queries alike — is one it never trained on. Both fusions are measured
      on all of them with weights cross-validated over them (the same halves for both), the label-aware weights are
      fitted on all of them, and the CrossFitted scorer is the member (students learn its out-of-fold scores).
    - ``out_of_fold`` (a CrossFitted scorer of fold models) with ``fit_res``/``fit_qrels``: the choice is measured
      as just said, on the fold models' out-of-fold scores of every judged query, but the teacher keeps ``tuned``,
      the model trained on all the fitting queries, its weights fitted on the validation queries it never saw
      (cross-validation to choose, the full model to teach). Since the choice never reads ``tuned`` then, it may be
      a function that makes it (trains it), called only when the label-aware fusion is chosen: a run that keeps the
      zero-shot fusion never trains it (``label_aware_weights`` is then None).

    A few dozen validation queries cannot tell two teachers apart; all the judged queries can. The label-aware
    teacher is chosen only when it is clearly better: its mean gain over the zero-shot fusion must exceed one
    standard error of the per-query gains (the one-standard-error rule of :meth:`Ensemble.fit`), so that a few
    queries cannot swap a teacher its students learn well for one that only looks better. Returns the chosen
    Ensemble and a report of both estimates and the choice.
    """
    if zero_shot.weights is None:
        raise ValueError("choose_teacher needs a fitted zero-shot fusion (call zero_shot.fit(results, qrels) first)")
    if (fit_res is None) != (fit_qrels is None):
        raise ValueError("give both fit_res and fit_qrels (out-of-fold scores to fit the weights on), or neither")
    if out_of_fold is not None and fit_res is None:
        raise ValueError("out_of_fold needs fit_res and fit_qrels: the judged queries its fold models scored")
    lazy = not isinstance(tuned, pt.Transformer)
    if lazy and (out_of_fold is None or not callable(tuned)):
        raise ValueError(f"tuned must be a scorer (a pyterrier Transformer), got {type(tuned).__name__}; a function "
                         "that makes it is taken only with out_of_fold (the choice then never reads it)")
    valid_qrels = validate_qrels(valid_qrels)
    aware = None if lazy else Ensemble([*zero_shot.members, tuned], normalize=zero_shot.normalize)
    if fit_res is not None:
        shared = set(fit_res["qid"].astype(str)) & set(valid_res["qid"].astype(str))
        if shared:
            raise ValueError(f"fit_res and valid_res share {len(shared)} queries (e.g. {sorted(shared)[:3]}): the "
                             "out-of-fold and the validation queries must be different queries")
        judged_res = pd.concat([fit_res, valid_res], ignore_index=True)
        judged_qrels = pd.concat([validate_qrels(fit_qrels), valid_qrels], ignore_index=True).drop_duplicates(
            ["qid", "docno"])
        # each member scores the judged candidates once for every fit and ranking below
        once = [m if isinstance(m, FirstStageScore) else ScoredOnce(m, judged_res) for m in zero_shot.members]
        third = ScoredOnce(tuned if out_of_fold is None else out_of_fold, judged_res)
        measured = Ensemble([*once, third], normalize=zero_shot.normalize)
        # the same halves for both fusions (same seed): a paired comparison
        zero_shot_ndcg = cross_validated_ndcg(Ensemble(once, zero_shot.weights, normalize=zero_shot.normalize),
                                              judged_res, judged_qrels, seed=seed)
        aware_ndcg = cross_validated_ndcg(measured, judged_res, judged_qrels, seed=seed)
        if out_of_fold is None:
            measured.fit(judged_res, judged_qrels)
            aware.weights, aware.fit_report = measured.weights, measured.fit_report
            how = ("out-of-fold scores of the fitting queries and the validation queries: both fusions "
                   "cross-validated over all of them, the label-aware weights fitted on them")
        else:
            how = ("chosen on the fold models' out-of-fold scores of the fitting and the validation queries (both "
                   "fusions cross-validated over all of them); the member trained on all the fitting queries kept, "
                   "its weights fitted on the validation queries")
    else:
        zero_shot_ndcg = per_query_ndcg10(zero_shot.transform(valid_res), valid_qrels)
        aware_ndcg = cross_validated_ndcg(aware, valid_res, valid_qrels, seed=seed)
        aware.fit(valid_res, valid_qrels)
        how = "weights fitted on the validation queries; its validation nDCG@10 cross-validated"
    gain = (aware_ndcg - zero_shot_ndcg.reindex(aware_ndcg.index).fillna(0.0)).to_numpy()
    standard_error = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    chosen = "label-aware" if gain.mean() > standard_error else "zero-shot"
    if out_of_fold is not None and (chosen == "label-aware" or not lazy):
        if lazy:
            made = tuned()
            if not isinstance(made, pt.Transformer):
                raise ValueError(f"the function given as tuned returned {type(made).__name__}, not a scorer")
            aware = Ensemble([*zero_shot.members, made], normalize=zero_shot.normalize)
        # the zero-shot members' scores of the validation queries are among those already computed
        fitted = Ensemble([*once, aware.members[-1]], normalize=zero_shot.normalize).fit(valid_res, valid_qrels)
        aware.weights, aware.fit_report = fitted.weights, fitted.fit_report
    report = {"chosen": chosen, "zero_shot_validation_ndcg@10": float(zero_shot_ndcg.mean()),
              "label_aware_validation_ndcg@10": float(aware_ndcg.mean()), "label_aware": how,
              "gain": float(gain.mean()), "gain_standard_error": standard_error,
              "label_aware_weights": aware.weights if aware is not None else None,
              "zero_shot_weights": zero_shot.weights, "validation_queries": int(len(gain))}
    return (aware if chosen == "label-aware" else zero_shot), report
