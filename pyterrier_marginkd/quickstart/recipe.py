"""What the quickstart spends and how its students learn: :class:`Recipe`, the ``--fast`` and full presets, the
students' losses."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pyterrier_marginkd import losses
from pyterrier_marginkd.data.collection import clean_query
from pyterrier_marginkd.data.frames import pair_keys
from pyterrier_marginkd.data.pseudo import METHODS as PSEUDO_METHODS
from pyterrier_marginkd.data.pseudo import natural_method
from pyterrier_marginkd.models.base import resolve_device
from pyterrier_marginkd.training.steps import native_bf16

#: an ir_datasets collection with train and test topics and qrels (downloaded on first use)
DEFAULT_DATA = "irds:beir/scifact"
DEFAULT_OUTPUT = "runs/quickstart"

#: the fewest training groups a step takes when the query-word budget shrinks batches of long queries
MIN_WORD_BUDGET_BATCH = 8
#: judged training queries whose median is longer than this many words are paragraphs: ``pseudo_query_method="auto"``
#: then makes pseudo-queries of their length (twice the 16 words titles and first sentences are cut to; Cranfield's
#: median is 18, Vaswani's 11, their paragraph-long copies' about 50 of the 64 tokens read)
LONG_QUERY_WORDS = 32

#: the students' distillation losses: name -> (report name, loss). "kl": the teacher's distribution over each query's
#: candidate list (both sides z-scored per query); "margin-mse": its margins, positive minus each negative.
STUDENT_LOSSES = {"kl": ("KL", lambda: losses.KLDiv(normalize="zscore")),
                  "margin-mse": ("Margin-MSE", losses.MarginMSE)}


#: the student architectures the quickstart trains (``architectures=``; the default is the first alone)
ARCHITECTURES = ("DotEncoder", "CrossEncoder", "ColBERT", "PreTT", "TK")


@dataclasses.dataclass(frozen=True)
class ArchitectureRecipe:
    """How a student architecture other than the default DotEncoder trains in the quickstart. Its distilled student
    and its label-only twin train alike: the same data, steps, groups and learning rates; only the loss differs."""

    batch_size: int  #: training groups per step (each candidate of a group goes through the whole model)
    num_negatives: int  #: sampled negatives per positive in a group (the KL divergence is over the group)
    lr: float  #: learning rate of the encoder
    head_lr: float | None = None  #: learning rate of new heads and first-stage mixing weights (None: ``lr``)
    #: normalisation of the BM25 score the student mixes into its own (None: no mix)
    first_stage: str | None = "zscore"
    #: tokens per query or document (the CrossEncoder: per pair), in training and when it scores, at most the
    #: recipe's ``max_length`` (None: the recipe's). Each candidate goes through the whole model, padded to the
    #: longest of its batch: on Cranfield's abstracts (median 175 tokens, a tenth over 337) a training batch pads to
    #: 256 nearly always
    max_length: int | None = None
    #: validations after step 0 (every ``steps // validations`` steps; each scores every candidate of every validation
    #: query through the whole model: on Cranfield 6 of them cost about as much as the 300 training steps)
    validations: int = 6
    #: the distilled student's loss (a name of STUDENT_LOSSES) when the recipe leaves ``student_loss`` unset (None:
    #: KL, as the DotEncoder's)
    student_loss: str | None = None

    def __post_init__(self):
        if self.student_loss is not None and self.student_loss not in STUDENT_LOSSES:
            raise ValueError(f"student_loss must be one of {sorted(STUDENT_LOSSES)} or None, got {self.student_loss!r}")
        if self.batch_size < 1 or self.num_negatives < 1 or not self.lr > 0:
            raise ValueError(f"batch_size and num_negatives must be >= 1 and lr > 0, got {self}")
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens (or None: the recipe's), got {self.max_length}")
        if self.validations < 1:
            raise ValueError(f"validations must be >= 1, got {self.validations}")


#: joint architectures encode every candidate of every group in a step (DotEncoder students encode only queries
#: against stored document vectors), so they take 4 groups of 1 + 3 candidates (8 groups of 1 + 7 took 4 s per step
#: for a 2-layer CrossEncoder on Cranfield, 2 cores), read 128 tokens of each candidate and validate 3 times after
#: step 0; TK is small and trained from its embeddings, so it takes a larger learning rate (as
#: benchmarks/architectures.py trained it)
ARCHITECTURE_RECIPES = {
    "CrossEncoder": ArchitectureRecipe(batch_size=4, num_negatives=3, lr=1e-4, head_lr=1e-3, max_length=128,
                                       validations=3),
    "ColBERT": ArchitectureRecipe(batch_size=4, num_negatives=3, lr=1e-4, head_lr=1e-3, max_length=128,
                                  validations=3, student_loss="margin-mse"),
    "PreTT": ArchitectureRecipe(batch_size=4, num_negatives=3, lr=1e-4, head_lr=1e-3, max_length=128,
                                validations=3),
    "TK": ArchitectureRecipe(batch_size=4, num_negatives=3, lr=1e-3, head_lr=1e-3, max_length=128, validations=3),
}


def architecture_names(names: Sequence[str] | None) -> tuple[str, ...]:
    """``names`` spelled as in :data:`ARCHITECTURES` (any case), in the given order without repeats; the default
    (``None``) is the DotEncoder alone."""
    if names is None:
        return ARCHITECTURES[:1]
    if isinstance(names, str):
        names = [names]
    by_lower = {a.lower(): a for a in ARCHITECTURES}
    unknown = [n for n in names if str(n).lower() not in by_lower]
    if unknown or not names:
        raise ValueError(f"unknown student architecture(s) {unknown}; choose from {list(ARCHITECTURES)}"
                         if unknown else f"architectures is empty; choose from {list(ARCHITECTURES)}")
    return tuple(dict.fromkeys(by_lower[str(n).lower()] for n in names))


def group_queries(results: pd.DataFrame, qrels: pd.DataFrame | None) -> list[str]:
    """The query of each training group the candidates ``results`` make, as the word budget counts them: a judged
    query (in ``qrels``) once per relevant candidate (label > 0; none: no group), any other query (a pseudo-query,
    labelled by the teacher) once."""
    queries = results.drop_duplicates("qid").assign(qid=lambda f: f["qid"].astype(str)).set_index("qid")["query"]
    if qrels is None or not len(qrels):
        return [str(q) for q in queries]
    judged = set(qrels["qid"].astype(str))
    relevant = set(pair_keys(qrels[qrels["label"] > 0]))
    retrieved = pair_keys(results).unique()
    hits = pd.Series([qid for qid, docno in retrieved if (qid, docno) in relevant], dtype=object).value_counts()
    return [str(q) for qid, q in queries.items() for _ in range(int(hits.get(qid, 0)) if qid in judged else 1)]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How much data and how many steps the quickstart spends; ``Recipe.preset(fast)`` gives the standard ones."""

    train_queries: int | None  #: train-split queries used (a seeded sample; None: all)
    test_queries: int | None  #: test queries evaluated (a seeded sample; None: all)
    k: int  #: BM25 candidates per query, in training and at test time (the fusion normalises over them)
    max_length: int  #: tokens per query or document
    pseudo_queries: int  #: pseudo-queries made from documents (titles or first sentences), labelled by the teacher
    valid_fraction: float  #: share of the train-split queries held out to pick checkpoints and the teacher
    num_negatives: int | None  #: negatives per positive in a training group (None: the rest of the k candidates)
    batch_size: int  #: training groups per step
    student_steps: int  #: optimizer steps of each student and of the teacher's fine-tuned scorer (the budget)
    student_lr: float
    mix_lr: float  #: learning rate of the students' first-stage mixing weights
    student_time: float | None  #: optional seconds each student may train (results then depend on the machine)
    quantize: str | None = "int8"  #: the students as deployed on a CPU, compared with the teacher (None: skip)
    #: how the distilled students learn the teacher's scores, a name of STUDENT_LOSSES for all of them; None (the
    #: default): each architecture's own (``ArchitectureRecipe.student_loss``; the DotEncoder's and any other: KL)
    student_loss: str | None = None
    #: fine-tune the whole model on the judged queries as a third fusion member (the label-aware teacher, kept
    #: when it beats the zero-shot fusion on the validation queries)
    teacher_labels: bool = True
    #: folds of the fitting queries to choose the teacher on: K > 1, K fold models (each trained without its fold)
    #: score every judged query out of fold, and the label-aware fusion is kept when it beats the zero-shot one over
    #: all of them; 1, the choice rests on the validation queries alone. Either way the teacher's member is the
    #: model fine-tuned on all the fitting queries, its fusion weights fitted on the validation queries
    teacher_folds: int = 3
    teacher_steps: int = 150  #: optimizer steps of the teacher's fine-tuned member
    teacher_fold_steps: int = 50  #: optimizer steps of each fold model (they only measure; their best came early)
    #: weight of the hard-label term (RankNet on judged queries only) beside distillation (0: distillation alone)
    label_weight: float = 0.0
    #: weight of the alignment term (each batch's query vectors against the full model's, QueryAlignment) beside
    #: distillation (0: none)
    align_weight: float = 0.0
    #: alignment steps before distillation (a first stage: query vectors of the training queries, the pseudo-queries
    #: and spans of documents learn the full model's; 0: none)
    align_steps: int = 0
    #: words of training queries one step may encode: when the training queries are paragraphs, a step takes fewer
    #: groups (mean words of a group's query x groups <= this; at least 8) so that it costs about what a batch of
    #: one-line queries costs (None: always batch_size). A judged query makes one group per relevant candidate, a
    #: pseudo-query one, so the mean is over groups. Short-query collections keep batch_size.
    query_words_per_step: int | None = 1024
    #: when the label-aware teacher is chosen, the distilled students start from the layers of its fine-tuned member
    #: (one model, not cross-fitted folds) instead of the zero-shot model's; the label-only student never does. Off by
    #: default: on paragraph-long Cranfield queries it moved L2 by +0.007 and L4 by -0.004 nDCG@10 (README, Results)
    students_from_tuned: bool = False
    #: bfloat16 autocast in every training step (the teacher's member and fold models, the students;
    #: ``TrainSettings.amp``): None, where the training device has native bfloat16 (CUDA, CPUs with AVX512-BF16 or
    #: AMX), else float32; True, always asked for (a device without it warns and trains in float32); False, never.
    #: nDCG@10 within 0.003 of float32 on Cranfield, Vaswani and paragraph-long Cranfield (two seeds), 1.1-1.4x faster
    amp: bool | None = None
    #: tokens of each query the bi-encoders read (the teacher's members, the fold models, the DotEncoder students;
    #: documents keep ``max_length``), at most ``max_length`` (None: ``max_length``). ``--fast`` reads 64, which
    #: cuts only paragraph-long queries (Cranfield's and Vaswani's longest take 59 tokens, their pseudo-queries 37):
    #: on paragraph-long Cranfield and Vaswani queries the runs took 544 s and 711 s instead of 658 s and 891 s with
    #: 128 tokens, nDCG@10 level or better on average (results book, "Paragraph-long queries")
    query_max_length: int | None = None
    #: how pseudo-queries are made from documents: None (the default), titles (first sentences where documents have
    #: no title); a name of ``data.pseudo.METHODS``, ``"span"`` taking runs of words as long as the judged training
    #: queries as the students read them (their interquartile range); ``"auto"``, spans only when those queries are
    #: paragraphs (median over ``LONG_QUERY_WORDS`` words). Spans on paragraph-long queries lifted Vaswani's students
    #: and cost Cranfield's, at 1.1-1.2x the time: not the default (results book, "Paragraph-long queries")
    pseudo_query_method: str | None = None
    #: temperature of the KL distillation loss (``losses.KLDiv``; both score lists are z-scored per query, so below 1
    #: the targets put more of their mass on the teacher's top candidates); the other losses ignore it
    kl_temperature: float = 1.0

    def trains_in_bf16(self) -> bool:
        """Whether this recipe's training steps ask for bfloat16 autocast on this machine's training device."""
        if self.amp is not None:
            return self.amp
        return native_bf16(resolve_device(None))

    def __post_init__(self):
        if self.student_loss is not None and self.student_loss not in STUDENT_LOSSES:
            raise ValueError(f"student_loss must be one of {sorted(STUDENT_LOSSES)} or None (each architecture's "
                             f"own), got {self.student_loss!r}")
        if self.num_negatives is not None and not 1 <= self.num_negatives < self.k:
            raise ValueError(f"num_negatives must be between 1 and k - 1 = {self.k - 1} (or None: all {self.k - 1}),"
                             f" got {self.num_negatives}")
        if self.teacher_folds < 1 or self.teacher_steps < 1 or self.teacher_fold_steps < 1:
            raise ValueError(f"teacher_folds, teacher_steps and teacher_fold_steps must be >= 1, got "
                             f"{self.teacher_folds}, {self.teacher_steps}, {self.teacher_fold_steps}")
        for name in ("label_weight", "align_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.query_words_per_step is not None and not self.query_words_per_step >= 1:
            raise ValueError(f"query_words_per_step must be >= 1 or None, got {self.query_words_per_step!r}")
        if not (self.amp is None or isinstance(self.amp, bool)):
            raise ValueError(f"amp must be True, False or None (where the device has native bfloat16), got "
                             f"{self.amp!r}")
        if self.query_max_length is not None and not (isinstance(self.query_max_length, int)
                                                      and self.query_max_length >= 3):
            raise ValueError(f"query_max_length must be a whole number >= 3 (room for [CLS], [SEP] and a token; None:"
                          f" max_length), got {self.query_max_length!r}")
        if not (isinstance(self.kl_temperature, (int, float)) and not isinstance(self.kl_temperature, bool)
                and self.kl_temperature > 0):
            raise ValueError(f"kl_temperature must be a number > 0, got {self.kl_temperature!r}")
        if self.pseudo_query_method not in (None, "auto", *PSEUDO_METHODS):
            raise ValueError(f"pseudo_query_method must be None, 'auto' or one of {PSEUDO_METHODS}, got "
                             f"{self.pseudo_query_method!r}")
        if isinstance(self.align_steps, bool) or not isinstance(self.align_steps, int) or self.align_steps < 0:
            raise ValueError(f"align_steps must be a whole number >= 0, got {self.align_steps!r}")

    @property
    def query_length(self) -> int | None:
        """Tokens of each query the bi-encoders read: ``query_max_length`` capped at ``max_length`` (None when that
        leaves ``max_length``: queries read as documents are)."""
        if self.query_max_length is None or self.query_max_length >= self.max_length:
            return None
        return self.query_max_length

    @property
    def negatives(self) -> int:
        """Negatives per training group: ``num_negatives``, else every other candidate of the query."""
        return self.num_negatives or self.k - 1

    def batch_for(self, queries: Sequence[str]) -> int:
        """Training groups per step for training groups whose queries are ``queries`` (one entry per group, a query
        repeated for each of its groups: :func:`group_queries`): ``batch_size``, or fewer (at least
        ``MIN_WORD_BUDGET_BATCH``) when their mean length in words times ``batch_size`` exceeds
        ``query_words_per_step`` — each group of a step brings its query, so the mean is over groups."""
        queries = [str(q) for q in queries]
        if self.query_words_per_step is None or not queries:
            return self.batch_size
        mean_words = max(sum(len(q.split()) for q in queries) / len(queries), 1.0)
        fitting = int(self.query_words_per_step // mean_words)
        return max(min(self.batch_size, fitting), min(MIN_WORD_BUDGET_BATCH, self.batch_size))

    def pseudo_query_plan(self, has_titles: bool, train_queries: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """The pseudo-query method and its keyword arguments for :func:`~pyterrier_marginkd.data.pseudo_queries`
        (``train_queries``: the judged training queries as the students read them): titles (first sentences when
        documents have no title) for None, and for ``"auto"`` unless those queries are paragraphs (median over
        :data:`LONG_QUERY_WORDS` words); spans (given, or for ``"auto"`` on paragraphs) of lengths over the training
        queries' interquartile range; any other method as given."""
        words = np.array([len(clean_query(str(q)).split()) for q in train_queries])
        natural = natural_method(has_titles)
        method = self.pseudo_query_method or natural
        if method == "auto":
            long = len(words) > 0 and float(np.median(words)) > LONG_QUERY_WORDS
            method = "span" if long else natural
        if method != "span":
            return method, {}
        if len(words) == 0:  # an explicit "span" without judged queries: the function's own lengths
            return method, {}
        low, high = (max(int(w), 3) for w in np.percentile(words, [25, 75]))
        return method, {"span_words": (low, high), "max_words": high}

    def loss_for(self, architecture: str = "DotEncoder") -> str:
        """The distillation loss (a name of STUDENT_LOSSES) of ``architecture``'s distilled students: the recipe's
        ``student_loss`` when set, else the architecture's own, else KL."""
        if self.student_loss is not None:
            return self.student_loss
        own = ARCHITECTURE_RECIPES.get(architecture)
        return own.student_loss if own is not None and own.student_loss is not None else "kl"

    def student_objective(self, alignment: bool = True, architecture: str = "DotEncoder"
                          ) -> tuple[str, losses.RankingLoss]:
        """The distilled students' report name and loss: the distillation loss, plus ``label_weight`` times RankNet on
        the judged queries (pseudo-queries get the distillation term only), plus ``align_weight`` times the query
        vectors' alignment with the full model's (unless ``alignment=False``: students without query vectors of the
        full model's space)."""
        kind = self.loss_for(architecture)
        name, make = STUDENT_LOSSES[kind]
        loss = make()
        if kind == "kl" and self.kl_temperature != 1:
            name, loss = f"{name} T={self.kl_temperature:g}", losses.KLDiv(self.kl_temperature, normalize="zscore")
        if self.label_weight:
            name, loss = f"{name} + labels", loss + self.label_weight * losses.JudgedOnly(losses.RankNet())
        if self.align_weight and alignment:
            name, loss = f"{name} + alignment", loss + self.align_weight * losses.QueryAlignment()
        return name, loss

    def loss_folder(self, architecture: str = "DotEncoder", alignment: bool = True) -> str:
        """The part of a distilled student's folder name its loss settings make: the distillation loss, its
        temperature when not 1 (KL), then :meth:`folder_suffix`."""
        kind = self.loss_for(architecture)
        temperature = f"-t{self.kl_temperature:g}" if kind == "kl" and self.kl_temperature != 1 else ""
        return kind.replace("-", "") + temperature + self.folder_suffix(alignment)

    def folder_suffix(self, alignment: bool = True) -> str:
        """What the students' folder names add for the loss settings beyond the distillation loss (``alignment=False``:
        for students trained without the alignment terms)."""
        if not alignment:
            return "" if self.label_weight == 0 else f"-hardlabels{self.label_weight:g}"
        return (self.folder_suffix(alignment=False)
                + ("" if self.align_weight == 0 else f"-align{self.align_weight:g}")
                + ("" if self.align_steps == 0 else f"-alignfirst{self.align_steps}"))

    @classmethod
    def preset(cls, fast: bool = False, **overrides: Any) -> Recipe:
        """The ``--fast`` recipe (fewer pseudo-queries and steps) or the full one, with overrides."""
        base = FAST if fast else FULL
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown recipe setting(s) {unknown}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return dataclasses.replace(base, **overrides)


# Students: k layers of the model (spread over its depth) as a query encoder against its frozen document vectors,
# mixing in the normalised BM25 score; each training query brings its whole candidate list (with 7 negatives and
# Margin-MSE, L4 kept 96.5% of the teacher on Vaswani; whole lists and KL 98.8%: benchmarks/results/kd-variants-kl).
FAST = Recipe(train_queries=None, test_queries=None, k=50, max_length=256, pseudo_queries=1000, valid_fraction=0.2,
              num_negatives=None, batch_size=32, student_steps=300, student_lr=1e-4, mix_lr=1e-3, student_time=None,
              query_max_length=64)
FULL = dataclasses.replace(FAST, pseudo_queries=3000, student_steps=1200, query_max_length=None)
