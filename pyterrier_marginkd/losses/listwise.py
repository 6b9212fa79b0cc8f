"""List-wise losses with temperature and per-query normalisation: KL divergence, Plackett-Luce, CPRD, and the
hard-label softmax cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from pyterrier_marginkd.losses.base import RankingLoss

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


class ListwiseCE(RankingLoss):
    """Hard-label list-wise loss: ``-log softmax(s)_0`` per query, the positive (column 0) against its whole group.

    No teacher needed (the label-only counterpart of :class:`KLDiv`; DPR's and ColBERT's training loss); beside
    distillation on pseudo-queries, wrap it as ``JudgedOnly(ListwiseCE())`` so that only qrels are hard labels.
    References: Karpukhin et al., "Dense Passage Retrieval for Open-Domain Question Answering" (EMNLP 2020);
    Qin et al., "Distillation for Ranking: Hard Labels Help".
    """

    needs_teacher = False

    def compute(self, student, teacher, labels):
        return -F.log_softmax(student, dim=1)[:, 0].mean()
