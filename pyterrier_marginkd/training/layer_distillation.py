"""Intermediate-layer distillation in training: which models it accepts, and one student forward pass that gives
both the scores and the layer loss (:class:`~pyterrier_marginkd.losses.HiddenStateMSE`)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from pyterrier_marginkd.losses.layers import HiddenStateMSE
from pyterrier_marginkd.models.cross_encoder import CrossEncoder


def check_models(student: Any, teacher: Any, *, attention: bool = False) -> None:
    """Raise unless student and teacher are CrossEncoders of this package with the same vocabulary; with
    ``attention`` switch both to eager attention (the attention implementation that returns attention maps)."""
    for role, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, CrossEncoder):
            raise TypeError(f"intermediate-layer distillation reads the hidden states of both models, so the {role} "
                            f"must be a pyterrier_marginkd CrossEncoder; got {model!r} ({type(model).__name__}). Load "
                            "it with pyterrier_marginkd.CrossEncoder.from_pretrained(...) or drop intermediate=")
    if student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise ValueError(f"intermediate-layer distillation compares token by token, so student {student!r} and "
                         f"teacher {teacher!r} need the same tokenizer vocabulary; theirs differ")
    positions = getattr(teacher.model.config, "max_position_embeddings", None)
    if positions is not None and student.max_length > positions:
        raise ValueError(f"the student's max_length {student.max_length} exceeds the teacher's "
                         f"{positions} positions; load the student with max_length <= {positions}")
    if attention:
        for model in (student, teacher):
            model.model.set_attn_implementation("eager")


def scores_with_layer_loss(loss: HiddenStateMSE, student: CrossEncoder, teacher: CrossEncoder,
                           queries: Sequence[str], texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable student scores of the pairs and the layer loss of the same student forward pass."""
    batch = student.batch(queries, texts)
    outputs = student.model_outputs(batch, output_hidden_states=True, output_attentions=loss.attention)
    with teacher.eval_mode(), torch.no_grad():
        target = teacher.model_outputs({k: v.to(teacher.torch_device) for k, v in batch.items()},
                                       output_hidden_states=True, output_attentions=loss.attention)
    device = batch["attention_mask"].device
    moved = [[h.to(device) for h in states] if states else None
             for states in (target.hidden_states, target.attentions if loss.attention else None)]
    value = loss(outputs.hidden_states, moved[0], batch["attention_mask"],
                 outputs.attentions if loss.attention else None, moved[1])
    return student.scores_from_logits(outputs.logits), value

