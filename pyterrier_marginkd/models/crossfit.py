"""Cross-fitted scoring: models trained on folds of the judged queries, each judged query scored only by the models
that never saw it — a teacher's scores of its own training queries are then predictions, not memories."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_marginkd.data.frames import add_scores, check_id_columns, pair_keys, scores_by_pair
from pyterrier_marginkd.models.ensemble import reads_first_stage


class CrossFitted(pt.Transformer):
    """Scores with ``K`` fold models: model ``i`` trained on every judged query but those of fold ``i``.

    A query of fold ``i`` (``folds[qid] == i``) is scored by model ``i`` alone, the one model that never saw it (every
    other model trained on fold ``i``); any other query (validation, test, pseudo-queries) by the mean of all ``K``.
    As an :class:`Ensemble` member it gives
    out-of-fold scores for the training queries, so fusion weights can be fitted on them and students that learn its
    scores on those queries learn what it predicts rather than the labels it memorised.
    """

    def __init__(self, members: Sequence[pt.Transformer], folds: Mapping[str, int]):
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"CrossFitted needs at least 2 fold models, got {len(members)}")
        folds = {str(q): int(f) for q, f in folds.items()}
        bad = sorted({f for f in folds.values() if not 0 <= f < len(members)})
        if bad:
            raise ValueError(f"folds must number the {len(members)} models 0..{len(members) - 1}, got fold(s) {bad}")
        self.members = members
        self.folds = folds

    @property
    def first_stage(self) -> str | None:
        """The members' first-stage mixing: when they mix in the incoming ``score``, this scorer reads it too."""
        return next((getattr(m, "first_stage", None) for m in self.members if reads_first_stage(m)), None)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """The input rows with fresh ranks and their out-of-fold scores: model ``i``'s for the queries of fold ``i``,
        the mean of every model's for the queries in no fold."""
        columns = ["qid", "query", "docno", *(["score"] if self.first_stage is not None else [])]
        pt.validate.columns(inp, includes=columns, context=self)
        check_id_columns(inp)
        base = inp.drop(columns=["rank"], errors="ignore").reset_index(drop=True)
        fold = base["qid"].astype(str).map(self.folds).fillna(-1).astype(int).to_numpy()
        total, count = np.zeros(len(base)), np.zeros(len(base))
        for i, member in enumerate(self.members):
            rows = np.flatnonzero((fold == i) | (fold == -1))  # its held-out fold, and the queries in none
            if len(rows) == 0:
                continue
            scored = member(base.iloc[rows])
            if len(scored) != len(rows):
                raise ValueError(f"fold model {i} ({member!r}) returned {len(scored)} rows for {len(rows)}")
            total[rows] += scores_by_pair(scored).reindex(pair_keys(base.iloc[rows])).to_numpy()
            count[rows] += 1
        return add_scores(base.drop(columns=["score"], errors="ignore"), total / count)

    def subtransformers(self) -> dict[str, list[pt.Transformer]]:
        return {"members": list(self.members)}

    def __repr__(self) -> str:
        return f"CrossFitted([{', '.join(repr(m) for m in self.members)}], {len(self.folds)} queries in folds)"
