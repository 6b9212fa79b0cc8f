"""Teachers made of teachers: fusion of several scoring transformers (and the first stage's own score), with
per-query score normalisation and weights given or fitted on judged queries."""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_marginkd.data.frames import RecordsTransformer, add_scores, check_id_columns, pair_keys, scores_by_pair

#: per-query normalisations of member scores before they are weighted and summed
NORMALIZATIONS = ("zscore", "minmax", None)


def normalize_scores(qids: Sequence, scores: Sequence[float], method: str | None) -> np.ndarray:
    """``scores`` normalised within each query (rows sharing a ``qid``): ``"zscore"`` subtracts the query's mean and
    divides by its standard deviation, ``"minmax"`` maps the query's scores to [0, 1], None returns them unchanged.

    A query whose scores are all equal (or that has one candidate) gets 0 for every row: its scores carry no order.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {method!r}")
    values = np.asarray(scores, dtype=np.float64)
    if method is None or len(values) == 0:
        return values.copy()
    groups = pd.Series(values).groupby(pd.Series(np.asarray(qids, dtype=object)).astype(str).to_numpy(), sort=False)
    if method == "zscore":
        centre = groups.transform("mean").to_numpy()
        spread = groups.transform("std", ddof=0).to_numpy()  # (compiled; a per-group function took 100x longer)
    else:
        centre = groups.transform("min").to_numpy()
        spread = groups.transform("max").to_numpy() - centre
    out = np.zeros_like(values)
    ok = spread > 1e-12
    out[ok] = (values[ok] - centre[ok]) / spread[ok]
    return out


class FirstStageScore(pt.Transformer):
    """A scorer that passes the incoming ``score`` column through: the first stage (BM25, ...) as a fusion member.

    ``Ensemble([FirstStageScore(), encoder], normalize="zscore")`` after ``bm25 >> get_text`` fuses BM25 with the
    encoder. A frame without ``score`` is refused (the member would otherwise have nothing to pass on).
    """

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        if not isinstance(inp, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame of results, got {type(inp).__name__}")
        if "score" not in inp.columns:
            raise ValueError(f"FirstStageScore needs the first stage's 'score' column, but the input has only "
                             f"{list(inp.columns)}; put it after a retriever (e.g. bm25 >> get_text >> ensemble)")
        scores = pd.to_numeric(inp["score"], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(scores).all():
            raise ValueError(f"the first stage's 'score' column holds {int((~np.isfinite(scores)).sum())} "
                             "non-finite value(s) (NaN/inf)")
        return add_scores(inp, scores)

    def __repr__(self) -> str:
        return "FirstStageScore()"

def reads_first_stage(member: pt.Transformer) -> bool:
    """Whether a scorer reads the incoming first-stage ``score``: :class:`FirstStageScore`, or a student that mixes
    it in (``first_stage="zscore"``). Such a member's score of a row depends on its query's other candidates."""
    return isinstance(member, FirstStageScore) or getattr(member, "first_stage", None) is not None


class Ensemble(RecordsTransformer, pt.Estimator):
    """Fuses scoring transformers: ``sum_i w_i norm(s_i) / sum_i w_i``, where ``norm`` is a per-query normalisation.

    Members are any scoring transformers (CrossEncoders, DotEncoders, ``pt.apply`` scorers, ...) and
    :class:`FirstStageScore` for the incoming first-stage score; every member must return a finite score for every
    input row (members see the input's ``score`` column, which scorers replace; a student that mixes in the first
    stage, ``first_stage="zscore"``, reads it, so an input without ``score`` is refused before any member scores).
    ``normalize`` is ``"zscore"``
    (per-query mean 0, standard deviation 1 — the usual choice when fusing BM25 with neural scores), ``"minmax"``
    (per query to [0, 1]) or None (raw scores: the ensemble teacher of Hofstätter et al. 2020, the mean of
    cross-encoders' scores). ``weights=None`` weighs members equally; ``fit(results, qrels)`` picks the weights that
    maximise nDCG@10 on judged queries (a grid over the weight simplex), and ``fit_report`` says what it chose.

    With a normalisation, a row's fused score depends on the other candidates of its query: score whole candidate
    lists (as a re-ranker does); the Distiller does this for its training candidates.
    """

    def __init__(self, members: Sequence[pt.Transformer], weights: Sequence[float] | None = None, *,
                 normalize: str | None = None):
        members = list(members)
        if not members:
            raise ValueError("an Ensemble needs at least one member transformer")
        for i, member in enumerate(members):
            if not isinstance(member, pt.Transformer):
                raise TypeError(f"Ensemble member {i} must be a pt.Transformer, got {type(member).__name__}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.members = members
        self.normalize = normalize
        self.weights = self._check_weights(weights)
        self.fit_report: dict[str, Any] = {}
        self._inputs: list[str] | None = None

    def _check_weights(self, weights: Sequence[float] | None) -> list[float] | None:
        if weights is None:
            return None
        weights = [float(w) for w in weights]
        if len(weights) != len(self.members):
            raise ValueError(f"got {len(weights)} weights for {len(self.members)} members; give one weight per member")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights}")
        return weights

    @property
    def scores_whole_lists(self) -> bool:
        """True when a row's score depends on the other rows of its query (a per-query normalisation)."""
        return self.normalize is not None

    @property
    def transform_inputs(self) -> list[list[str]]:
        """The columns every member needs (``qid`` and ``docno`` at least; ``score`` for a member that reads the
        first stage's score)."""
        if self._inputs is None:
            columns = ["qid", "docno"]
            for member in self.members:
                if reads_first_stage(member):
                    columns += [c for c in ["score"] if c not in columns]
                if isinstance(member, FirstStageScore):
                    continue
                inputs = pt.inspect.transformer_inputs(member, strict=False)
                columns += [c for c in (inputs[0] if inputs else []) if c not in columns + ["score", "rank"]]
            self._inputs = columns
        return [list(self._inputs)]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """The input rows (other columns kept) with the fused ``score`` and fresh ranks."""
        base, matrix = self.member_scores(inp)
        return add_scores(base, self.fuse(base["qid"], matrix))

    def fuse(self, qids: Sequence, matrix: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
        """Fused scores from a ``[rows, members]`` matrix of raw member scores (rows grouped by ``qids``)."""
        weights = np.asarray(weights if weights is not None else
                             (self.weights if self.weights is not None else [1.0] * len(self.members)), dtype=float)
        return self.normalized(qids, matrix) @ weights / weights.sum()

    def normalized(self, qids: Sequence, matrix: np.ndarray) -> np.ndarray:
        """Each member's column of ``matrix`` normalised per query (``normalize``): what the weights sum."""
        if not len(matrix):
            return matrix
        return np.column_stack([normalize_scores(qids, matrix[:, i], self.normalize) for i in range(matrix.shape[1])])

    def member_scores(self, inp: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """The input rows (index reset, old ranks dropped) and each member's raw score of them, ``[rows, members]``."""
        if not isinstance(inp, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame of results, got {type(inp).__name__}")
        pt.validate.columns(inp, includes=self.transform_inputs[0], context=self)
        check_id_columns(inp)
        base = inp.drop(columns=["rank"], errors="ignore").reset_index(drop=True)
        if len(base) == 0:
            return base.drop(columns=["score"], errors="ignore"), np.zeros((0, len(self.members)))
        keys = pair_keys(base)
        if keys.has_duplicates:
            dup = keys[keys.duplicated()][0]
            raise ValueError(f"Ensemble input has duplicate (qid, docno) rows, e.g. {dup}; members' scores could not "
                             "be matched to rows (drop duplicates first)")
        matrix = np.column_stack([self._member_scores(i, member, base, keys) for i, member in enumerate(self.members)])
        return base.drop(columns=["score"], errors="ignore"), matrix

    def _member_scores(self, i: int, member: pt.Transformer, base: pd.DataFrame, keys: pd.MultiIndex) -> np.ndarray:
        """Member ``i``'s scores aligned to ``keys`` by (qid, docno), checked complete and finite."""
        out = member(base)
        if not isinstance(out, pd.DataFrame) or "score" not in out.columns:
            found = list(out.columns) if isinstance(out, pd.DataFrame) else type(out).__name__
            raise ValueError(f"Ensemble member {i} ({member!r}) must return a 'score' column, but returned {found}")
        returned = scores_by_pair(out, coerce=True)
        scores = returned.reindex(keys)
        missing = scores.isna().to_numpy() & ~keys.isin(returned.index)
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

    # --- fitting the weights -------------------------------------------------------------------------------
    def fit(self, results: pd.DataFrame, qrels: pd.DataFrame, va_results: pd.DataFrame | None = None,
            va_qrels: pd.DataFrame | None = None, *, steps: int = 10, rule: str = "one_se") -> Ensemble:
        """Choose the weights from nDCG@10 of the fused ranking of ``results`` (candidate lists with every column
        the members need) against ``qrels``: every point of the weight simplex with coordinates in steps of
        ``1/steps`` is tried, each member scoring the candidates once. ``rule="best"`` takes the weighting with the
        highest mean nDCG@10 (ties: the most even); ``rule="one_se"`` (default) takes the most even weighting
        whose mean is within one standard error (of the per-query differences) of the best — the one-standard-error
        rule, which keeps few judged queries from pulling the weights far from an even fusion on noise. Returns
        self; ``fit_report`` holds the chosen weights, their nDCG@10 and the best one's.
        (``va_results``/``va_qrels``, given by a ``pt.Estimator`` pipeline, are evaluated with the chosen weights.)
        """
        from pyterrier_marginkd.data.evaluation import FixedRowsNDCG10
        from pyterrier_marginkd.data.groups import validate_qrels

        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if rule not in ("one_se", "best"):
            raise ValueError(f"rule must be 'one_se' or 'best', got {rule!r}")
        if math.comb(len(self.members) + steps - 1, steps) > 20_000:
            raise ValueError(f"fitting {len(self.members)} weights in steps of 1/{steps} means too many weightings; "
                             "use fewer steps or members, or give the weights")
        qrels = validate_qrels(qrels)
        base, matrix = self.member_scores(results)
        if len(base) == 0:
            raise ValueError("Ensemble.fit got no candidates to fit the weights on")
        qids = base["qid"].astype(str)
        judged = sorted(set(qrels["qid"]) & set(qids))
        if not judged:
            raise ValueError("Ensemble.fit: none of the results' queries has qrels; pass the qrels of the same "
                             f"topics (result qids e.g. {sorted(set(qids))[:3]})")
        # the same rows ranked under every weighting: their normalised scores and trec_eval's nDCG@10, prepared once
        ndcg = FixedRowsNDCG10(qids, base["docno"], qrels[qrels["qid"].isin(judged)], judged)
        normalized = self.normalized(qids, matrix)
        candidates = []
        for point in _simplex(len(self.members), steps):
            weights = np.asarray(point, dtype=float) / steps
            per_query = ndcg(normalized @ weights / weights.sum())
            evenness = -float(np.abs(weights - 1 / len(weights)).sum())
            candidates.append((per_query, evenness, weights))
        best = max(candidates, key=lambda c: (c[0].mean(), c[1]))
        chosen = best
        if rule == "one_se" and len(judged) > 1:
            admissible = []
            for c in candidates:
                diff = best[0] - c[0]
                if diff.mean() <= diff.std(ddof=1) / math.sqrt(len(diff)) + 1e-12:
                    admissible.append(c)
            chosen = max(admissible, key=lambda c: (c[1], c[0].mean()))
        self.weights = [float(w) for w in chosen[2]]
        self.fit_report = {"weights": self.weights, "ndcg@10": float(chosen[0].mean()), "rule": rule,
                           "best_weights": [float(w) for w in best[2]], "best_ndcg@10": float(best[0].mean()),
                           "weightings_tried": len(candidates), "queries": len(judged), "normalize": self.normalize}
        if va_results is not None and va_qrels is not None:
            from pyterrier_marginkd.data.evaluation import evaluate_ndcg10

            self.fit_report["validation_ndcg@10"] = evaluate_ndcg10(self.transform(va_results),
                                                                    validate_qrels(va_qrels))
        return self

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the weights, the normalisation and the fit report to a JSON file (read back by ``load_weights``)."""
        Path(path).write_text(json.dumps({"weights": self.weights, "normalize": self.normalize,
                                          "members": [repr(m) for m in self.members],
                                          "fit_report": self.fit_report}, indent=2))

    def load_weights(self, path: str | os.PathLike) -> Ensemble:
        """Read weights saved by ``save_weights`` (the number of members must match); returns self."""
        saved = json.loads(Path(path).read_text())
        if saved.get("normalize") != self.normalize:
            raise ValueError(f"{path} holds weights for normalize={saved.get('normalize')!r}, this Ensemble uses "
                             f"normalize={self.normalize!r}")
        self.weights = self._check_weights(saved["weights"]) if saved["weights"] is not None else None
        self.fit_report = saved.get("fit_report", {})
        return self

    def subtransformers(self) -> dict[str, list[pt.Transformer]]:
        return {"members": list(self.members)}

    def schematic(self, *, input_columns=None):
        return {"label": "Ensemble", "help_url": None}

    def __repr__(self) -> str:
        weights = f", weights={self.weights}" if self.weights is not None else ""
        normalize = f", normalize={self.normalize!r}" if self.normalize is not None else ""
        return f"Ensemble([{', '.join(repr(m) for m in self.members)}]{weights}{normalize})"


def _simplex(members: int, steps: int):
    """Integer points (non-negative, summing to ``steps``) of the ``members``-dimensional simplex."""
    for point in itertools.product(range(steps + 1), repeat=members - 1):
        if sum(point) <= steps:
            yield (*point, steps - sum(point))
