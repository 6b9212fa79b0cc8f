"""Distillation and ranking losses: small modules with one signature.

Every loss takes tensors shaped ``[num_queries, group]`` in which column 0 is the positive passage and the other
columns its negatives (list-wise losses read the whole row), and returns a scalar::

    loss(student_scores, teacher_scores=None, labels=None)

Losses combine by arithmetic: ``MarginMSE() + 0.5 * RankNet()``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
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


class MarginMSE(RankingLoss):
    """Margin-MSE: ``mean((S(q,p+) - S(q,p-) - (T(q,p+) - T(q,p-)))^2)`` over every negative p-.

    References: Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
    Distillation", arXiv:2010.02666 (2020).
    """

    def compute(self, student, teacher, labels):
        return F.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])


class MSE(RankingLoss):
    """Pointwise score regression: ``mean((S(q,d) - T(q,d))^2)``."""

    def compute(self, student, teacher, labels):
        return F.mse_loss(student, teacher)


class KLDiv(RankingLoss):
    """List-wise softmax distillation: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` per query, averaged.

    Both sides go through ``log_softmax`` (``log_target=True``), so probabilities are never mistaken for
    log-probabilities. References: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def compute(self, student, teacher, labels):
        t = self.temperature
        return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t

    def extra_settings(self):
        return {"temperature": self.temperature}


class RankNet(RankingLoss):
    """Pairwise loss on hard labels: ``mean(log(1 + exp(-(S_i - S_j))))`` over pairs with label_i > label_j.

    No teacher needed: with ``teacher=None`` it is the label-only baseline. References: Burges et al., "Learning to
    Rank using Gradient Descent" (ICML 2005); Qin et al. show a pairwise hard-label term helps cross-encoder students.
    """

    needs_teacher = False
    needs_labels = True

    def compute(self, student, teacher, labels):
        diff = student.unsqueeze(2) - student.unsqueeze(1)                  # [Q, D, D]: s_i - s_j
        better = (labels.unsqueeze(2) > labels.unsqueeze(1)).to(student.dtype)
        if better.sum() == 0:
            return student.sum() * 0.0
        return (F.softplus(-diff) * better).sum() / better.sum()


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


#: names accepted by the command line, mapped to loss factories
LOSSES = {
    "margin-mse": MarginMSE,
    "mse": MSE,
    "kl": KLDiv,
    "ranknet": RankNet,
}


def by_name(name: str) -> RankingLoss:
    """A loss from its command-line name; ``a+b`` sums losses (``margin-mse+ranknet``)."""
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}; choose from {sorted(LOSSES)} (combine with '+')")
    losses = [LOSSES[p]() for p in parts]
    return losses[0] if len(losses) == 1 else Combined([(1.0, loss) for loss in losses])
