"""The quickstart: BM25, a fine-tuned teacher, a label-only and a Margin-MSE student, compared in one report."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pyterrier as pt
import torch

from pyterrier_marginkd import losses
from pyterrier_marginkd._scorer import NeuralScorer
from pyterrier_marginkd.collection import Collection
from pyterrier_marginkd.cross_encoder import CrossEncoder
from pyterrier_marginkd.distill import Distiller
from pyterrier_marginkd.io import load
from pyterrier_marginkd.report import TABLE_FILE, report

#: an ir_datasets collection with train and test topics and qrels (downloaded on first use)
DEFAULT_DATA = "irds:beir/scifact"
DEFAULT_OUTPUT = "runs/quickstart"
DONE_FILE = "done.json"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How much data and time the quickstart spends; ``Recipe.preset(fast)`` gives the two standard ones."""

    train_queries: int | None  #: train queries used (a seeded sample; None: all)
    test_queries: int | None  #: test queries evaluated (a seeded sample; None: all)
    k_train: int  #: BM25 candidates per training query (positives and negatives come from them)
    k: int  #: BM25 candidates re-ranked at test time
    max_length: int  #: tokens per (query, document) pair
    num_negatives: int  #: negatives per positive in a training group
    batch_size: int  #: training groups per step
    teacher_epochs: int
    student_epochs: int
    teacher_lr: float
    student_lr: float
    teacher_time: float | None  #: seconds the teacher may train (None: no limit)
    student_time: float | None  #: seconds each student may train (None: no limit)

    @classmethod
    def preset(cls, fast: bool = False, **overrides: Any) -> Recipe:
        """The ``--fast`` recipe (under 10 minutes on 2 CPU cores for Cranfield) or the full one, with overrides."""
        base = FAST if fast else FULL
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown recipe setting(s) {unknown}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return dataclasses.replace(base, **overrides)


# Fine-tuning MiniLM-L6 (a bi-encoder checkpoint) as a cross-encoder sits on a plateau (RankNet loss ~ln 2) for its
# first ~100 steps before it ranks, so both recipes favour steps: lr well above the usual 2e-5, several epochs.
# --fast: time-boxed (the teacher gets most of the budget), 128 tokens and 20 candidates keep scoring cheap.
FAST = Recipe(train_queries=200, test_queries=100, k_train=20, k=20, max_length=128, num_negatives=1, batch_size=8,
              teacher_epochs=4, student_epochs=3, teacher_lr=2e-4, student_lr=3e-4, teacher_time=210.0,
              student_time=55.0)
FULL = Recipe(train_queries=None, test_queries=None, k_train=30, k=50, max_length=256, num_negatives=3, batch_size=8,
              teacher_epochs=5, student_epochs=4, teacher_lr=1e-4, student_lr=2e-4, teacher_time=None,
              student_time=None)


def quickstart(data: str | os.PathLike = DEFAULT_DATA, output: str | os.PathLike = DEFAULT_OUTPUT, *,
               model: str | None = None, teacher: str | None = None, student_layers: int = 2, fast: bool = False,
               recipe: Recipe | None = None, train_split: str = "train", test_split: str = "test", seed: int = 0,
               verbose: bool = True) -> pd.DataFrame:
    """Index, train, distil and evaluate on one collection; return the report table (also written to output/report).

    BM25 (PISA) gives candidates. The teacher is ``model`` (default all-MiniLM-L6-v2) fine-tuned as a cross-encoder
    on the train split's labels with RankNet, or the checkpoint ``teacher``. Two students keep the first
    ``student_layers`` layers of ``model``: one trained on labels alone (RankNet), one distilled from the teacher
    with Margin-MSE. All four systems re-rank the test split's BM25 candidates in :func:`pyterrier_marginkd.report`.
    Everything lands in ``output``; a later run reuses the index, the teacher cache and every trained model.
    """
    from pyterrier_marginkd.cli import default_model, load_model  # the CLI owns the model defaults; it imports us

    started = time.time()
    recipe = recipe or Recipe.preset(fast)
    model = _resolve(model or default_model())
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    collection = Collection(data)
    _log(verbose, f"quickstart: {collection!r} -> {output}; {recipe}")
    if collection.derived_splits:
        _log(verbose, f"{collection.name} ships no train/test split: holding out {collection.test_fraction:.0%} of "
                      "its queries for testing (the same split every run; Collection.test_fraction)")
    with _download_hint(collection):
        bm25 = collection.bm25(output / f"{collection.name}.pisa", num_results=max(recipe.k, recipe.k_train))
        train_topics = _sample(collection.topics(train_split), recipe.train_queries, seed)
        train_qrels = collection.qrels(train_split)
        test_topics = _sample(collection.topics(test_split), recipe.test_queries, seed)
        test_qrels = collection.qrels(test_split)
    text = collection.get_text()
    train = _Trainer(recipe, (bm25 % recipe.k_train >> text)(train_topics), train_qrels, seed=seed, verbose=verbose,
                     model=model, data=_resolve(collection.data), train_split=train_split,
                     train_qids=_digest(sorted(train_topics["qid"])))

    if teacher is None:
        folder = output / "teacher"
        teacher_model = train(folder, "teacher", lambda: CrossEncoder.from_pretrained(model, **train.scorer_kwargs),
                              None, losses.RankNet(), epochs=recipe.teacher_epochs, lr=recipe.teacher_lr,
                              max_time=recipe.teacher_time)
        teacher_id = f"quickstart-teacher:{folder.resolve()}@{_done(folder)['finished']}"
        teacher_name = f"teacher L{_num_layers(teacher_model)} (labels)"
    else:
        teacher = _resolve(teacher)
        teacher_model = load_model(teacher, **train.scorer_kwargs)
        teacher_id = f"{teacher}@{_modified(teacher)}"
        teacher_name = f"teacher L{_num_layers(teacher_model)}"

    def student() -> CrossEncoder:
        return CrossEncoder.from_pretrained(model, num_layers=student_layers, **train.scorer_kwargs)

    student_settings = {"epochs": recipe.student_epochs, "lr": recipe.student_lr, "max_time": recipe.student_time,
                        "layers": student_layers}
    label_only = train(output / f"student-L{student_layers}-labels", f"student L{student_layers} (labels only)",
                       student, None, losses.RankNet(), **student_settings)
    distilled = train(output / f"student-L{student_layers}-marginmse", f"student L{student_layers} (Margin-MSE)",
                      student, teacher_model, losses.MarginMSE(), **student_settings, teacher_id=teacher_id,
                      cache_dir=output / "teacher_cache")

    candidates = bm25 % recipe.k
    systems = {
        "BM25": candidates,
        teacher_name: candidates >> text >> teacher_model,
        f"student L{student_layers} (labels only)": candidates >> text >> label_only,
        f"student L{student_layers} (Margin-MSE)": candidates >> text >> distilled,
    }
    plot = importlib.util.find_spec("matplotlib") is not None
    _log(verbose, f"evaluating {len(systems)} systems on {len(test_topics)} {test_split} queries, "
                  f"BM25 top {recipe.k}")
    table = report(systems, test_topics, test_qrels, output / "report", baseline=0, plot=plot)
    if verbose:
        print((output / "report" / TABLE_FILE).read_text())
        files = "results.md, results.csv" + (", results.png" if plot else "")
        hint = "" if plot else " (pip install pyterrier-marginkd[plot] for the plot)"
        print(f"report: {output / 'report'}: {files}{hint}")
        print(f"quickstart finished in {time.time() - started:.0f} s")
    return table


