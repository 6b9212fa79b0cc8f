"""Pair-wise losses on hard labels (no teacher): RankNet and the hinge."""
from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from pyterrier_marginkd.losses.base import RankingLoss


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
