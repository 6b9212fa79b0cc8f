"""Teachers made of teachers: the (weighted) mean score of several scoring transformers."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_marginkd._scorer import add_scores, check_id_columns


class Ensemble(pt.Transformer):
    """Scores each (qid, docno) row with every member and returns the weighted mean: ``sum_i w_i s_i / sum_i w_i``.

    The ensemble teacher of Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation" (2020). Members are any scoring transformers (CrossEncoders, ``pt.apply`` scorers, ...);
    every member must return a finite score for every input row. ``weights=None`` gives the plain mean.
    """

    def __init__(self, members: Sequence[pt.Transformer], weights: Sequence[float] | None = None):
        members = list(members)
        if not members:
            raise ValueError("an Ensemble needs at least one member transformer")
        for i, member in enumerate(members):
            if not isinstance(member, pt.Transformer):
                raise TypeError(f"Ensemble member {i} must be a pt.Transformer, got {type(member).__name__}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(members):
                raise ValueError(f"got {len(weights)} weights for {len(members)} members; give one weight per member")
            if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights}")
        self.members = members
        self.weights = weights
        self._inputs: list[str] | None = None

    @property
    def transform_inputs(self) -> list[list[str]]:
        """The columns every member needs (``qid`` and ``docno`` at least; members never see old scores/ranks)."""
        if self._inputs is None:
            columns = ["qid", "docno"]
            for member in self.members:
                inputs = pt.inspect.transformer_inputs(member, strict=False)
                columns += [c for c in (inputs[0] if inputs else []) if c not in columns + ["score", "rank"]]
            self._inputs = columns
        return [list(self._inputs)]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """The input rows (other columns kept) with the members' weighted mean ``score`` and fresh ranks."""
        if not isinstance(inp, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame of results, got {type(inp).__name__}")
        pt.validate.columns(inp, includes=self.transform_inputs[0], context=self)
        check_id_columns(inp)
        base = inp.drop(columns=["score", "rank"], errors="ignore").reset_index(drop=True)
        if len(base) == 0:
            return add_scores(base, np.zeros(0))
        keys = pd.MultiIndex.from_arrays([base["qid"].astype(str), base["docno"].astype(str)])
        if keys.has_duplicates:
            dup = keys[keys.duplicated()][0]
            raise ValueError(f"Ensemble input has duplicate (qid, docno) rows, e.g. {dup}; members' scores could not "
                             "be matched to rows (drop duplicates first)")
        weights = np.asarray(self.weights if self.weights is not None else [1.0] * len(self.members))
        total = np.zeros(len(base))
        for i, member in enumerate(self.members):
            total += weights[i] * self._member_scores(i, member, base, keys)
        return add_scores(base, total / weights.sum())

    def _member_scores(self, i: int, member: pt.Transformer, base: pd.DataFrame, keys: pd.MultiIndex) -> np.ndarray:
        """Member ``i``'s scores aligned to ``keys`` by (qid, docno), checked complete and finite."""
        out = member(base)
        if not isinstance(out, pd.DataFrame) or "score" not in out.columns:
            found = list(out.columns) if isinstance(out, pd.DataFrame) else type(out).__name__
            raise ValueError(f"Ensemble member {i} ({member!r}) must return a 'score' column, but returned {found}")
        out_keys = pd.MultiIndex.from_arrays([out["qid"].astype(str), out["docno"].astype(str)])
        scores = pd.Series(pd.to_numeric(out["score"], errors="coerce").to_numpy(dtype=float), index=out_keys)
        scores = scores[~out_keys.duplicated()].reindex(keys)
        missing = scores.isna().to_numpy() & ~keys.isin(out_keys)
        if missing.any():
            raise ValueError(f"Ensemble member {i} ({member!r}) returned no score for {int(missing.sum())} of the "
                             f"{len(keys)} rows, e.g. (qid, docno)={keys[int(np.flatnonzero(missing)[0])]}; every "
                             "member must score every row (no rank cutoff inside members)")
        values = scores.to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(f"Ensemble member {i} ({member!r}) gave {int(bad.sum())} non-finite score(s) (NaN/inf), "
                             f"e.g. for (qid, docno)={keys[first]}")
        return values

    def subtransformers(self) -> dict[str, list[pt.Transformer]]:
        return {"members": list(self.members)}

    def schematic(self, *, input_columns=None):
        return {"label": "Ensemble", "help_url": None}

    def fuse_rank_cutoff(self, k):
        return None

    def __repr__(self) -> str:
        weights = f", weights={self.weights}" if self.weights is not None else ""
        return f"Ensemble([{', '.join(repr(m) for m in self.members)}]{weights})"