class _Trainer:
    """Trains one quickstart model per output folder, or loads it when a run with the same settings finished there."""

    def __init__(self, recipe: Recipe, train_res: pd.DataFrame, train_qrels: pd.DataFrame, *, seed: int,
                 verbose: bool, **identity: str):
        self.recipe = recipe
        self.fit_args = (train_res, train_qrels)
        self.seed = seed
        self.verbose = verbose
        self.scorer_kwargs = {"max_length": recipe.max_length, "verbose": verbose}
        #: what every model depends on (each call adds its own training settings); a change means training again
        self.settings: dict[str, Any] = {**identity, "seed": seed, "k_train": recipe.k_train,
                                         "max_length": recipe.max_length, "num_negatives": recipe.num_negatives,
                                         "batch_size": recipe.batch_size}

    def __call__(self, folder: Path, label: str, make_student: Callable[[], NeuralScorer],
                 teacher: pt.Transformer | None, loss: losses.RankingLoss, *, epochs: int, lr: float,
                 max_time: float | None, layers: int | None = None, **extra: Any) -> NeuralScorer:
        settings = {**self.settings, "loss": repr(loss), "epochs": epochs, "lr": lr, "max_time": max_time,
                    "layers": layers, "teacher": extra.get("teacher_id")}
        settings = json.loads(json.dumps(settings))
        done = _done(folder)
        if done is not None:
            if done["settings"] != settings:
                changed = sorted(k for k in set(settings) | set(done["settings"])
                                 if settings.get(k) != done["settings"].get(k))
                raise ValueError(f"{folder} holds a {label} trained with other settings (changed: {changed}); use "
                                 f"another --output, or delete {folder} to train it again")
            _log(self.verbose, f"{label}: reusing {folder / 'student'} (trained in {done['train_seconds']:.0f} s)")
            return load(folder / "student", **self.scorer_kwargs)
        _log(self.verbose, f"{label}: training in {folder}")
        started = time.time()
        torch.manual_seed(self.seed)
        distiller = Distiller(make_student(), teacher, loss=loss, epochs=epochs, batch_size=self.recipe.batch_size,
                              lr=lr, num_negatives=self.recipe.num_negatives, max_time=max_time, seed=self.seed,
                              output_dir=folder, verbose=self.verbose, **extra)
        distiller.fit(*self.fit_args)
        record = {"settings": settings, "report": distiller.report, "train_seconds": time.time() - started,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        partial = folder / f"{DONE_FILE}.tmp"
        partial.write_text(json.dumps(record, indent=2, default=float))
        os.replace(partial, folder / DONE_FILE)  # a killed run never leaves a half-written record
        if distiller.report.get("stopped_by_max_time"):
            _log(self.verbose, f"{label}: the {max_time:.0f} s budget allowed {len(distiller.history)} of "
                               f"{distiller.report['total_steps']} steps (a busy machine allows fewer; more time: "
                               "--teacher-time / --student-time)")
        return distiller.student


def _done(folder: Path) -> dict[str, Any] | None:
    file = folder / DONE_FILE
    return json.loads(file.read_text()) if file.exists() else None


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


def _modified(path: str) -> str:
    """A stamp that changes when a local model folder is rewritten (its files' latest mtime); '' for hub ids."""
    files = [p for p in Path(path).glob("*") if p.is_file()]
    return str(max(p.stat().st_mtime_ns for p in files)) if files else ""


def _num_layers(model: NeuralScorer) -> int | str:
    return getattr(model.model.config, "num_hidden_layers", "?")


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
                           f"({error}). Offline, pass a local folder laid out like ../shared/data/<name>, e.g. "
                           "--data ../shared/data/cranfield") from error
