"""What a scorer's scores depend on (:func:`describe`): the key of teacher caches and of built indexes."""
from __future__ import annotations

import hashlib

import pyterrier as pt
import torch

from pyterrier_marginkd.data.teacher_check import CheckedTeacher
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.crossfit import CrossFitted
from pyterrier_marginkd.models.ensemble import Ensemble


def describe(teacher: pt.Transformer) -> str:
    """What a teacher's scores depend on: for our neural models their class, settings and a digest of the weights'
    content (a model retrained in the same folder is another teacher); for an Ensemble its members, weights and
    normalisation; for a CrossFitted scorer its fold models and folds; for anything else its repr."""
    if isinstance(teacher, CheckedTeacher):
        return describe(teacher.teacher)
    if isinstance(teacher, Ensemble):
        members = ", ".join(describe(m) for m in teacher.members)
        return f"Ensemble([{members}], weights={teacher.weights}, normalize={teacher.normalize!r})"
    if isinstance(teacher, CrossFitted):
        folds = hashlib.sha256(repr(sorted(teacher.folds.items())).encode()).hexdigest()[:16]
        # "held-out": a fold's queries scored by the model trained without them (caches written before that fix,
        # which scored them by the other models, have another key)
        return (f"CrossFitted([{', '.join(describe(m) for m in teacher.members)}], folds={folds}, "
                f"scored_by=held-out)")
    if isinstance(teacher, NeuralScorer):
        digest = hashlib.sha256()
        with teacher._fp32_model():  # an int8 model's weights as the fp32 ones it saves
            for name, tensor in teacher.model.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
        settings = {k: getattr(teacher, k, None) for k in ("max_length", "text_field")}
        if getattr(teacher, "query_max_length", None) is not None:  # queries cut shorter than documents
            settings["query_max_length"] = teacher.query_max_length
        if getattr(teacher, "first_stage", None) is not None:  # the normalisation of the first-stage score mixed in
            settings["first_stage"] = teacher.first_stage
        if teacher.quantization is not None:  # int8 scores differ from those of the same weights in fp32
            settings["quantize"] = teacher.quantization
        return f"{type(teacher).__name__}:{digest.hexdigest()}:{settings}"
    return repr(teacher)
