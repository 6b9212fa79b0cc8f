"""Distillation and ranking losses: small modules with one signature.

Every loss takes tensors shaped ``[num_queries, group]`` in which column 0 is the positive passage and the other
columns its negatives (list-wise losses read the whole row), and returns a scalar::

    loss(student_scores, teacher_scores=None, labels=None, judged=None)

``judged`` (one flag per query) marks the groups whose labels are qrels; ``JudgedOnly(loss)`` reads only those.

Families: point-wise (``MSE``), margin (``MarginMSE``), list-wise with temperature and per-query normalisation
(``KLDiv``, ``PlackettLuce``, ``CPRD``), pair-wise and list-wise on hard labels (``RankNet``, ``Hinge``,
``ListwiseCE``), and alignment (``QueryAlignment``: a DotEncoder's query vectors against those of its frozen
document encoder, from texts alone). Losses combine by arithmetic: ``MarginMSE() + 0.5 * RankNet()``. ``HiddenStateMSE``
(intermediate-layer distillation) reads hidden states instead of scores and is given to the Distiller as
``intermediate=``.
"""
from __future__ import annotations

from pyterrier_marginkd.losses.alignment import QueryAlignment
from pyterrier_marginkd.losses.base import Combined, JudgedOnly, RankingLoss
from pyterrier_marginkd.losses.layers import HiddenStateMSE
from pyterrier_marginkd.losses.listwise import (
    CPRD,
    KLDiv,
    ListwiseCE,
    ListwiseLoss,
    PlackettLuce,
    normalize_scores,
    teacher_order,
)
from pyterrier_marginkd.losses.pairwise import Hinge, RankNet
from pyterrier_marginkd.losses.pointwise import MSE, MarginMSE
from pyterrier_marginkd.losses.registry import LOSSES, by_name, resolve_loss

__all__ = ["CPRD", "LOSSES", "MSE", "Combined", "HiddenStateMSE", "Hinge", "JudgedOnly", "KLDiv", "ListwiseCE",
           "ListwiseLoss", "MarginMSE", "PlackettLuce", "QueryAlignment", "RankNet", "RankingLoss", "by_name",
           "resolve_loss", "normalize_scores", "teacher_order"]
