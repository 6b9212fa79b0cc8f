"""The quickstart: BM25, a fused zero-shot teacher, distilled students and a label-only student in one report."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pyterrier as pt
import torch
from transformers import AutoConfig

from pyterrier_marginkd import losses
from pyterrier_marginkd.data.collection import Collection
from pyterrier_marginkd.data.pseudo import pseudo_queries
from pyterrier_marginkd.models.dot import DotEncoder
from pyterrier_marginkd.models.ensemble import Ensemble, FirstStageScore
from pyterrier_marginkd.models.hf import spread_layers
from pyterrier_marginkd.models.identity import describe
from pyterrier_marginkd.models.io import default_model, load_scorer
from pyterrier_marginkd.report import TABLE_FILE, deployed_report, markdown_table, report
from pyterrier_marginkd.training.distiller import Distiller
from pyterrier_marginkd.training.once import fit_once

#: an ir_datasets collection with train and test topics and qrels (downloaded on first use)
DEFAULT_DATA = "irds:beir/scifact"
DEFAULT_OUTPUT = "runs/quickstart"
FUSION_FILE = "fusion.json"
#: the report's second comparison: each distilled student against the label-only student
VS_LABELS_FILE = "results_vs_labels.csv"
#: the report's third: the students as deployed (int8 query encoders) against the teacher
DEPLOYED_FILE = "results_deployed.csv"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How much data and how many steps the quickstart spends; ``Recipe.preset(fast)`` gives the standard ones."""

    train_queries: int | None  #: train-split queries used (a seeded sample; None: all)
    test_queries: int | None  #: test queries evaluated (a seeded sample; None: all)
    k: int  #: BM25 candidates per query, in training and at test time (the fusion normalises over them)
    max_length: int  #: tokens per query or document
    pseudo_queries: int  #: pseudo-queries made from documents (titles or first sentences), labelled by the teacher
    valid_fraction: float  #: share of the train-split queries held out to pick the best checkpoint
    num_negatives: int | None  #: negatives per positive in a training group (None: the rest of the k candidates)
    batch_size: int  #: training groups per step
    student_steps: int  #: optimizer steps of each student (the budget: the same table on any machine)
    student_lr: float
    mix_lr: float  #: learning rate of the students' first-stage mixing weights
    student_time: float | None  #: optional seconds each student may train (results then depend on the machine)
    quantize: str | None = "int8"  #: the students as deployed on a CPU, compared with the teacher (None: skip)
    student_loss: str = "kl"  #: how the students learn the teacher's scores: a name of STUDENT_LOSSES

    def __post_init__(self):
        if self.student_loss not in STUDENT_LOSSES:
            raise ValueError(f"student_loss must be one of {sorted(STUDENT_LOSSES)}, got {self.student_loss!r}")
        if self.num_negatives is not None and not 1 <= self.num_negatives < self.k:
            raise ValueError(f"num_negatives must be between 1 and k - 1 = {self.k - 1} (or None: all {self.k - 1}),"
                             f" got {self.num_negatives}")

    @property
    def negatives(self) -> int:
        """Negatives per training group: ``num_negatives``, else every other candidate of the query."""
        return self.num_negatives or self.k - 1

    @classmethod
    def preset(cls, fast: bool = False, **overrides: Any) -> Recipe:
        """The ``--fast`` recipe (under 10 minutes on 2 CPU cores for Cranfield) or the full one, with overrides."""
        base = FAST if fast else FULL
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown recipe setting(s) {unknown}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return dataclasses.replace(base, **overrides)


#: the students' losses: name -> (report name, loss). "kl": the teacher's distribution over each query's candidate
#: list (both sides z-scored per query); "margin-mse": its margins, positive minus each negative.
STUDENT_LOSSES = {"kl": ("KL", lambda: losses.KLDiv(normalize="zscore")),
                  "margin-mse": ("Margin-MSE", losses.MarginMSE)}

# Students: k layers of the model (spread over its depth) as a query encoder against its frozen document vectors,
# mixing in the normalised BM25 score; each training query brings its whole candidate list (with 7 negatives and
# Margin-MSE, L4 kept 96.5% of the teacher on Vaswani; whole lists and KL 98.8%: benchmarks/results/kd-variants-kl).
FAST = Recipe(train_queries=None, test_queries=None, k=50, max_length=256, pseudo_queries=1000, valid_fraction=0.2,
              num_negatives=None, batch_size=32, student_steps=300, student_lr=1e-4, mix_lr=1e-3, student_time=None)
FULL = dataclasses.replace(FAST, pseudo_queries=3000, student_steps=1200)


