"""The quickstart's stages that persist: fusion weights fitted once, students trained once per folder (or reused),
and small helpers for names, samples and ids."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pyterrier as pt
import torch

from pyterrier_marginkd import losses
from pyterrier_marginkd.data.collection import Collection
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.dot import DotEncoder
from pyterrier_marginkd.models.ensemble import Ensemble
from pyterrier_marginkd.models.identity import describe
from pyterrier_marginkd.quickstart.recipe import ArchitectureRecipe, Recipe, group_queries
from pyterrier_marginkd.training.distiller import Distiller
from pyterrier_marginkd.training.once import fit_once

FUSION_FILE = "fusion.json"


class StageClock:
    """Wall seconds of the quickstart's stages, in the order they ran: the report's ``timings.csv`` and the last
    lines printed say where a run's time went (a reused stage costs seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # per running stage, the seconds of the stages that ran inside it
        #: called when a stage ends, its time counted in the stage (the quickstart saves new document vectors)
        self.after_stage: Callable[[], Any] | None = None

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time ``stage``; a stage that runs inside another counts as its own, not as the outer one's."""
        started = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
            if self.after_stage is not None:
                self.after_stage()
        finally:
            elapsed = time.perf_counter() - started
            inner = self._inner.pop()
            if self._inner:
                self._inner[-1] += elapsed
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner

    def table(self, total: float) -> pd.DataFrame:
        """One row per stage (seconds, share of ``total``), then what ran between stages and the total."""
        rows = [*self.seconds.items(), ("other", max(total - sum(self.seconds.values()), 0.0)), ("total", total)]
        table = pd.DataFrame(rows, columns=["stage", "seconds"])
        return table.assign(share=table["seconds"] / total if total > 0 else float("nan"))


def fit_fusion(fused: Ensemble, folder: Path, settings: dict, fit_res: pd.DataFrame, qrels: pd.DataFrame,
                verbose: bool) -> None:
    """Fit the fusion weights, or read them from ``folder`` when a run with the same settings fitted them."""
    file = folder / FUSION_FILE
    settings = json.loads(json.dumps(settings))
    if file.exists():
        saved = json.loads(file.read_text())
        if saved.get("settings") == settings:
            fused.load_weights(file)
            log(verbose, f"teacher: reusing the fusion weights in {file}")
            return
        log(verbose, f"teacher: {file} was fitted with other settings; fitting again")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    fused.fit(fit_res, qrels)
    fused.fit_report["seconds"] = time.time() - started
    fused.save_weights(folder / f"{FUSION_FILE}.tmp")
    record = json.loads((folder / f"{FUSION_FILE}.tmp").read_text())
    (folder / f"{FUSION_FILE}.tmp").write_text(json.dumps({**record, "settings": settings}, indent=2))
    os.replace(folder / f"{FUSION_FILE}.tmp", file)


def choose_once(file: Path, settings: dict, zero_shot: Ensemble, tuned: pt.Transformer | Callable[[], pt.Transformer],
                choose: Callable[[], tuple[Ensemble, dict]], verbose: bool) -> tuple[Ensemble, dict]:
    """The teacher chosen by ``choose()`` (the zero-shot fusion, or the label-aware one adding ``tuned``, a scorer or
    the function that makes it), or the choice recorded in ``file`` by a run with the same settings (its weights
    reused, nothing scored again). A recorded label-aware choice names its member's weights (``member``): when the
    member now holds other weights (trained again), the weights are fitted again."""
    settings = json.loads(json.dumps(settings))
    if file.exists():
        saved = json.loads(file.read_text())
        if saved.get("settings") == settings:
            choice = saved["choice"]
            if choice["chosen"] == "zero-shot":
                log(verbose, f"teacher: reusing the choice in {file}")
                return zero_shot, choice
            member = tuned if isinstance(tuned, pt.Transformer) else tuned()
            if choice.get("member") == describe(member):
                log(verbose, f"teacher: reusing the choice in {file}")
                return Ensemble([*zero_shot.members, member], choice["label_aware_weights"],
                                normalize=zero_shot.normalize), choice
            log(verbose, f"teacher: the fine-tuned member is not the one {file} fitted its weights for; choosing "
                         "again")
        else:
            log(verbose, f"teacher: {file} was chosen with other settings; choosing again")
    fused, choice = choose()
    if choice["chosen"] == "label-aware":
        choice = {**choice, "member": describe(fused.members[-1])}
    file.parent.mkdir(parents=True, exist_ok=True)
    file.with_name(f"{file.name}.tmp").write_text(json.dumps({"settings": settings, "choice": choice}, indent=2))
    os.replace(file.with_name(f"{file.name}.tmp"), file)
    return fused, choice


