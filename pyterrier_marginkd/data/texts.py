"""Texts alone as training examples: groups without documents, for losses that read query vectors
(:class:`~pyterrier_marginkd.losses.QueryAlignment`)."""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pandas as pd

from pyterrier_marginkd.data.groups import Group


class AlignmentTexts:
    """Distinct non-empty texts, shuffled per epoch (seeded), each a :class:`Group` with no documents; its qid is a
    digest of its text. ``texts`` is an iterable of strings or a frame with a ``query`` (topics) or ``text``
    (documents) column. Empty texts and repeats are dropped and counted in ``report``."""

    def __init__(self, texts: Iterable[str] | pd.DataFrame, *, seed: int = 0):
        if isinstance(texts, pd.DataFrame):
            column = next((c for c in ("query", "text") if c in texts.columns), None)
            if column is None:
                raise KeyError(f"a frame of texts needs a 'query' or 'text' column (found {list(texts.columns)})")
            texts = texts[column].tolist()
        elif isinstance(texts, str):
            raise TypeError("texts must be an iterable of strings (or a frame with a 'query' or 'text' column), "
                            "not one string")
        given = 0
        kept: dict[str, None] = {}
        for text in texts:
            given += 1
            if not isinstance(text, str):
                raise TypeError(f"text #{given} is {type(text).__name__}, not a string: {text!r}")
            if text.strip():
                kept.setdefault(text.strip())
        if not kept:
            raise ValueError(f"no text to align: {given} given, none non-empty")
        self.texts = list(kept)
        self.seed = seed
        self.report = {"alignment_texts": len(self.texts), "texts_given": given,
                       "texts_dropped_empty_or_repeated": given - len(self.texts)}

    def num_groups(self) -> int:
        return len(self.texts)

    def groups(self, epoch: int) -> list[Group]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.texts))
        return [Group(qid=f"text-{hashlib.sha1(self.texts[i].encode()).hexdigest()[:12]}", query=self.texts[i],
                      docnos=[], texts=[], labels=None, judged=False) for i in order]