def quickstart(data: str | os.PathLike = DEFAULT_DATA, output: str | os.PathLike = DEFAULT_OUTPUT, *,
               model: str | None = None, teacher: str | Sequence[str] | None = None,
               student_layers: Sequence[int] = (2, 4), fast: bool = False, recipe: Recipe | None = None,
               train_split: str = "train", test_split: str = "test", seed: int = 0,
               verbose: bool = True) -> pd.DataFrame:
    """Index, build a teacher, distil students and evaluate on one collection; return the report table.

    BM25 (PISA) gives ``recipe.k`` candidates per query. The teacher fuses BM25 with zero-shot neural scorers
    (``teacher``: names or folders of sentence-transformers bi-encoders or Hugging Face cross-encoders; default
    ``model``, all-MiniLM-L6-v2): per-query z-scores, weights fitted on the train split's labels (one-standard-error
    rule). No teacher is trained. Students are k layers of ``model`` (each of ``student_layers``; spread over its depth,
    the last included: ``spread_layers``) as query encoders against its document vectors, mixing in the normalised BM25
    score, distilled (``recipe.student_loss``: KL over each query's candidate list, or Margin-MSE) on the train queries
    and teacher-labelled pseudo-queries; a label-only student (the
    smallest size, RankNet on the train labels) is the baseline. Everything lands in ``output``; a later run reuses the
    index, the fusion weights, the teacher cache and every trained student.
    """
    started = time.time()
    recipe = recipe or Recipe.preset(fast)
    layers = sorted({int(k) for k in student_layers})
    if not layers or layers[0] < 1:
        raise ValueError(f"student_layers must be positive layer counts, got {list(student_layers)}")
    model = _resolve(model or default_model())
    teachers = [_resolve(t) for t in ([teacher] if isinstance(teacher, (str, os.PathLike)) else teacher or [model])]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    collection = Collection(data)
    _log(verbose, f"quickstart: {collection!r} -> {output}; {recipe}")
    if collection.derived_splits:
        _log(verbose, f"{collection.name} ships no train/test split: holding out {collection.test_fraction:.0%} of "
                      "its queries for testing (the same split every run; Collection.test_fraction)")
    with _download_hint(collection):
        bm25 = collection.bm25(output / f"{collection.name}.pisa", num_results=recipe.k)
        train_topics = _sample(collection.topics(train_split), recipe.train_queries, seed)
        train_qrels = collection.qrels(train_split)
        test_topics = _sample(collection.topics(test_split), recipe.test_queries, seed)
        test_qrels = collection.qrels(test_split)
    valid_topics = train_topics.sample(frac=recipe.valid_fraction, random_state=seed).sort_index()
    fit_topics = train_topics[~train_topics["qid"].isin(valid_topics["qid"])]
    if len(fit_topics) == 0 or len(valid_topics) == 0:
        raise ValueError(f"{len(train_topics)} train queries cannot be split into fitting and validation queries "
                         f"(valid_fraction={recipe.valid_fraction}); use more train queries")
    text = collection.get_text()
    candidates = bm25 % recipe.k >> text
    fit_res, valid_res = candidates(fit_topics), candidates(valid_topics)
    fit_qrels = train_qrels[train_qrels["qid"].astype(str).isin(set(fit_topics["qid"].astype(str)))]
    identity = {"data": _resolve(collection.data), "train_split": train_split, "seed": seed, "k": recipe.k,
                "max_length": recipe.max_length, "fit_qids": _digest(sorted(fit_topics["qid"].astype(str)))}

    # --- the teacher: BM25 fused with zero-shot scorers, weights fitted on the fitting queries -----------------
    scorer_kwargs = {"max_length": recipe.max_length, "verbose": verbose}
    torch.manual_seed(seed)  # a checkpoint without a score head gets the same new head every run
    # a bi-encoder member keeps its document vectors (frozen_docs): each document is encoded once
    members = [load_scorer(name, bi_encoder_kwargs={"frozen_docs": True}, **scorer_kwargs) for name in teachers]
    fused = Ensemble([FirstStageScore(), *members], normalize="zscore")
    _fit_fusion(fused, output / "teacher", {**identity, "teachers": teachers}, fit_res, fit_qrels, verbose)
    teacher_name = "teacher BM25 + " + " + ".join(_short(t) for t in teachers)
    _log(verbose, f"{teacher_name}: weights {fused.weights} (BM25 first; {fused.fit_report.get('queries')} "
                  f"judged queries, nDCG@10 {fused.fit_report.get('ndcg@10', float('nan')):.4f} on them)")

    # --- students --------------------------------------------------------------------------------------------
    method = "title" if collection.has_titles() else "first_sentence"
    pq = pseudo_queries(collection, method, num=recipe.pseudo_queries, seed=seed)
    _log(verbose, f"{len(pq)} pseudo-queries ({method}s of documents) for the teacher to label")
    train_res = pd.concat([fit_res, candidates(pq[["qid", "query"]])], ignore_index=True)
    # the students' frozen document encoder is the model itself: one set of document vectors for all of them, and
    # the teacher's when it fuses that same bi-encoder
    shared_docs: dict = next((m.doc_vectors for m in members if isinstance(m, DotEncoder) and m.frozen_docs
                              and _resolve(m.model_name) == model and m.max_length == recipe.max_length
                              and m.num_layers is None), {})

    # k of the model's layers spread over its depth, the last one included: the query vectors then come from the
    # layer whose space the document vectors live in (the first k layers end elsewhere)
    depth = AutoConfig.from_pretrained(model).num_hidden_layers
    kept = {n: spread_layers(depth, n) for n in layers}

    def student(num_layers: int) -> DotEncoder:
        made = DotEncoder.from_pretrained(model, num_layers=kept[num_layers], frozen_docs=True, first_stage="zscore",
                                          **scorer_kwargs)
        return made.share_doc_vectors(shared_docs)

    trainer = _Trainer(recipe, identity, seed=seed, verbose=verbose, valid=(valid_res, train_qrels),
                       scorer_kwargs=scorer_kwargs, shared_docs=shared_docs)
    distilled = {}
    teacher_id = describe(fused)
    loss_label, make_loss = STUDENT_LOSSES[recipe.student_loss]
    for num_layers in layers:
        distilled[num_layers] = trainer(
            output / f"student-L{num_layers}-{recipe.student_loss.replace('-', '')}",
            f"student L{num_layers} ({loss_label})", lambda n=num_layers: student(n), fused, make_loss(),
            (train_res, fit_qrels),
            layers=kept[num_layers], teacher_id=teacher_id, unjudged="teacher", cache_dir=output / "teacher_cache")
    baseline_layers = layers[0]
    label_only = trainer(output / f"student-L{baseline_layers}-labels", f"student L{baseline_layers} (labels only)",
                         lambda: student(baseline_layers), None, losses.RankNet(), (fit_res, fit_qrels),
                         layers=kept[baseline_layers])

    # --- the report ------------------------------------------------------------------------------------------
    test_res = candidates(test_topics)
    started_docs = time.time()
    for scorer in [*distilled.values(), label_only]:
        scorer.precompute_docs(test_res[scorer.text_field].drop_duplicates().tolist())
    _log(verbose, f"document vectors of the test candidates computed ahead of queries ({len(shared_docs)} kept, "
                  f"{time.time() - started_docs:.0f} s), as an index would hold them")
    systems: dict[str, pt.Transformer] = {"BM25": bm25 % recipe.k, teacher_name: candidates >> fused}
    students = {f"student L{n} ({loss_label})": candidates >> s for n, s in distilled.items()}
    label_name = f"student L{baseline_layers} (labels only)"
    systems.update(students)
    systems[label_name] = candidates >> label_only
    plot = importlib.util.find_spec("matplotlib") is not None
    _log(verbose, f"evaluating {len(systems)} systems on {len(test_topics)} {test_split} queries, BM25 top {recipe.k}")
    table = report(systems, test_topics, test_qrels, output / "report", baseline=0, plot=plot)
    versus = pt.Experiment([systems[label_name], *students.values()], test_topics, test_qrels,
                           [pt.measures.nDCG @ 10, pt.measures.RR @ 10], names=[label_name, *students],
                           baseline=0, correction="holm")
    versus.to_csv(output / "report" / VS_LABELS_FILE, index=False)
    with open(output / "report" / TABLE_FILE, "a") as f:
        f.write(f"\nAgainst the label-only student (paired t-test, Holm-corrected):\n\n{markdown_table(versus)}\n")
    if recipe.quantize:
        deployed_report(DEPLOYED_FILE, output, recipe.quantize, candidates, teacher_name, fused, trainer.folders,
                        test_topics, test_qrels, scorer_kwargs, shared_docs, verbose)
    if verbose:
        print((output / "report" / TABLE_FILE).read_text())
        files = (f"results.md, results.csv, {VS_LABELS_FILE}" + (f", {DEPLOYED_FILE}" if recipe.quantize else "")
                 + (", results.png" if plot else ""))
        hint = "" if plot else " (pip install pyterrier-marginkd[plot] for the plot)"
        print(f"report: {output / 'report'}: {files}{hint}")
        print(f"quickstart finished in {time.time() - started:.0f} s")
    return table


