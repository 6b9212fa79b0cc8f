"""Intermediate-layer distillation for same-architecture students: hidden states (and attention maps) of student
layer i regress onto those of teacher layer f(i), through a learned projection when the widths differ."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn


class HiddenStateMSE(nn.Module):
    """Layer distillation: ``weight * mean_i [MSE(W_i h^S_i, h^T_f(i)) (+ MSE(A^S_i, A^T_f(i)))]`` over real tokens.

    ``h_i`` is the output of layer i (0 = embeddings), ``A_i`` its attention probabilities (averaged over heads
    when the head counts differ), ``W_i`` a linear projection learned with the student (identity when the widths
    match) and ``f`` the layer map: by default uniform, student layer i of m -> teacher layer ``i * n // m`` of n.
    Give it to ``Distiller(..., intermediate=HiddenStateMSE())``: it then runs the teacher model on every training
    batch as well (teacher scores still come from the cache). Off by default: Qin et al. report it can hurt.

    Args:
        layer_map: ``{student_layer: teacher_layer}`` (0 = embedding output), or None for the uniform map.
        weight: weight of this term added to the ranking loss.
        attention: also match attention maps (switches both models to eager attention, which returns them).

    References: Gao, Dai and Callan, "Understanding BERT Rankers Under Distillation" (ICTIR 2020); Jiao et al.,
    "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of EMNLP 2020) for the layer map and
    projections; Qin et al. report that it can hurt cross-encoder students.
    """

    def __init__(self, layer_map: Mapping[int, int] | None = None, *, weight: float = 1.0, attention: bool = False):
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.layer_map = dict(layer_map) if layer_map is not None else None
        self.weight = weight
        self.attention = attention
        self.pairs: list[tuple[int, int]] = []
        self.projections = nn.ModuleDict()

    def configure(self, student_config: Any, teacher_config: Any) -> None:
        """Fix the layer pairs and create the projections for a student and teacher (Hugging Face configs)."""
        m, n = student_config.num_hidden_layers, teacher_config.num_hidden_layers
        pairs = sorted(self.layer_map.items()) if self.layer_map is not None else [(i, i * n // m)
                                                                                   for i in range(1, m + 1)]
        bad = [(s, t) for s, t in pairs if not (0 <= s <= m and 0 <= t <= n)]
        if bad or not pairs:
            raise ValueError(f"layer_map must pair student layers 0..{m} with teacher layers 0..{n} (0 = embeddings), "
                             f"got {pairs}")
        self.pairs = [(int(s), int(t)) for s, t in pairs]
        width_s, width_t = student_config.hidden_size, teacher_config.hidden_size
        self.projections = nn.ModuleDict({str(s): nn.Linear(width_s, width_t) for s, _ in self.pairs}
                                         if width_s != width_t else {})

    def forward(self, student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                attention_mask: torch.Tensor, student_attentions: Sequence[torch.Tensor] | None = None,
                teacher_attentions: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if not self.pairs:
            raise ValueError("HiddenStateMSE is not configured: call configure(student_config, teacher_config) "
                             "(the Distiller does this)")
        tokens = attention_mask.unsqueeze(-1).to(student_hidden[0].dtype)            # [B, L, 1]
        losses = []
        for s, t in self.pairs:
            hidden = student_hidden[s]
            if str(s) in self.projections:
                hidden = self.projections[str(s)](hidden)
            target = teacher_hidden[t]
            losses.append((((hidden - target) ** 2) * tokens).sum() / (tokens.sum() * target.shape[-1]))
        if self.attention:
            if student_attentions is None or teacher_attentions is None:
                raise ValueError("attention=True needs the attention maps of both models (output_attentions=True)")
            cells = (attention_mask.unsqueeze(2) * attention_mask.unsqueeze(1)).unsqueeze(1).to(tokens.dtype)
            for s, t in self.pairs:
                if s == 0 or t == 0:
                    continue
                a_s, a_t = student_attentions[s - 1], teacher_attentions[t - 1]
                if a_s.shape[1] != a_t.shape[1]:
                    a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
                losses.append((((a_s - a_t) ** 2) * cells).sum() / (cells.sum() * a_s.shape[1]))
        return self.weight * torch.stack(losses).mean()

    def extra_repr(self) -> str:
        return f"layer_map={self.layer_map!r}, weight={self.weight!r}, attention={self.attention!r}"

    def __repr__(self) -> str:
        return f"HiddenStateMSE({self.extra_repr()})"
