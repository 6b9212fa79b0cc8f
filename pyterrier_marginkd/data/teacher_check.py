"""A teacher's output checked before anything is cached or written: a scoring transformer that lost, added or
duplicated rows, or gave NaN/inf scores, is named at once."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyterrier as pt


class CheckedTeacher(pt.Transformer):
    """Runs a teacher and refuses output that would corrupt training or the cache: no ``score``, lost, extra or
    duplicated rows, NaN/inf scores (a ValueError naming the teacher, before anything is cached)."""

    def __init__(self, teacher: pt.Transformer, text_field: str = "text"):
        self.teacher = teacher
        self.transform_inputs = [["qid", "query", "docno", text_field]]
        self.calls = 0
        self.pairs_scored = 0

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        try:
            out = self.teacher(inp)
        except pd.errors.IntCastingNaNError as err:  # pt.model.add_ranks inside the teacher met NaN scores
            raise ValueError(f"the teacher {self.teacher!r} failed to rank its own scores, which are NaN/inf ({err}); "
                             "fix the teacher (nothing was cached)") from None
        self.calls += 1
        self.pairs_scored += len(inp)
        if not isinstance(out, pd.DataFrame) or "score" not in out.columns:
            found = list(out.columns) if isinstance(out, pd.DataFrame) else type(out).__name__
            raise ValueError(f"the teacher {self.teacher!r} must add a 'score' column, but returned {found}; "
                             "a teacher is a scoring transformer such as a CrossEncoder or `pt.apply.doc_score(...)`")
        keys_in = set(zip(inp["qid"].astype(str), inp["docno"].astype(str)))
        keys_out = set(zip(out["qid"].astype(str), out["docno"].astype(str)))
        if keys_in - keys_out:
            lost = sorted(keys_in - keys_out)[:3]
            raise ValueError(f"the teacher {self.teacher!r} dropped {len(keys_in - keys_out)} of the {len(inp)} "
                             f"(qid, docno) pairs it was given, e.g. {lost}; a teacher must score every pair")
        if len(out) != len(inp):
            raise ValueError(f"the teacher {self.teacher!r} returned {len(out)} rows for the {len(inp)} pairs it was "
                             "given; a teacher must score each pair exactly once (nothing was cached)")
        scores = pd.to_numeric(out["score"], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(scores)
        if bad.any():
            row = out.iloc[int(np.flatnonzero(bad)[0])]
            raise ValueError(f"the teacher {self.teacher!r} gave {int(bad.sum())} non-finite score(s) (NaN/inf), e.g. "
                             f"{row['score']!r} for qid={row['qid']!r}, docno={row['docno']!r}; fix the teacher "
                             "(nothing was cached)")
        return out.assign(score=scores)

    def __repr__(self) -> str:
        return repr(self.teacher)
