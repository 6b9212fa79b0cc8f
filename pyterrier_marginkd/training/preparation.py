"""From first-stage results to training groups, and what a run settles before its first step: judged and label-free
examples, first-stage scores to mix in, teacher scores of whole candidate lists, the teacher-score scale and the
starting weights of a first-stage mix."""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_marginkd.data.groups import (
    GroupSource,
    TeacherRankedExamples,
    TrainingExamples,
    validate_qrels,
    validate_training_results,
)
from pyterrier_marginkd.losses import RankingLoss
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.ensemble import normalize_scores
from pyterrier_marginkd.training.settings import TrainSettings
from pyterrier_marginkd.training.teacher_cache import TeacherScores, list_teacher_scores, margin_std


def mixes_first_stage(student: NeuralScorer) -> bool:
    """Whether the student adds the first stage's (normalised) score to its own."""
    return getattr(student, "first_stage", None) is not None


def scores_whole_lists(teacher: pt.Transformer | None) -> bool:
    """Whether the teacher's score of a candidate depends on its query's other candidates (fusion with a per-query
    normalisation): then it scores whole candidate lists up front, not the pairs of each batch."""
    return bool(getattr(teacher, "scores_whole_lists", False))


def check_validation(student: NeuralScorer, va_res: pd.DataFrame | None,
                     va_qrels: pd.DataFrame | None) -> pd.DataFrame | None:
    """Refuse validation arguments that cannot be used (before anything expensive); return the validated qrels."""
    if (va_res is None) != (va_qrels is None):
        raise ValueError("give both va_res and va_qrels for validation, or neither "
                         f"(got only {'va_res' if va_qrels is None else 'va_qrels'})")
    if va_qrels is not None:
        va_qrels = validate_qrels(va_qrels)
    if va_res is not None and mixes_first_stage(student) and "score" not in va_res.columns:
        raise ValueError("the student mixes in the first stage's score, but the validation results have no "
                         "'score' column; pass a retriever's results")
    return va_qrels


