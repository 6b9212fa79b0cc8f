"""Distillation and ranking losses: small modules with one signature.

Every loss takes tensors shaped ``[num_queries, group]`` in which column 0 is the positive passage and the other
columns its negatives (list-wise losses read the whole row), and returns a scalar::

    loss(student_scores, teacher_scores=None, labels=None)

Families: point-wise (``MSE``), margin (``MarginMSE``), list-wise with temperature and per-query normalisation
(``KLDiv``, ``PlackettLuce``, ``CPRD``), pairwise on hard labels (``RankNet``, ``Hinge``). Losses combine by
arithmetic: ``MarginMSE() + 0.5 * RankNet()``. ``HiddenStateMSE`` (intermediate-layer distillation) reads hidden
states instead of scores and is given to the Distiller as ``intermediate=``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pyterrier_marginkd.intermediate import HiddenStateMSE

__all__ = ["CPRD", "LOSSES", "MSE", "Combined", "HiddenStateMSE", "Hinge", "KLDiv", "ListwiseLoss", "MarginMSE",
           "PlackettLuce", "RankNet", "RankingLoss", "by_name", "normalize_scores", "teacher_order"]


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


NORMALIZATIONS = ("zscore", "minmax")
NORMALIZE_ON = ("both", "teacher", "student")


def normalize_scores(scores: torch.Tensor, method: str, eps: float = 1e-6) -> torch.Tensor:
    """Per-query (row) normalisation: ``"zscore"`` ``(x - mean) / std``, ``"minmax"`` ``(x - min) / (max - min)``."""
    if method == "zscore":
        return (scores - scores.mean(1, keepdim=True)) / (scores.std(1, unbiased=False, keepdim=True) + eps)
    if method == "minmax":
        low = scores.min(1, keepdim=True).values
        return (scores - low) / (scores.max(1, keepdim=True).values - low + eps)
    raise ValueError(f"normalize must be None or one of {NORMALIZATIONS}, got {method!r}")


class ListwiseLoss(RankingLoss):
    """Base of the list-wise losses: scores optionally normalised per query, then divided by a temperature.

    Args:
        temperature: ``T`` in ``s / T`` (applied to student and teacher scores); must be > 0.
        normalize: ``None``, ``"zscore"`` or ``"minmax"``: per-query normalisation before the temperature; it puts
            students and teachers whose scores live on different scales on one scale.
        normalize_on: which scores to normalise: ``"both"``, ``"teacher"`` or ``"student"``.
    """

    def __init__(self, temperature: float = 1.0, *, normalize: str | None = None, normalize_on: str = "both"):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if normalize is not None and normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be None or one of {NORMALIZATIONS}, got {normalize!r}")
        if normalize_on not in NORMALIZE_ON:
            raise ValueError(f"normalize_on must be one of {NORMALIZE_ON}, got {normalize_on!r}")
        self.temperature = temperature
        self.normalize = normalize
        self.normalize_on = normalize_on

    def scaled(self, student: torch.Tensor, teacher: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Student and teacher scores, normalised per query as configured and divided by the temperature."""
        if self.normalize is not None:
            if self.normalize_on in ("both", "student"):
                student = normalize_scores(student, self.normalize)
            if teacher is not None and self.normalize_on in ("both", "teacher"):
                teacher = normalize_scores(teacher, self.normalize)
        t = self.temperature
        return student / t, (teacher / t if teacher is not None else None)

    def extra_settings(self):
        settings: dict = {"temperature": self.temperature}
        if self.normalize is not None:
            settings["normalize"] = self.normalize
            if self.normalize_on != "both":
                settings["normalize_on"] = self.normalize_on
        return settings


class KLDiv(ListwiseLoss):
    """List-wise softmax distillation: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` per query, averaged.

    Both sides go through ``log_softmax`` (``log_target=True``), so probabilities are never mistaken for
    log-probabilities. Temperature and normalisation as in :class:`ListwiseLoss`. References: Hinton et al.,
    "Distilling the Knowledge in a Neural Network" (2015).
    """

    def compute(self, student, teacher, labels):
        s, t = self.scaled(student, teacher)
        return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean",
                        log_target=True) * self.temperature ** 2


def teacher_order(teacher: torch.Tensor, labels: torch.Tensor | None = None, *,
                  positives_first: bool = True) -> torch.Tensor:
    """Column indices of each query in the target order: judged positives first (by label, descending; column 0
    when there are no labels), then the teacher's order; ``positives_first=False`` is the teacher's order alone."""
    order = torch.argsort(teacher, dim=1, descending=True, stable=True)
    if not positives_first:
        return order
    if labels is None:
        labels = torch.zeros_like(teacher)
        labels[:, 0] = 1.0
    return order.gather(1, torch.argsort(labels.gather(1, order), dim=1, descending=True, stable=True))


def _suffix_nll(ordered: torch.Tensor) -> torch.Tensor:
    """``log(sum_{j >= i} exp(x_j)) - x_i`` for every position i of each row: the Plackett-Luce choice losses."""
    return torch.logcumsumexp(ordered.flip(1), dim=1).flip(1) - ordered


