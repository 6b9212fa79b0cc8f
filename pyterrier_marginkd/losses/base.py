"""The base of every loss (shape checks, which inputs it needs) and their algebra: ``MarginMSE() + 0.5 * RankNet()``
is a :class:`Combined` loss."""
from __future__ import annotations

import torch
from torch import nn


class RankingLoss(nn.Module):
    """Base of every loss: checks shapes and which inputs the loss needs."""

    #: whether the loss reads teacher scores
    needs_teacher = True
    #: whether the loss reads (graded) relevance labels
    needs_labels = False

    def forward(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
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
        return self.compute(student_scores, teacher_scores, labels)

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

    def compute(self, student, teacher, labels):
        return sum(w * loss.compute(student, teacher, labels) for w, loss in self.terms)

    def __repr__(self) -> str:
        return " + ".join(repr(loss) if w == 1.0 else f"{w:g} * {loss!r}" for w, loss in self.terms)
