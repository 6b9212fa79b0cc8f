"""Alignment distillation: a student's query vectors pulled onto the vectors its teacher's encoder gives the same
texts (LEAF), a loss that reads no candidates, labels or negatives."""
from __future__ import annotations

import torch
from torch import nn

from pyterrier_marginkd.losses.base import RankingLoss

METRICS = ("mse", "cosine")


class QueryAlignment(RankingLoss):
    """The distance between a student's query vectors and the target vectors of the same texts: ``"mse"``, the
    squared Euclidean distance per text (for unit vectors ``2 - 2 cos``), or ``"cosine"``, ``1 - cos``; averaged over
    the batch's distinct queries.

    For a :class:`~pyterrier_marginkd.DotEncoder` with ``frozen_docs=True`` the target of a text is the vector the
    frozen document encoder (the teacher's encoder, e.g. all-MiniLM-L6-v2 whole) gives it: the small query encoder
    learns to put queries where the full model puts them, so that dot products with the stored document vectors
    approach the full model's. Any text teaches it — training queries, pseudo-queries, sentences of documents — with
    no candidates, labels or negatives (``Distiller.fit_texts``), and a step encodes one short text per example
    instead of a candidate list. Beside a ranking loss it sums like any other term: ``KLDiv() + QueryAlignment()``
    aligns the vectors of each batch's queries. Reference: LEAF (2025), small query encoders aligned to a large
    embedding model whose document vectors are kept.
    """

    needs_teacher = False
    #: reads the student's and the target's query vectors instead of scores
    reads_vectors = True

    def __init__(self, metric: str = "mse"):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric

    def forward(self, student_scores=None, teacher_scores=None, labels=None, judged=None, vectors=None):
        return self.align(vectors)

    def align(self, vectors: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The loss of ``vectors = (student vectors, target vectors)``, both ``[texts, dim]``."""
        if vectors is None:
            raise ValueError("QueryAlignment reads the student's query vectors and their targets: train a "
                             "DotEncoder(frozen_docs=True) with the Distiller (fit, or fit_texts on texts alone)")
        student, target = vectors
        if student.dim() != 2 or student.shape != target.shape:
            raise ValueError(f"QueryAlignment expects student and target vectors of one shape [texts, dim], got "
                             f"{tuple(student.shape)} and {tuple(target.shape)}")
        if len(student) == 0:
            raise ValueError("QueryAlignment got no texts to align")
        target = target.detach().to(student.dtype)
        if self.metric == "cosine":
            return (1 - nn.functional.cosine_similarity(student, target, dim=-1)).mean()
        return (student - target).pow(2).sum(-1).mean()

    def compute(self, student, teacher, labels):
        raise ValueError("QueryAlignment reads query vectors, not scores: call it with vectors=(student, target)")

    def extra_settings(self) -> dict:
        return {"metric": self.metric} if self.metric != "mse" else {}