@dataclasses.dataclass
class Trainer:
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
                 steps: int | None = None, align_texts: list[str] | None = None, start: str | None = None,
                 architecture: ArchitectureRecipe | None = None, pseudo: dict | None = None,
                 **extra: Any) -> NeuralScorer:
        """Train (or load) the student ``label`` in ``folder``; with ``align_texts``, ``recipe.align_steps`` steps of
        alignment on them come first. ``architecture``: the groups, negatives and learning rates of a student
        architecture other than the DotEncoder (its ``make_student`` builds it). ``pseudo``: how its pseudo-queries
        were made, when not from titles or first sentences (recorded in its settings)."""
        r = self.recipe
        # the recipe's student budget, unless given (the teacher's member: a step budget alone, never time-boxed)
        budget, max_time = (r.student_steps, r.student_time) if steps is None else (steps, None)
        full = r.batch_size if architecture is None else architecture.batch_size
        batch_size = min(r.batch_for(group_queries(*fit_args)), full)
        if batch_size != full:
            log(self.verbose, f"{label}: {batch_size} groups per step instead of {full}: its training queries "
                               f"are long (query_words_per_step={r.query_words_per_step})")
        validations = 6 if architecture is None else architecture.validations
        lr, mix_lr, negatives = ((r.student_lr, r.mix_lr, r.negatives) if architecture is None else
                                 (architecture.lr, architecture.head_lr or architecture.lr,
                                  min(architecture.num_negatives, r.negatives)))
        settings = {**self.identity, "loss": repr(loss), "steps": budget, "lr": lr,
                    "mix_lr": mix_lr, "batch_size": batch_size, "num_negatives": negatives,
                    "pseudo_queries": r.pseudo_queries if teacher is not None else 0, "max_time": max_time,
                    "layers": layers, "teacher": teacher_id, "training_qids": digest(sorted(
                        fit_args[0]["qid"].astype(str).unique()))}
        amp = r.trains_in_bf16()
        if amp:  # (recorded only when on: folders trained in float32 stay reusable)
            settings["amp"] = True
        if start is not None:  # where the weights start, when not the model of the identity
            settings["start"] = start
        if architecture is not None:  # the architecture's own recipe (a first-stage mix changes the student); its
            # distillation loss is recorded as the loss itself (a twin on labels alone does not depend on it)
            settings["architecture"] = {k: v for k, v in dataclasses.asdict(architecture).items()
                                        if k != "student_loss"}
        if align_texts:
            settings.update(align_steps=r.align_steps, align_texts=digest(list(align_texts)))
        if pseudo is not None:  # (recorded only when set: folders of titles or first sentences stay reusable)
            settings["pseudo_query_method"] = pseudo
        self.folders[label] = folder

        def fit(output_dir: Path) -> Distiller:
            torch.manual_seed(self.seed)
            made = make_student()
            if align_texts:
                aligner = Distiller(made, loss=losses.QueryAlignment(), epochs=r.align_steps, max_steps=r.align_steps,
                                    batch_size=r.batch_size, lr=r.student_lr, seed=self.seed, amp=amp,
                                    eval_steps=max(r.align_steps // 3, 1), save_steps=max(r.align_steps // 3, 1),
                                    output_dir=output_dir / "align", verbose=self.verbose)
                aligner.fit_texts(align_texts, *self.valid)
                shutil.rmtree(output_dir / "align" / "student")  # the weights live on in `made`
                log(self.verbose, f"{label}: {len(aligner.history)} alignment steps first; best validation nDCG@10 "
                                   f"{aligner.report.get('best_ndcg@10', float('nan')):.4f} at step "
                                   f"{aligner.report.get('best_step')}")
            # a step budget: enough epochs that max_steps, not the data, ends the run
            distiller = Distiller(made, teacher, loss=loss, epochs=budget,
                                  max_steps=budget, batch_size=batch_size, lr=lr,
                                  head_lr=mix_lr, num_negatives=negatives, max_time=max_time, amp=amp,
                                  seed=self.seed, eval_steps=max(budget // validations, 1),
                                  save_steps=max(budget // 3, 1), output_dir=output_dir,
                                  verbose=self.verbose, **extra)
            distiller.fit(*fit_args, *self.valid)
            report, steps = distiller.report, len(distiller.history)
            log(self.verbose, f"{label}: {steps} steps; best validation nDCG@10 "
                               f"{report.get('best_ndcg@10', float('nan')):.4f} at step {report.get('best_step')}")
            if report.get("stopped_by_max_time"):
                log(self.verbose, f"{label}: the {r.student_time:.0f} s budget allowed {steps} of "
                                   f"{report['total_steps']} steps (a busy machine allows fewer)")
            return distiller

        student, _ = fit_once(folder, settings, fit, label=label, verbose=self.verbose,
                              load_kwargs=saved_kwargs(self.scorer_kwargs))
        return student.share_doc_vectors(self.shared_docs) if isinstance(student, DotEncoder) else student


def saved_kwargs(scorer_kwargs: dict) -> dict:
    """What a saved quickstart student loads with: ``scorer_kwargs`` but its own ``max_length`` (saved with it; a
    joint architecture's may be shorter than the recipe's, ``ArchitectureRecipe.max_length``)."""
    return {k: v for k, v in scorer_kwargs.items() if k != "max_length"}


def short_name(name: str) -> str:
    """A readable name of a checkpoint: its folder name (the package folder for the shipped MiniLM), or hub id."""
    path = Path(name)
    if path.exists():
        return path.parent.name if path.name == "model" else path.name
    return name.split("/")[-1]


def sample_topics(topics: pd.DataFrame, num: int | None, seed: int) -> pd.DataFrame:
    """``num`` topics drawn with ``seed`` (all when there are no more), in their original order."""
    if num is None or len(topics) <= num:
        return topics
    return topics.sample(num, random_state=seed).sort_index().reset_index(drop=True)


def split_validation(topics: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The quickstart's split of the train topics: (fitting, validation), the validation share ``fraction`` drawn
    with ``seed``, both in their original order (benchmarks that rebuild a run's data split the same way)."""
    valid = topics.sample(frac=fraction, random_state=seed).sort_index()
    return topics[~topics["qid"].isin(valid["qid"])], valid


def resolve(name: str | os.PathLike) -> str:
    """An absolute path for an existing local path, else the name unchanged (hub or irds: id)."""
    return str(Path(name).resolve()) if Path(name).exists() else str(name)


def digest(values: list[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:16]


def log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)


@contextlib.contextmanager
def download_hint(collection: Collection) -> Iterator[None]:
    """Turn a failed ir_datasets download into an error that says what to do offline."""
    try:
        yield
    except OSError as error:
        if not collection.data.startswith("irds:"):
            raise
        raise RuntimeError(f"could not load {collection.data}: ir_datasets downloads it on first use and that failed "
                           f"({error}). Offline, pass a local folder with docs.jsonl.gz, topics.{{train,test}}.tsv and "
                           "qrels.{train,test}.txt: --data path/to/folder") from error