class PlackettLuce(ListwiseLoss):
    """Plackett-Luce distillation (PLD): ``sum_i w_pi(i) * (log sum_{j>=i} exp(s_pi(j)) - s_pi(i))``, w = softmax(t).

    pi is the target order of the group: judged positives first (``labels`` when given, else column 0), then the
    rest in descending teacher score; each choice is weighted by the teacher's confidence in it (softmax of the
    teacher scores), so confident parts of the teacher's ranking count most. Minimal, over orderings of the same
    student scores, when the student orders the group like the target. Temperature and normalisation as in
    :class:`ListwiseLoss`. References: Bassam, Zhu and Bian, "PLD: A Choice-Theoretic List-Wise Knowledge
    Distillation", arXiv:2506.12542 (NeurIPS 2025).
    """

    def __init__(self, temperature: float = 1.0, *, positives_first: bool = True, normalize: str | None = None,
                 normalize_on: str = "both"):
        super().__init__(temperature, normalize=normalize, normalize_on=normalize_on)
        self.positives_first = positives_first

    def compute(self, student, teacher, labels):
        s, t = self.scaled(student, teacher)
        order = teacher_order(t, labels, positives_first=self.positives_first)
        weights = torch.softmax(t, dim=1).gather(1, order)
        return (weights * _suffix_nll(s.gather(1, order))).sum(1).mean()

    def extra_settings(self):
        settings = super().extra_settings()
        if not self.positives_first:
            settings["positives_first"] = False
        return settings


class CPRD(ListwiseLoss):
    """Contrastive partial ranking distillation: ``-log softmax(s)_0 + weight * mean_{i<k} (log sum_{i<=j<=k}
    exp(s_h(j)) - s_h(i))`` with h the teacher's k highest-scored negatives in its order.

    The positive (column 0) must score above every candidate (InfoNCE), and the teacher's k hard negatives must
    keep the teacher's relative order among themselves; the order of the remaining (easy) negatives is ignored.
    Temperature and normalisation as in :class:`ListwiseLoss`. References: Chen et al., "How to Make Cross Encoder
    a Good Teacher for Efficient Image-Text Retrieval?" (CVPR 2024), arXiv:2407.07479.

    Args:
        k: how many of the teacher's top-scored negatives count as hard (their order is distilled); >= 1.
        weight: weight of the partial-ranking term against the contrastive term.
    """

    def __init__(self, k: int = 4, temperature: float = 1.0, *, weight: float = 1.0, normalize: str | None = None,
                 normalize_on: str = "both"):
        super().__init__(temperature, normalize=normalize, normalize_on=normalize_on)
        if k < 1:
            raise ValueError(f"k (the number of hard negatives) must be >= 1, got {k}")
        self.k = k
        self.weight = weight

    def compute(self, student, teacher, labels):
        s, t = self.scaled(student, teacher)
        contrastive = -F.log_softmax(s, dim=1)[:, 0]
        k = min(self.k, s.shape[1] - 1)
        if k < 2:
            return contrastive.mean()
        hard = torch.topk(t[:, 1:], k, dim=1).indices + 1
        partial = _suffix_nll(s.gather(1, hard))[:, :-1].mean(1)
        return (contrastive + self.weight * partial).mean()

    def extra_settings(self):
        settings = {"k": self.k, **super().extra_settings()}
        if self.weight != 1.0:
            settings["weight"] = self.weight
        return settings


def _label_pairs(student: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``s_i - s_j`` for every pair of a query, and the mask of pairs with ``label_i > label_j`` ([Q, D, D])."""
    diff = student.unsqueeze(2) - student.unsqueeze(1)
    better = (labels.unsqueeze(2) > labels.unsqueeze(1)).to(student.dtype)
    return diff, better


class RankNet(RankingLoss):
    """Pairwise loss on hard labels: ``mean(log(1 + exp(-(S_i - S_j))))`` over pairs with label_i > label_j.

    No teacher needed: with ``teacher=None`` it is the label-only baseline. References: Burges et al., "Learning to
    Rank using Gradient Descent" (ICML 2005); Qin et al. show a pairwise hard-label term helps cross-encoder students.
    """

    needs_teacher = False
    needs_labels = True

    def compute(self, student, teacher, labels):
        diff, better = _label_pairs(student, labels)
        if better.sum() == 0:
            return student.sum() * 0.0
        return (F.softplus(-diff) * better).sum() / better.sum()


class Hinge(RankingLoss):
    """Pairwise hinge on hard labels: ``mean(max(0, margin - (S_i - S_j)))`` over pairs with label_i > label_j.

    Like :class:`RankNet` but with a margin and no gradient once a pair is separated by it; combine it with a
    distillation loss (``MarginMSE() + 0.5 * Hinge()``). References: Herbrich et al., "Large Margin Rank Boundaries
    for Ordinal Regression" (2000); Joachims, "Optimizing Search Engines using Clickthrough Data" (KDD 2002).
    """

    needs_teacher = False
    needs_labels = True

    def __init__(self, margin: float = 1.0):
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin

    def compute(self, student, teacher, labels):
        diff, better = _label_pairs(student, labels)
        if better.sum() == 0:
            return student.sum() * 0.0
        return (F.relu(self.margin - diff) * better).sum() / better.sum()

    def extra_settings(self):
        return {"margin": self.margin}


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
    "plackett-luce": PlackettLuce,
    "cprd": CPRD,
    "ranknet": RankNet,
    "hinge": Hinge,
}


def by_name(name: str) -> RankingLoss:
    """A loss from its command-line name; ``a+b`` sums losses (``margin-mse+ranknet``)."""
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}; choose from {sorted(LOSSES)} (combine with '+')")
    losses = [LOSSES[p]() for p in parts]
    return losses[0] if len(losses) == 1 else Combined([(1.0, loss) for loss in losses])
