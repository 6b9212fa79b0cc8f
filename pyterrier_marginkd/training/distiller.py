"""Distiller: a pt.Estimator that trains a student re-ranker from a teacher's scores (and/or labels)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyterrier as pt
import torch

from pyterrier_marginkd.data.docpairs import DocPairs
from pyterrier_marginkd.data.groups import AnnotatedGroups, GroupSource
from pyterrier_marginkd.data.scorefiles import ScoreFile
from pyterrier_marginkd.data.texts import AlignmentTexts
from pyterrier_marginkd.losses import HiddenStateMSE, RankingLoss, resolve_loss
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.training import distributed, preparation, run
from pyterrier_marginkd.training.checkpoints import checkpointable_models
from pyterrier_marginkd.training.layer_distillation import check_models
from pyterrier_marginkd.training.settings import TrainSettings
from pyterrier_marginkd.training.steps import BatchTensors
from pyterrier_marginkd.training.teacher_cache import TeacherScores

__all__ = ["Distiller"]


class Distiller(pt.Estimator):
    """Knowledge distillation of a teacher into a student re-ranker, as a PyTerrier estimator.

    ``(first_stage >> get_text >> distiller).fit(tr_topics, tr_qrels, va_topics, va_qrels)`` makes PyTerrier run the
    first stage and call ``distiller.fit(results, qrels, va_results, va_qrels)``; afterwards ``distiller`` (and so the
    pipeline) re-ranks with the trained student. With ``teacher=None`` and a label loss (``RankNet``) it trains from
    labels alone — the no-distillation baseline. ``intermediate=losses.HiddenStateMSE()`` adds intermediate-layer
    distillation (CrossEncoder teacher and student only; its projections train with the student).

    ``loss`` is a :class:`~pyterrier_marginkd.losses.RankingLoss` or a name from ``losses.LOSSES`` in any case
    (``"margin-mse"``, ``"MarginMSE"``, ``"margin-mse+ranknet"``...). ``settings`` is a :class:`TrainSettings`;
    keyword arguments (``epochs=2``, ``lr=1e-4``...) are the same settings, given one by one or changing ``settings``.
    Every setting is checked here, at construction; each is readable as an attribute (``distiller.lr``).

    A fit that completes all its steps deletes its resume checkpoint (``output_dir/checkpoint``) once the student is
    saved, unless ``keep_checkpoint=True``; a fit stopped by ``max_time`` keeps it, so that fitting again resumes it.
    """

    def __init__(self, student: NeuralScorer, teacher: pt.Transformer | None = None, *,
                 loss: RankingLoss | str | None = None, settings: TrainSettings | None = None,
                 intermediate: HiddenStateMSE | None = None, **kwargs: Any):
        if not isinstance(student, NeuralScorer):
            raise TypeError(f"student must be a pyterrier_marginkd re-ranker (CrossEncoder, ...), got "
                            f"{type(student).__name__}")
        run.check_trainable(student)
        loss = resolve_loss(loss)
        settings = (settings or TrainSettings()).replace(**kwargs)
        if settings.gradient_checkpointing and not checkpointable_models(student.model):
            raise ValueError(f"gradient_checkpointing=True needs a student built on a Hugging Face encoder that "
                             f"supports it; {student!r} has none: train it without gradient checkpointing")
        if intermediate is not None:
            check_models(student, teacher, attention=intermediate.attention)
            if getattr(student, "head", "one_logit") != "one_logit":
                raise ValueError(f"intermediate-layer distillation reads the student's score as its first logit; "
                                 f"the student {student!r} has a 2-logit head (monoBERT style): distil it without "
                                 "intermediate=, or start the student from a 1-logit or plain checkpoint")
            intermediate.configure(student.model.config, teacher.model.config)
        self.student = student
        self.teacher = teacher
        self.loss = loss
        self.settings = settings
        self.intermediate = intermediate
        if loss.reads_vectors:
            if intermediate is not None:
                raise ValueError("an alignment loss (QueryAlignment) and intermediate-layer distillation cannot train "
                                 "together: the alignment reads a DotEncoder's query vectors, intermediate= a "
                                 "CrossEncoder's layers")
            if not getattr(student, "frozen_docs", False):
                raise ValueError(f"{loss!r} aligns a student's query vectors with those of its frozen document "
                                 f"encoder: it needs a DotEncoder(frozen_docs=True), got {student!r}")
        self.tensors = BatchTensors(student, teacher, intermediate, amp=settings.amp, align=loss.reads_vectors)
        self.history: list[dict[str, Any]] = []
        self.validation: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {}
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    def __getattr__(self, name: str) -> Any:
        if name in TrainSettings.names() and "settings" in self.__dict__:
            return getattr(self.settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # --- PyTerrier ---------------------------------------------------------------------------------------
    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Re-rank with the (trained) student."""
        return self.student.transform(inp)

    def subtransformers(self) -> dict[str, pt.Transformer]:
        return {"student": self.student}

    def schematic(self, *, input_columns=None):
        return {"label": "Distiller", "help_url": None}

    def __repr__(self) -> str:
        extra = f", intermediate={self.intermediate!r}" if self.intermediate is not None else ""
        return f"Distiller(student={self.student!r}, teacher={self.teacher!r}, loss={self.loss!r}{extra})"

    # --- training ------------------------------------------------------------------------------------------
    @property
    def out_path(self) -> Path:
        """Folder of checkpoints, the teacher cache and the final student."""
        if self.settings.output_dir is None:
            if self._tmpdir is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="marginkd-")
            return Path(self._tmpdir.name)
        return Path(self.settings.output_dir)

    @property
    def cache_path(self) -> Path:
        """Folder of the teacher cache."""
        return Path(self.settings.cache_dir) if self.settings.cache_dir is not None else self.out_path / "teacher_cache"

    def fit(self, tr_res: pd.DataFrame, tr_qrels: pd.DataFrame | None = None, va_res: pd.DataFrame | None = None,
            va_qrels: pd.DataFrame | None = None) -> Distiller:
        """Train the student on first-stage results (with text) and their qrels; validate on va_res/va_qrels.

        With ``tr_qrels=None`` (or ``unjudged="teacher"`` for the queries without qrels) the teacher's own ranking
        of the candidates picks positives and negatives: label-free distillation.
        """
        preparation.check_validation(self.student, va_res, va_qrels)  # before any example or teacher score
        first_stage = preparation.first_stage_scores(self.student, tr_res)
        teacher_scores = None
        if preparation.scores_whole_lists(self.teacher) and (self.loss.needs_teacher or tr_qrels is None
                                                              or self.settings.unjudged == "teacher"):
            teacher_scores = preparation.whole_list_scores(self.teacher, tr_res, self.cache_path,
                                                           text_field=self.student.text_field,
                                                           verbose=self.settings.verbose,
                                                           teacher_id=self.settings.teacher_id)
        examples = self.examples(tr_res, tr_qrels, teacher_scores=teacher_scores)
        report = dict(examples.report)
        if teacher_scores is not None or first_stage is not None:
            examples = AnnotatedGroups(examples, teacher=teacher_scores if self.loss.needs_teacher else None,
                                       first_stage=first_stage)
        return self.fit_groups(examples, va_res, va_qrels, report=report)

    def fit_file(self, path: str | Path, queries: Any = None, docs: Any = None, va_res: pd.DataFrame | None = None,
                 va_qrels: pd.DataFrame | None = None, *, shuffle_buffer: int = 10_000) -> Distiller:
        """Train from a teacher-score file (the published Margin-MSE format); its scores are used, no teacher runs.

        The ids version needs ``queries`` (topics frame, dict or ir_datasets dataset) and ``docs`` (dict,
        :class:`~pyterrier_marginkd.Collection` or ir_datasets docstore/dataset); the text version needs neither.
        """
        preparation.check_validation(self.student, va_res, va_qrels)
        return self.fit_groups(ScoreFile(path, queries, docs, shuffle_buffer=shuffle_buffer, seed=self.settings.seed,
                                         text_field=self.student.text_field), va_res, va_qrels)

    def fit_pairs(self, dataset: Any, va_res: pd.DataFrame | None = None, va_qrels: pd.DataFrame | None = None, *,
                  queries: Any = None, docs: Any = None, max_pairs: int | None = None,
                  shuffle_buffer: int = 10_000) -> Distiller:
        """Train on ir_datasets docpairs (an id such as ``msmarco-passage/train/triples-small`` or a dataset),
        streamed with labels ``[1, 0]``; the teacher, if any, scores them through its cache."""
        preparation.check_validation(self.student, va_res, va_qrels)
        return self.fit_groups(DocPairs(dataset, queries=queries, docs=docs, max_pairs=max_pairs,
                                        shuffle_buffer=shuffle_buffer, seed=self.settings.seed,
                                        text_field=self.student.text_field), va_res, va_qrels)

    def fit_texts(self, texts: Any, va_res: pd.DataFrame | None = None,
                  va_qrels: pd.DataFrame | None = None) -> Distiller:
        """Alignment distillation from texts alone (``loss=losses.QueryAlignment()``): the student's query vectors
        of ``texts`` (strings, or a topics or documents frame) learn the vectors its frozen document encoder gives
        them — no candidates, labels, negatives or teacher runs. Distinct texts, ``batch_size`` per step; validated
        on ``va_res`` like ``fit``. A first stage before ``fit`` with a ranking loss, or a training of its own."""
        if getattr(self.loss, "reads_scores", not self.loss.reads_vectors):
            raise ValueError(f"fit_texts trains on texts without candidates, so every term of the loss must be an "
                             f"alignment (losses.QueryAlignment()); {self.loss!r} reads scores: use fit(results, "
                             "qrels) for it")
        preparation.check_validation(self.student, va_res, va_qrels)
        return self.fit_groups(AlignmentTexts(texts, seed=self.settings.seed), va_res, va_qrels)

    def fit_groups(self, source: GroupSource, va_res: pd.DataFrame | None = None,
                   va_qrels: pd.DataFrame | None = None, *, report: dict[str, Any] | None = None) -> Distiller:
        """Train on a source of groups (``groups(epoch)``: :class:`~pyterrier_marginkd.data.Group` objects, possibly
        streamed; ``num_groups()``), with checkpoints, resume and validation; groups without teacher scores get them
        from the (cached) teacher in chunks. ``fit``, ``fit_file`` and ``fit_pairs`` build a source and call this."""
        va_qrels = preparation.check_validation(self.student, va_res, va_qrels)
        self.report = dict(report if report is not None else getattr(source, "report", {}))
        run.train(self, source, va_res, va_qrels)
        return self

    def examples(self, tr_res: pd.DataFrame, tr_qrels: pd.DataFrame | None, *,
                 teacher_scores: dict[tuple[str, str], float] | None = None) -> GroupSource:
        """The training examples ``fit`` would build from these results and qrels (None: label-free);
        ``teacher_scores`` (of the candidates) rank label-free queries instead of the cached teacher."""
        return preparation.build_examples(self.settings, self.student.text_field, self.teacher, tr_res, tr_qrels,
                                          self.cache_path, self.teacher_cache, teacher_scores=teacher_scores)

    def evaluate_loss(self, tr_res: pd.DataFrame, tr_qrels: pd.DataFrame, *, epoch: int = 0) -> float:
        """Mean loss of the current student over one epoch of training groups (no gradient, no update)."""
        source = self.examples(tr_res, tr_qrels)
        groups = source.groups(epoch)
        cache = self.teacher_cache() if self.teacher is not None and self.loss.needs_teacher else None
        try:
            if cache is not None:
                cache.fill(groups)
            self.tensors.teacher_factor = preparation.teacher_scale_factor(self.settings.teacher_scale, source,
                                                                           cache, self.report)
        finally:
            if cache is not None:
                cache.close()
        values = []
        with self.student.eval_mode(), torch.no_grad():
            for start in range(0, len(groups), self.settings.batch_size):
                part = groups[start:start + self.settings.batch_size]
                student, teacher, labels, _, judged, vectors = self.tensors(part)
                extra = {"vectors": vectors} if vectors is not None else {}
                values.append(float(self.loss(student, teacher, labels, judged, **extra)) * len(part))
        return sum(values) / len(groups)

    def teacher_cache(self) -> TeacherScores:
        """The teacher behind its score cache (``cache_path``, keyed by ``teacher_id``): what a training run asks for
        the scores of its pairs."""
        return TeacherScores(self.teacher, self.cache_path, teacher_id=self.settings.teacher_id,
                             text_field=self.student.text_field, verbose=self.settings.verbose,
                             shard=distributed.current().shard_name)
