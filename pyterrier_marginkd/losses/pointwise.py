"""Point-wise and margin losses on teacher scores: MSE of the scores, Margin-MSE of their margins."""
from __future__ import annotations

import torch.nn.functional as F  # noqa: N812

from pyterrier_marginkd.losses.base import RankingLoss


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
