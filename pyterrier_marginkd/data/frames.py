"""Checks of PyTerrier frames shared by models and training data: result frames with query and text, identifiers,
text columns; each error names the row and how to fix it."""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pandas as pd
import pyterrier as pt

RESULT_COLUMNS = ["qid", "query", "docno"]
_SURROGATE = re.compile("[\ud800-\udfff]")



def check_text_column(inp: pd.DataFrame, column: str) -> None:
    """Raise a ValueError naming the first row whose ``column`` is not a string (NaN, None, bytes, numbers)."""
    values = inp[column]
    is_str = values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    if not is_str.all():
        pos = int(np.flatnonzero(~is_str)[0])
        row = inp.iloc[pos]
        bad = values.iloc[pos]
        missing = bad is None or (isinstance(bad, float) and math.isnan(bad))
        what = "missing (NaN/None)" if missing else type(bad).__name__
        raise ValueError(
            f"column {column!r} must hold strings, but row {pos} (qid={row.get('qid')!r}, docno={row.get('docno')!r}) "
            f"is {what}: {bad!r}. Fill or drop such rows before scoring.")


def check_id_columns(inp: pd.DataFrame, columns: Sequence[str] = ("qid", "docno")) -> None:
    """Raise a ValueError naming the first row whose identifier (``qid``, ``docno``) is missing (None/NaN) or is
    bytes that are not UTF-8 (ids are compared as strings, ``str(1) == "1"``, bytes decoded as UTF-8).

    Identifiers of any type (str, int, bytes...) are otherwise kept as they are; a re-ranker ranks per ``qid`` value.
    """
    for column in columns:
        values = inp[column]
        bad = values.isna().to_numpy(dtype=bool)
        what = "missing (None/NaN)"
        if not bad.any() and values.dtype == object:
            bad = values.map(lambda v: isinstance(v, bytes) and not _is_utf8(v)).to_numpy(dtype=bool)
            what = "bytes that are not UTF-8"
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            row = inp.iloc[pos]
            raise ValueError(f"column {column!r} is {what} in {int(bad.sum())} row(s), e.g. row {pos} "
                             f"(qid={row.get('qid')!r}, docno={row.get('docno')!r}); every row needs a qid and a "
                             "docno")


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def validate_results(inp: pd.DataFrame, text_field: str, context: pt.Transformer | None = None) -> None:
    """Check that ``inp`` is a result frame with query and text, naming what is missing and how to add it."""
    if not isinstance(inp, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame of results, got {type(inp).__name__}")
    try:
        pt.validate.result_frame(inp, extra_columns=["query", text_field])
    except pt.validate.InputValidationError as err:
        missing = [c for c in RESULT_COLUMNS + [text_field] if c not in inp.columns]
        hint = ""
        if text_field in missing:
            hint = (f" Add the document text first, e.g. `retriever >> pt.text.get_text(dataset, {text_field!r}) >> "
                    f"reranker` (or pyterrier_marginkd.Collection(...).get_text()).")
        if "query" in missing:
            hint += " The query text comes from the topics frame (columns qid, query)."
        name = repr(context) if context is not None else "input"
        raise pt.validate.InputValidationError(
            f"{name} is missing column(s) {missing}; found {list(inp.columns)}.{hint}", err.modes) from None


def pair_keys(frame: pd.DataFrame) -> pd.MultiIndex:
    """The (qid, docno) pair of each row, as strings: the key that matches a scorer's output to its input rows."""
    return pd.MultiIndex.from_arrays([frame["qid"].astype(str), frame["docno"].astype(str)])


def scores_by_pair(frame: pd.DataFrame, coerce: bool = False) -> pd.Series:
    """``frame``'s scores as floats keyed by :func:`pair_keys` (the first row of a repeated pair); ``coerce``: a value
    that is not a number becomes NaN instead of an error."""
    keys = pair_keys(frame)
    values = pd.to_numeric(frame["score"], errors="coerce") if coerce else frame["score"]
    return pd.Series(values.to_numpy(dtype=float), index=keys)[~keys.duplicated()]


def add_scores(inp: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """Return ``inp`` (other columns untouched) with a fresh ``score`` column and PyTerrier ranks."""
    out = inp.drop(columns=["score", "rank"], errors="ignore").assign(score=np.asarray(scores, dtype=np.float64))
    if len(out) == 0:
        return out.assign(rank=pd.Series(dtype="int64"))
    out["rank"] = 0
    return pt.model.add_ranks(out)


def valid_unicode(text: str) -> str:
    """``text`` with lone surrogates (e.g. from ``errors="surrogateescape"`` decoding), which cannot be encoded as
    UTF-8 for the Rust tokenizer or SQLite, replaced by U+FFFD (the replacement character)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


class RecordsTransformer:
    """Mixin for a ``pt.Transformer`` with a ``transform``: PyTerrier's list-of-dicts calling convention builds the
    frame without pandas' pyarrow-backed strings (pandas 3 with pyarrow installed), which cannot hold a text with a
    lone surrogate (a valid Python ``str``); such texts are scored as in a frame."""

    def transform_iter(self, inp):
        with pd.option_context("future.infer_string", False):
            frame = pd.DataFrame(list(inp))
        return self.transform(frame).to_dict(orient="records")