def first_stage_scores(student: NeuralScorer, tr_res: pd.DataFrame) -> dict[tuple[str, str], float] | None:
    """Each training candidate's first-stage score, normalised within its query as the student normalises it."""
    if not mixes_first_stage(student):
        return None
    if "score" not in tr_res.columns:
        raise ValueError(f"the student mixes in the first stage's score (first_stage={student.first_stage!r}), but "
                         "the training results have no 'score' column; train on a retriever's results, e.g. "
                         "(bm25 >> get_text >> distiller).fit(...)")
    rows = tr_res.assign(qid=tr_res["qid"].astype(str), docno=tr_res["docno"].astype(str))
    rows = rows.drop_duplicates(["qid", "docno"])
    scores = pd.to_numeric(rows["score"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(scores).all():
        raise ValueError(f"the training results' 'score' column holds {int((~np.isfinite(scores)).sum())} "
                         "non-finite value(s) (NaN/inf)")
    values = normalize_scores(rows["qid"], scores, student.first_stage)
    return dict(zip(zip(rows["qid"], rows["docno"]), values.astype(float)))


def whole_list_scores(teacher: pt.Transformer, tr_res: pd.DataFrame, cache_dir: str | os.PathLike, *,
                      text_field: str, verbose: bool, teacher_id: str | None = None) -> dict[tuple[str, str], float]:
    """The teacher's scores of the training candidates, each query's list scored as a whole."""
    validate_training_results(tr_res, text_field)
    if verbose:
        print(f"Distiller: the teacher scores the {len(tr_res)} training candidates as whole lists", flush=True)
    return list_teacher_scores(teacher, tr_res, cache_dir, text_field=text_field, verbose=verbose,
                               teacher_id=teacher_id)


def build_examples(settings: TrainSettings, text_field: str, teacher: pt.Transformer | None,
                   tr_res: pd.DataFrame, tr_qrels: pd.DataFrame | None, cache_dir: Path,
                   open_cache: Callable[[], TeacherScores], *,
                   teacher_scores: dict[tuple[str, str], float] | None = None) -> GroupSource:
    """Training groups of results and qrels: judged queries from their qrels; with ``tr_qrels=None`` or
    ``unjudged="teacher"`` the queries without qrels from the teacher's ranking of their candidates
    (``teacher_scores``, else the teacher's: whole lists cached under ``cache_dir``, pairs in ``open_cache()``)."""
    sampling = dict(num_negatives=settings.num_negatives, negative_sampling=settings.negative_sampling,
                    graded=settings.graded, text_field=text_field, seed=settings.seed)
    if tr_qrels is not None and settings.unjudged == "skip":
        return TrainingExamples(tr_res, tr_qrels, **sampling)
    if teacher is None:
        raise ValueError("label-free training (qrels=None or unjudged='teacher') needs a teacher to rank the "
                         "candidates; pass teacher=...")
    validate_training_results(tr_res, text_field)
    tr_res = tr_res.assign(qid=tr_res["qid"].astype(str), docno=tr_res["docno"].astype(str))
    judged, judged_qids = None, set()
    if tr_qrels is not None:
        tr_qrels = validate_qrels(tr_qrels)
        judged_qids = set(tr_qrels["qid"]) & set(tr_res["qid"])
        if judged_qids:
            judged = TrainingExamples(tr_res[tr_res["qid"].isin(judged_qids)], tr_qrels, allow_empty=True,
                                      **sampling)
    unjudged = tr_res[~tr_res["qid"].isin(judged_qids)]
    if teacher_scores is not None:
        scores = teacher_scores
    elif scores_whole_lists(teacher):
        scores = whole_list_scores(teacher, unjudged, cache_dir, text_field=text_field, verbose=settings.verbose,
                                   teacher_id=settings.teacher_id)
    else:
        cache = open_cache()
        try:
            scores = cache.scores(unjudged[["qid", "query", "docno", text_field]])
        finally:
            cache.close()
    return TeacherRankedExamples(unjudged, scores, num_positives=settings.pseudo_positives,
                                 negative_start=settings.pseudo_negative_start, num_negatives=settings.num_negatives,
                                 judged=judged, text_field=text_field, seed=settings.seed)


def require_teacher_scores(loss: RankingLoss, source: GroupSource, teacher: TeacherScores | None) -> None:
    """Fail early when the loss distils from a teacher but neither a teacher nor the data provides scores."""
    if not loss.needs_teacher or teacher is not None:
        return
    first = next(iter(source.groups(0)), None)
    if first is not None and first.teacher is None:
        raise ValueError(f"{loss!r} distils from a teacher, but teacher=None and the training data carries no "
                         "teacher scores; pass a teacher, train from a teacher-score file (fit_file), or use a label "
                         "loss such as losses.RankNet() for the label-only baseline")


def teacher_scale_factor(teacher_scale: float | str | None, source: GroupSource, teacher: TeacherScores | None,
                         report: dict[str, Any], sample: int = 256) -> float:
    """Factor applied to teacher scores: ``teacher_scale``, or with "auto", one that gives teacher margins unit
    standard deviation when they live on a small scale (std < 0.5: cosine similarities, probabilities)."""
    if teacher_scale is None:
        return 1.0
    if not isinstance(teacher_scale, str):
        return float(teacher_scale)
    groups = list(itertools.islice(iter(source.groups(0)), sample))
    if teacher is not None:
        teacher.fill(groups)
    std = margin_std(groups)
    if std is None:
        return 1.0
    factor = 1.0 / std if 0 < std < 0.5 else 1.0
    report["teacher_margin_std"], report["teacher_scale_factor"] = std, factor
    return factor


def init_first_stage_mix(student: NeuralScorer, source: GroupSource, teacher: TeacherScores | None,
                         teacher_factor: float, fit_teacher: bool, report: dict[str, Any], sample: int = 256) -> None:
    """Start a student's first-stage mixing at the weights that best fit the teacher's margins (least squares on the
    first groups: margins of the student's neural score and of the normalised first-stage score); without teacher
    scores (or ``fit_teacher=False``), at weights that give both the same spread of margins (an even fusion)."""
    groups = list(itertools.islice(iter(source.groups(0)), sample))
    if teacher is not None:
        teacher.fill(groups)
    if not groups or any(g.first_stage is None for g in groups):
        return
    neural = student.score_pairs([g.query for g in groups for _ in g.docnos], [t for g in groups for t in g.texts])
    x_neural, x_first, y, start = [], [], [], 0
    for g in groups:
        n = neural[start:start + len(g.docnos)]
        start += len(g.docnos)
        x_neural += [n[0] - v for v in n[1:]]
        x_first += [g.first_stage[0] - v for v in g.first_stage[1:]]
        if g.teacher is not None:
            y += [(g.teacher[0] - v) * teacher_factor for v in g.teacher[1:]]
    x = np.column_stack([x_neural, x_first])
    if fit_teacher and len(y) == len(x):
        weights = np.linalg.lstsq(x, np.asarray(y), rcond=None)[0]
    else:
        spread = x.std(axis=0)
        weights = np.array([spread[1] / spread[0] if spread[0] > 0 else 1.0, 1.0])
    if not np.isfinite(weights).all():
        return
    student.set_first_stage_weights(*weights)
    report["first_stage_mix_start"] = [float(w) for w in weights]