def _fit_fusion(fused: Ensemble, folder: Path, settings: dict, fit_res: pd.DataFrame, qrels: pd.DataFrame,
                verbose: bool) -> None:
    """Fit the fusion weights, or read them from ``folder`` when a run with the same settings fitted them."""
    file = folder / FUSION_FILE
    settings = json.loads(json.dumps(settings))
    if file.exists():
        saved = json.loads(file.read_text())
        if saved.get("settings") == settings:
            fused.load_weights(file)
            _log(verbose, f"teacher: reusing the fusion weights in {file}")
            return
        _log(verbose, f"teacher: {file} was fitted with other settings; fitting again")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    fused.fit(fit_res, qrels)
    fused.fit_report["seconds"] = time.time() - started
    fused.save_weights(folder / f"{FUSION_FILE}.tmp")
    record = json.loads((folder / f"{FUSION_FILE}.tmp").read_text())
    (folder / f"{FUSION_FILE}.tmp").write_text(json.dumps({**record, "settings": settings}, indent=2))
    os.replace(folder / f"{FUSION_FILE}.tmp", file)


@dataclasses.dataclass
class _Trainer:
    """Trains one quickstart student per output folder, or loads it when a run with the same settings finished
    there (:func:`~pyterrier_marginkd.training.once.fit_once`: other settings are refused rather than mixed)."""

    recipe: Recipe
    identity: dict
    seed: int
    verbose: bool
    valid: tuple
    scorer_kwargs: dict
    shared_docs: dict
    #: each student's folder by its report name (its trained weights are in ``folder / "student"``)
    folders: dict[str, Path] = dataclasses.field(default_factory=dict)

    def __call__(self, folder: Path, label: str, make_student, teacher: pt.Transformer | None,
                 loss: losses.RankingLoss, fit_args: tuple, *, layers: list[int], teacher_id: str | None = None,
                 **extra: Any) -> DotEncoder:
        r = self.recipe
        settings = {**self.identity, "loss": repr(loss), "steps": r.student_steps, "lr": r.student_lr,
                    "mix_lr": r.mix_lr, "batch_size": r.batch_size, "num_negatives": r.negatives,
                    "pseudo_queries": r.pseudo_queries if teacher is not None else 0, "max_time": r.student_time,
                    "layers": layers, "teacher": teacher_id, "training_qids": _digest(sorted(
                        fit_args[0]["qid"].astype(str).unique()))}
        self.folders[label] = folder

        def fit(output_dir: Path) -> Distiller:
            torch.manual_seed(self.seed)
            # a step budget: enough epochs that max_steps, not the data, ends the run
            distiller = Distiller(make_student(), teacher, loss=loss, epochs=r.student_steps,
                                  max_steps=r.student_steps, batch_size=r.batch_size, lr=r.student_lr,
                                  head_lr=r.mix_lr, num_negatives=r.negatives, max_time=r.student_time,
                                  seed=self.seed, eval_steps=max(r.student_steps // 6, 1),
                                  save_steps=max(r.student_steps // 3, 1), output_dir=output_dir,
                                  verbose=self.verbose, **extra)
            distiller.fit(*fit_args, *self.valid)
            report, steps = distiller.report, len(distiller.history)
            _log(self.verbose, f"{label}: {steps} steps; best validation nDCG@10 "
                               f"{report.get('best_ndcg@10', float('nan')):.4f} at step {report.get('best_step')}")
            if report.get("stopped_by_max_time"):
                _log(self.verbose, f"{label}: the {r.student_time:.0f} s budget allowed {steps} of "
                                   f"{report['total_steps']} steps (a busy machine allows fewer)")
            return distiller

        student, _ = fit_once(folder, settings, fit, label=label, verbose=self.verbose,
                              load_kwargs=self.scorer_kwargs)
        return student.share_doc_vectors(self.shared_docs)


def _short(name: str) -> str:
    """A readable name of a checkpoint: its folder name (the package folder for the shipped MiniLM), or hub id."""
    path = Path(name)
    if path.exists():
        return path.parent.name if path.name == "model" else path.name
    return name.split("/")[-1]


def _sample(topics: pd.DataFrame, num: int | None, seed: int) -> pd.DataFrame:
    """``num`` topics drawn with ``seed`` (all when there are no more), in their original order."""
    if num is None or len(topics) <= num:
        return topics
    return topics.sample(num, random_state=seed).sort_index().reset_index(drop=True)


def _resolve(name: str | os.PathLike) -> str:
    """An absolute path for an existing local path, else the name unchanged (hub or irds: id)."""
    return str(Path(name).resolve()) if Path(name).exists() else str(name)


def _digest(values: list[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:16]


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)


@contextlib.contextmanager
def _download_hint(collection: Collection) -> Iterator[None]:
    """Turn a failed ir_datasets download into an error that says what to do offline."""
    try:
        yield
    except OSError as error:
        if not collection.data.startswith("irds:"):
            raise
        raise RuntimeError(f"could not load {collection.data}: ir_datasets downloads it on first use and that failed "
                           f"({error}). Offline, pass a local folder with docs.jsonl.gz, topics.{{train,test}}.tsv and "
                           "qrels.{train,test}.txt: --data path/to/folder") from error
