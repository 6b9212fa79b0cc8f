"""Students that mix the first stage's score into their own: ``score = a * neural score + b * normalised first-stage
score``, with ``a`` and ``b`` trained beside the student (DotEncoder, ColBERT, PreTT, TK and CrossEncoder offer it as
``first_stage="zscore"``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from pyterrier_marginkd.data.frames import add_scores
from pyterrier_marginkd.models.ensemble import NORMALIZATIONS, normalize_scores


class FirstStageMix(nn.Module):
    """A student's learned interpolation with the first stage: ``neural_weight * neural score + first_stage_weight *
    normalised first-stage score`` (two scalars trained with the student, saved with it)."""

    def __init__(self):
        super().__init__()
        self.neural_weight = nn.Parameter(torch.tensor(1.0))
        self.first_stage_weight = nn.Parameter(torch.tensor(1.0))

    def forward(self, neural: torch.Tensor, first_stage: torch.Tensor) -> torch.Tensor:
        return self.neural_weight * neural + self.first_stage_weight * first_stage

    def weights(self) -> tuple[float, float]:
        return float(self.neural_weight.detach()), float(self.first_stage_weight.detach())


class FirstStageMixing:
    """What a scorer that mixes in the first stage needs (a mixin before :class:`NeuralScorer` in the bases): its
    ``self.model`` has a :class:`FirstStageMix` child ``interpolation`` when ``first_stage`` is set."""

    #: per-query normalisation of the incoming first-stage score mixed into the student's score (None: no mixing)
    first_stage: str | None = None

    def _check_first_stage(self) -> None:
        if self.first_stage not in NORMALIZATIONS:
            raise ValueError(f"first_stage must be one of {[n for n in NORMALIZATIONS if n]} (the per-query "
                             f"normalisation of the first-stage score to mix in) or None, got {self.first_stage!r}")

    def set_first_stage_weights(self, neural: float, first_stage: float) -> None:
        """Set the two mixing weights (``score = neural * neural score + first_stage * normalised first stage``)."""
        if self.first_stage is None:
            raise ValueError(f"{self!r} does not mix in the first stage's score (first_stage=None)")
        mix = self.model.interpolation
        with torch.no_grad():
            mix.neural_weight.fill_(float(neural))
            mix.first_stage_weight.fill_(float(first_stage))

    def _neural_train_scores(self, queries: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        return super().train_scores(queries, texts)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Score each (query, text) row; with ``first_stage``, mix in the row's normalised incoming ``score``."""
        if self.first_stage is None:
            return super().transform(inp)
        if isinstance(inp, pd.DataFrame):
            self._require_score(inp)  # before any expensive work
        neural = super().transform(inp)
        if len(inp) == 0:
            return neural
        return add_scores(neural, self.mix_first_stage(inp, neural["score"].to_numpy()))

    def mix_first_stage(self, inp: pd.DataFrame, neural: np.ndarray) -> np.ndarray:
        """The final scores of ``inp``'s rows from their neural scores: with ``first_stage``, mixed with the rows'
        normalised incoming ``score``; else the neural scores."""
        if self.first_stage is None:
            return neural
        self._require_score(inp)
        first = pd.to_numeric(inp["score"], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(first).all():
            raise ValueError(f"the first stage's 'score' column holds {int((~np.isfinite(first)).sum())} non-finite "
                             "value(s) (NaN/inf)")
        a, b = self.model.interpolation.weights()
        return a * np.asarray(neural) + b * normalize_scores(inp["qid"], first, self.first_stage)

    def _require_score(self, inp: pd.DataFrame) -> None:
        if "score" not in inp.columns:
            raise ValueError(f"{self!r} mixes in the first stage's score (first_stage={self.first_stage!r}), but its "
                             f"input has no 'score' column (found {list(inp.columns)}); re-rank a retriever's "
                             "results, e.g. bm25 >> get_text >> student")

    def train_scores(self, queries: Sequence[str], texts: Sequence[str],
                     first_stage: Sequence[float] | None = None) -> torch.Tensor:
        """Differentiable scores; with ``first_stage`` mixing, ``first_stage`` holds each pair's normalised
        first-stage score."""
        return self._mix_train_scores(self._neural_train_scores(queries, texts), first_stage)

    def _mix_train_scores(self, neural: torch.Tensor, first_stage: Sequence[float] | None) -> torch.Tensor:
        if self.first_stage is None:
            return neural
        if first_stage is None:
            raise ValueError(f"{self!r} mixes in the first stage's score; training needs each pair's normalised "
                             "first-stage score (the Distiller reads it from the training results' 'score' column)")
        mix = torch.as_tensor(np.asarray(first_stage, dtype=np.float32), device=neural.device)
        return self.model.interpolation(neural, mix.to(neural.dtype))
