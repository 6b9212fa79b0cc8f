"""The base of every loss (shape checks, which inputs it needs) and their algebra: ``MarginMSE() + 0.5 * RankNet()``
is a :class:`Combined` loss, ``JudgedOnly(RankNet())`` a term that reads only the groups of judged queries."""
from __future__ import annotations

import torch
from torch import nn


class RankingLoss(nn.Module):
    """Base of every loss: checks shapes and which inputs the loss needs."""

    #: whether the loss reads teacher scores
    needs_teacher = True
    #: whether the loss reads (graded) relevance labels
    needs_labels = False
    #: whether the loss reads query vectors (``vectors=(student, target)``) instead of scores: QueryAlignment
    reads_vectors = False

    def forward(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, judged: torch.Tensor | None = None,
                vectors: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The loss of a batch; ``judged`` (``[Q]`` booleans, None: all) marks the groups whose labels come from
        qrels rather than from the teacher's ranking — read by :class:`JudgedOnly` terms, ignored by the others;
        ``vectors`` (the student's query vectors and their targets) is read by alignment terms only."""
        self.check(student_scores, teacher_scores, labels, judged)
        return self.compute(student_scores, teacher_scores, labels)

    def check(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor | None, labels: torch.Tensor | None,
              judged: torch.Tensor | None = None) -> None:
        """Refuse inputs of the wrong shape, and missing teacher scores or labels that this loss reads."""
        name = type(self).__name__
        if student_scores.dim() != 2 or student_scores.shape[1] < 2:
            raise ValueError(f"{name} expects scores of shape [Q, D] with D >= 2, got {tuple(student_scores.shape)}")
        for what, other in (("teacher_scores", teacher_scores), ("labels", labels)):
            if other is not None and other.shape != student_scores.shape:
                raise ValueError(f"{name} expects {what} of shape {tuple(student_scores.shape)} like the student "
                                 f"scores, got {tuple(other.shape)}")
        if self.needs_teacher and teacher_scores is None:
            raise ValueError(f"{name} needs teacher scores: give the Distiller a teacher (or a teacher-score file)")
        if self.needs_labels and labels is None:
            raise ValueError(f"{name} needs relevance labels (qrels)")
        if judged is not None and tuple(judged.shape) != (student_scores.shape[0],):
            raise ValueError(f"{name} expects judged of shape ({student_scores.shape[0]},), one flag per query, got "
                             f"{tuple(judged.shape)}")

    def compute(self, student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def __add__(self, other: RankingLoss) -> Combined:
        return Combined(_terms(self) + _terms(other))

    def __mul__(self, weight: float) -> Combined:
        return Combined([(float(weight) * w, loss) for w, loss in _terms(self)])

    __rmul__ = __mul__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.extra_settings().items())
        return f"{type(self).__name__}({args})"

    def extra_settings(self) -> dict:
        return {}


def _terms(loss: RankingLoss) -> list[tuple[float, RankingLoss]]:
    return list(loss.terms) if isinstance(loss, Combined) else [(1.0, loss)]


class Combined(RankingLoss):
    """A weighted sum of losses: ``sum_i w_i * loss_i``."""

    def __init__(self, terms: list[tuple[float, RankingLoss]]):
        super().__init__()
        if not terms:
            raise ValueError("Combined needs at least one (weight, loss) term")
        self.terms = [(float(w), loss) for w, loss in terms]
        self.parts = nn.ModuleList([loss for _, loss in self.terms])
        self.needs_teacher = any(loss.needs_teacher for _, loss in self.terms)
        self.needs_labels = any(loss.needs_labels for _, loss in self.terms)
        self.reads_vectors = any(loss.reads_vectors for _, loss in self.terms)
        #: whether any term reads scores (a sum of alignment terms alone trains on texts without candidates)
        self.reads_scores = any(not loss.reads_vectors for _, loss in self.terms)

    def forward(self, student_scores, teacher_scores=None, labels=None, judged=None, vectors=None):
        if self.reads_scores:
            self.check(student_scores, teacher_scores, labels, judged)
        # vectors go to the terms that read them only: a loss of one's own may override forward with four arguments
        return sum(w * (loss(student_scores, teacher_scores, labels, judged, vectors=vectors) if loss.reads_vectors
                        else loss(student_scores, teacher_scores, labels, judged)) for w, loss in self.terms)

    def compute(self, student, teacher, labels):
        return sum(w * loss.compute(student, teacher, labels) for w, loss in self.terms)

    def __repr__(self) -> str:
        return " + ".join(repr(loss) if w == 1.0 else f"{w:g} * {loss!r}" for w, loss in self.terms)


class JudgedOnly(RankingLoss):
    """A loss applied to the groups of judged queries only (their labels come from qrels), zero for the others.

    Beside distillation on teacher-labelled pseudo-queries (``unjudged="teacher"``), a hard-label term should read
    the qrels, not the teacher's pick of a positive: ``KLDiv() + JudgedOnly(RankNet())``. The term is the wrapped
    loss over the judged groups of a batch, scaled by their share of the batch, so each judged query weighs what it
    would weigh in a batch of judged queries alone. References: Qin et al., "Distillation for Ranking: Hard Labels
    Help" (a hard-label term beside distillation); the judged/unjudged split follows Hofstätter et al.'s mix of
    labelled and teacher-labelled data.
    """

    def __init__(self, loss: RankingLoss):
        super().__init__()
        if not isinstance(loss, RankingLoss) or isinstance(loss, JudgedOnly) or loss.reads_vectors:
            raise TypeError(f"JudgedOnly wraps one loss on scores (e.g. JudgedOnly(RankNet())), got {loss!r}")
        self.loss = loss
        self.needs_teacher = loss.needs_teacher
        self.needs_labels = loss.needs_labels

    def forward(self, student_scores, teacher_scores=None, labels=None, judged=None, vectors=None):
        self.check(student_scores, teacher_scores, labels, judged)
        if judged is None:
            return self.loss(student_scores, teacher_scores, labels)
        judged = judged.to(device=student_scores.device, dtype=torch.bool)
        count = int(judged.sum())
        if count == 0:
            return student_scores.sum() * 0.0
        rows = [t[judged] if t is not None else None for t in (student_scores, teacher_scores, labels)]
        return self.loss(*rows) * (count / len(judged))

    def compute(self, student, teacher, labels):
        return self.loss.compute(student, teacher, labels)

    def __repr__(self) -> str:
        return f"JudgedOnly({self.loss!r})"
