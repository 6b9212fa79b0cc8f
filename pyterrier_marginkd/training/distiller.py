"""Distiller: a pt.Estimator that trains a student re-ranker from a teacher's scores (and/or labels)."""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import numbers
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import pyterrier as pt
import torch
from safetensors.torch import load_model, save_model

from pyterrier_marginkd import _files
from pyterrier_marginkd.data.docpairs import DocPairs
from pyterrier_marginkd.data.evaluation import evaluate_ndcg10
from pyterrier_marginkd.data.groups import (
    NEGATIVE_SAMPLING,
    AnnotatedGroups,
    Group,
    GroupSource,
    TeacherRankedExamples,
    TrainingExamples,
    validate_qrels,
    validate_training_results,
)
from pyterrier_marginkd.data.scorefiles import ScoreFile
from pyterrier_marginkd.losses import RankingLoss, resolve_loss
from pyterrier_marginkd.losses.layers import HiddenStateMSE
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.ensemble import normalize_scores
from pyterrier_marginkd.training import distributed
from pyterrier_marginkd.training.checkpoints import (
    STATE_FILE,
    checkpointable_models,
    gradient_checkpointing,
    load_checkpoint,
    param_groups,
    release_freed_memory,
    run_fingerprint,
    sample_groups,
    save_checkpoint,
)
from pyterrier_marginkd.training.layer_distillation import check_models, scores_with_layer_loss
from pyterrier_marginkd.training.teacher_cache import TeacherScores, list_teacher_scores, margin_std

__all__ = ["Distiller"]


def _remove_checkpoint(checkpoint: Path) -> None:
    """Delete the checkpoint of a completed run: first renamed out of the way in one step (a kill during the deletion
    leaves a ``.checkpoint.tmp-<pid>-*`` folder, which the next run tidies, never a half-deleted checkpoint that
    would be resumed), then removed."""
    if not checkpoint.exists():
        return
    doomed = checkpoint.with_name(f".{checkpoint.name}.tmp-{os.getpid()}-finished")
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _check_trainable(student: NeuralScorer) -> None:
    if student.quantization is not None:
        raise ValueError(f"the student {student!r} is quantized ({student.quantization}) for inference and cannot be "
                         "trained: train the fp32 model, then quantize it (student.quantize('int8'), or load the saved "
                         "student with quantize='int8')")


class Distiller(pt.Estimator):
    """Knowledge distillation of a teacher into a student re-ranker, as a PyTerrier estimator.

    ``(first_stage >> get_text >> distiller).fit(tr_topics, tr_qrels, va_topics, va_qrels)`` makes PyTerrier run the
    first stage and call ``distiller.fit(results, qrels, va_results, va_qrels)``; afterwards ``distiller`` (and so the
    pipeline) re-ranks with the trained student. With ``teacher=None`` and a label loss (``RankNet``) it trains from
    labels alone — the no-distillation baseline. ``intermediate=losses.HiddenStateMSE()`` adds intermediate-layer
    distillation (CrossEncoder teacher and student only; its projections train with the student).

    ``loss`` is a :class:`~pyterrier_marginkd.losses.RankingLoss` or a name from ``losses.LOSSES`` in any case
    (``"margin-mse"``/``"MarginMSE"``, ``"ranknet"``, ``"margin-mse+ranknet"``...). Settings are checked here, at
    construction, not when ``fit`` reaches them.

    A fit that completes all its steps deletes its resume checkpoint (``output_dir/checkpoint``: weights, optimizer
    and trainer state) once the student is saved, unless ``keep_checkpoint=True``; a fit stopped by ``max_time``
    keeps it, so that fitting again resumes it.

    ``gradient_checkpointing=True`` keeps only each transformer layer's input during the forward pass and recomputes
    the layer in the backward pass (the student's Hugging Face encoders; the same dropout masks, so the same
    training): memory then no longer holds every layer's attention maps, for about a third more compute per step.
    """

    def __init__(self, student: NeuralScorer, teacher: pt.Transformer | None = None, *,
                 loss: RankingLoss | None = None, epochs: int = 1, batch_size: int = 8, lr: float = 3e-5,
                 num_negatives: int = 1, negative_sampling: str = "random", graded: bool = False,
                 warmup_ratio: float = 0.1, weight_decay: float = 0.01, grad_accum_steps: int = 1,
                 max_grad_norm: float = 1.0, max_steps: int | None = None, max_time: float | None = None,
                 amp: bool = False, eval_steps: int | None = None, save_steps: int = 200,
                 seed: int = 0, output_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                 teacher_id: str | None = None, unjudged: str = "skip", pseudo_positives: int = 1,
                 pseudo_negative_start: int | None = None, teacher_scale: float | str | None = "auto",
                 select_best: bool = True, validate_start: bool = True, resume: bool = True, verbose: bool = False,
                 intermediate: HiddenStateMSE | None = None, head_lr: float | None = None,
                 keep_checkpoint: bool = False, gradient_checkpointing: bool = False):
        if not isinstance(student, NeuralScorer):
            raise TypeError(f"student must be a pyterrier_marginkd re-ranker (CrossEncoder, ...), got "
                            f"{type(student).__name__}")
        _check_trainable(student)
        loss = resolve_loss(loss)
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("grad_accum_steps", grad_accum_steps),
                            ("num_negatives", num_negatives), ("save_steps", save_steps), ("max_steps", max_steps),
                            ("eval_steps", eval_steps)):
            if value is None and name in ("max_steps", "eval_steps"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}"
                                 + (" (None: no periodic validation, only at the end of each epoch)"
                                    if name == "eval_steps" else "")
                                 + (" (None: the steps of all epochs)" if name == "max_steps" else ""))
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive learning rate, got {lr!r}")
        if negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {negative_sampling!r}")
        if unjudged not in ("skip", "teacher"):
            raise ValueError(f"unjudged must be 'skip' or 'teacher', got {unjudged!r}")
        if not isinstance(gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be True or False, got {gradient_checkpointing!r}")
        if gradient_checkpointing and not checkpointable_models(student.model):
            raise ValueError(f"gradient_checkpointing=True needs a student built on a Hugging Face encoder that "
                             f"supports it; {student!r} has none: train it without gradient checkpointing")
        if not (teacher_scale is None or teacher_scale == "auto" or isinstance(teacher_scale, (int, float))):
            raise ValueError(f"teacher_scale must be 'auto', a number or None, got {teacher_scale!r}")
        if intermediate is not None:
            check_models(student, teacher, attention=intermediate.attention)
            if getattr(student, "head", "one_logit") != "one_logit":
                raise ValueError(f"intermediate-layer distillation reads the student's score as its first logit; "
                                 f"the student {student!r} has a 2-logit head (monoBERT style): distil it without "
                                 "intermediate=, or start the student from a 1-logit or plain checkpoint")
            intermediate.configure(student.model.config, teacher.model.config)
        self.student = student
        self.teacher = teacher
        self.intermediate = intermediate
        self._layer_loss: torch.Tensor | None = None
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.head_lr = head_lr
        self.num_negatives = num_negatives
        self.negative_sampling = negative_sampling
        self.graded = graded
        self.warmup_ratio = warmup_ratio
        self.weight_decay = weight_decay
        self.grad_accum_steps = grad_accum_steps
        self.max_grad_norm = max_grad_norm
        self.max_steps = max_steps
        self.max_time = max_time
        self.amp = amp
        self.eval_steps = eval_steps
        self.save_steps = save_steps
        self.seed = seed
        self.output_dir = output_dir
        self.cache_dir = cache_dir
        self.teacher_id = teacher_id
        self.unjudged = unjudged
        self.pseudo_positives = pseudo_positives
        self.pseudo_negative_start = pseudo_negative_start
        self.teacher_scale = teacher_scale
        self._teacher_factor = 1.0
        self.select_best = select_best
        self.validate_start = validate_start
        self.resume = resume
        self.keep_checkpoint = keep_checkpoint
        self.gradient_checkpointing = gradient_checkpointing
        self._train_seconds = 0.0
        self.verbose = verbose
        self.history: list[dict[str, Any]] = []
        self.validation: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {}
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    # --- PyTerrier ---------------------------------------------------------------------------------------
    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Re-rank with the (trained) student."""
        return self.student.transform(inp)

    def subtransformers(self) -> dict[str, pt.Transformer]:
        return {"student": self.student}

    def schematic(self, *, input_columns=None):
        return {"label": "Distiller", "help_url": None}

    def __repr__(self) -> str:
        extra = f", intermediate={self.intermediate!r}" if self.intermediate is not None else ""
        return f"Distiller(student={self.student!r}, teacher={self.teacher!r}, loss={self.loss!r}{extra})"

    # --- training ------------------------------------------------------------------------------------------
    @property
    def out_path(self) -> Path:
        """Folder of checkpoints, the teacher cache and the final student."""
        if self.output_dir is None:
            if self._tmpdir is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="marginkd-")
            return Path(self._tmpdir.name)
        return Path(self.output_dir)

    def fit(self, tr_res: pd.DataFrame, tr_qrels: pd.DataFrame | None = None, va_res: pd.DataFrame | None = None,
            va_qrels: pd.DataFrame | None = None) -> Distiller:
        """Train the student on first-stage results (with text) and their qrels; validate on va_res/va_qrels.

        With ``tr_qrels=None`` (or ``unjudged="teacher"`` for the queries without qrels) the teacher's own ranking
        of the candidates picks positives and negatives: label-free distillation.
        """
        va_qrels = self._check_validation(va_res, va_qrels)  # before any example is built or teacher pair scored
        first_stage = self._first_stage_scores(tr_res)
        teacher_scores = None
        if self._teacher_scores_lists and (self.loss.needs_teacher or tr_qrels is None or self.unjudged == "teacher"):
            teacher_scores = self._list_teacher_scores(tr_res)
        examples = self.examples(tr_res, tr_qrels, teacher_scores=teacher_scores)
        self.report = dict(examples.report)
        if teacher_scores is not None or first_stage is not None:
            examples = AnnotatedGroups(examples, teacher=teacher_scores if self.loss.needs_teacher else None,
                                       first_stage=first_stage)
        self.train_examples(examples, va_res, va_qrels)
        return self

    def _check_validation(self, va_res: pd.DataFrame | None, va_qrels: pd.DataFrame | None) -> pd.DataFrame | None:
        """Refuse validation arguments that cannot be used (checked first, before anything expensive); return the
        validated qrels."""
        if (va_res is None) != (va_qrels is None):
            raise ValueError("give both va_res and va_qrels for validation, or neither "
                             f"(got only {'va_res' if va_qrels is None else 'va_qrels'})")
        if va_qrels is not None:
            va_qrels = validate_qrels(va_qrels)
        if va_res is not None and self._mixes_first_stage and "score" not in va_res.columns:
            raise ValueError("the student mixes in the first stage's score, but the validation results have no "
                             "'score' column; pass a retriever's results")
        return va_qrels

    @property
    def _mixes_first_stage(self) -> bool:
        return getattr(self.student, "first_stage", None) is not None

    @property
    def _teacher_scores_lists(self) -> bool:
        """Whether the teacher's score of a candidate depends on its query's other candidates (fusion with a
        per-query normalisation): then it scores whole candidate lists up front, not the pairs of each batch."""
        return bool(getattr(self.teacher, "scores_whole_lists", False))

    def _first_stage_scores(self, tr_res: pd.DataFrame) -> dict[tuple[str, str], float] | None:
        """Each training candidate's first-stage score, normalised within its query as the student normalises it."""
        if not self._mixes_first_stage:
            return None
        if "score" not in tr_res.columns:
            raise ValueError(f"the student mixes in the first stage's score (first_stage="
                             f"{self.student.first_stage!r}), but the training results have no 'score' column; "
                             "train on a retriever's results, e.g. (bm25 >> get_text >> distiller).fit(...)")
        rows = tr_res.assign(qid=tr_res["qid"].astype(str), docno=tr_res["docno"].astype(str))
        rows = rows.drop_duplicates(["qid", "docno"])
        scores = pd.to_numeric(rows["score"], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(scores).all():
            raise ValueError(f"the training results' 'score' column holds {int((~np.isfinite(scores)).sum())} "
                             "non-finite value(s) (NaN/inf)")
        values = normalize_scores(rows["qid"], scores, self.student.first_stage)
        return dict(zip(zip(rows["qid"], rows["docno"]), values.astype(float)))

    def _list_teacher_scores(self, tr_res: pd.DataFrame) -> dict[tuple[str, str], float]:
        validate_training_results(tr_res, self.student.text_field)
        cache_dir = Path(self.cache_dir) if self.cache_dir is not None else self.out_path / "teacher_cache"
        if self.verbose:
            print(f"Distiller: the teacher scores the {len(tr_res)} training candidates as whole lists", flush=True)
        return list_teacher_scores(self.teacher, tr_res, cache_dir, text_field=self.student.text_field,
                                   verbose=self.verbose)

    def fit_file(self, path: str | Path, queries: Any = None, docs: Any = None, va_res: pd.DataFrame | None = None,
                 va_qrels: pd.DataFrame | None = None, *, shuffle_buffer: int = 10_000) -> Distiller:
        """Train from a teacher-score file (the published Margin-MSE format); its scores are used, no teacher runs.

        The ids version needs ``queries`` (topics frame, dict or ir_datasets dataset) and ``docs`` (dict,
        :class:`~pyterrier_marginkd.Collection` or ir_datasets docstore/dataset); the text version needs neither.
        """
        va_qrels = self._check_validation(va_res, va_qrels)
        source = ScoreFile(path, queries, docs, shuffle_buffer=shuffle_buffer, seed=self.seed,
                           text_field=self.student.text_field)
        return self._fit_source(source, va_res, va_qrels)

    def fit_pairs(self, dataset: Any, va_res: pd.DataFrame | None = None, va_qrels: pd.DataFrame | None = None, *,
                  queries: Any = None, docs: Any = None, max_pairs: int | None = None,
                  shuffle_buffer: int = 10_000) -> Distiller:
        """Train on ir_datasets docpairs (an id such as ``msmarco-passage/train/triples-small`` or a dataset),
        streamed with labels ``[1, 0]``; the teacher, if any, scores them through its cache."""
        va_qrels = self._check_validation(va_res, va_qrels)
        source = DocPairs(dataset, queries=queries, docs=docs, max_pairs=max_pairs, shuffle_buffer=shuffle_buffer,
                          seed=self.seed, text_field=self.student.text_field)
        return self._fit_source(source, va_res, va_qrels)

    def _fit_source(self, source: GroupSource, va_res: pd.DataFrame | None,
                    va_qrels: pd.DataFrame | None) -> Distiller:
        va_qrels = self._check_validation(va_res, va_qrels)
        self.report = dict(source.report)
        self.train_examples(source, va_res, va_qrels)
        return self

    def train_examples(self, source: GroupSource, va_res: pd.DataFrame | None = None,
                       va_qrels: pd.DataFrame | None = None) -> None:
        """The training loop over a source of groups (epochs of them), with checkpoints, resume and validation.

        ``source`` has ``groups(epoch)`` (an iterable of :class:`Group`, possibly streamed) and ``num_groups()``;
        groups without teacher scores get them from the (cached) teacher in chunks.
        """
        _check_trainable(self.student)  # quantized since the Distiller was made?
        out = self.out_path
        out.mkdir(parents=True, exist_ok=True)
        dist = distributed.current()
        dist.init()
        dist.place(self.student)
        dist.place(self.teacher)
        per_step = self.batch_size * self.grad_accum_steps
        groups_per_epoch = source.num_groups()
        if groups_per_epoch == 0:
            raise ValueError("there are no training groups to learn from")
        steps_per_epoch = math.ceil(groups_per_epoch / per_step)
        total_steps = steps_per_epoch * self.epochs
        if self.max_steps is not None:
            total_steps = min(total_steps, self.max_steps)
        self._seed_everything()
        model = self.student.model
        model.train()
        extra = self.intermediate.to(self.student.torch_device) if self.intermediate is not None else None
        groups = param_groups(model, extra, self.head_lr)
        dist.broadcast([p for group in groups for p in group["params"]])
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        self._elapsed_before = 0.0
        self._clock = None
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self._lr_factor(s, total_steps))
        teacher = None
        if self.teacher is not None and self.loss.needs_teacher and not getattr(source, "has_teacher_scores", False):
            if self._teacher_scores_lists:
                raise ValueError(f"the teacher {self.teacher!r} scores whole candidate lists (it normalises per "
                                 "query), so it cannot score these training pairs one batch at a time; train with "
                                 "fit(results, qrels) on candidate lists, or score the pairs into a file first")
            teacher = self._teacher_cache()
        self._require_teacher_scores(source, teacher)
        self._teacher_factor = self._teacher_scale_factor(source, teacher)
        fingerprint = self._fingerprint(source, total_steps)
        state = {"step": 0, "best": None, "history": [], "validation": []}
        checkpoint = out / "checkpoint"
        for folder in (checkpoint, out / "best"):
            _files.recover_dir(folder)  # what a killed run left half-written
        if self.resume and (checkpoint / STATE_FILE).exists():
            state = self._load_checkpoint(checkpoint, optimizer, scheduler, fingerprint)
        elif self._mixes_first_stage:
            self._init_first_stage_mix(source, teacher)
        self.history, self.validation = state["history"], state["validation"]
        self._elapsed_before = state.get("elapsed", 0.0)
        self.report.update(groups_per_epoch=groups_per_epoch, total_steps=total_steps, resumed_from=state["step"])

        step = state["step"]
        started = self._clock = time.time()
        validation_seconds = 0.0
        bar = pt.tqdm(total=total_steps, initial=step, desc="distil", unit="step",
                      disable=not (self.verbose and dist.is_main))
        stopped_early = False
        memory_saving = contextlib.ExitStack()
        if self.gradient_checkpointing:
            memory_saving.enter_context(gradient_checkpointing(model))
        try:
            if va_res is not None and self.validate_start and step == 0:
                # the starting weights compete for "best" too: a fit that only makes the student worse on the
                # validation queries (too few labels, a weak teacher) gives back the student it started from
                state["best"] = dist.on_main(lambda: self._validate(va_res, va_qrels, 0, state["best"]))
                validation_seconds += time.time() - started
            while step < total_steps and not stopped_early:
                epoch, step_in_epoch = divmod(step, steps_per_epoch)
                batches = self._batches(source.groups(epoch), teacher, skip=step_in_epoch * per_step)
                step_before = step
                for s, batch_groups in enumerate(batches, start=step_in_epoch):
                    loss_value = self._step(batch_groups, optimizer, scheduler)
                    step += 1
                    self.history.append({"step": step, "epoch": epoch, "loss": loss_value,
                                         "lr": scheduler.get_last_lr()[0]})
                    elapsed = time.time() - started
                    self._train_seconds = self._elapsed_before + elapsed - validation_seconds
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean([h['loss'] for h in self.history[-20:]]):.4f}",
                                    ex_s=f"{(step - state['step']) * per_step / max(elapsed, 1e-9):.1f}")
                    end_of_epoch = s == steps_per_epoch - 1
                    out_of_time = self.max_time is not None and self._elapsed_before + elapsed >= self.max_time
                    if va_res is not None and ((self.eval_steps and step % self.eval_steps == 0) or end_of_epoch
                                               or step == total_steps or out_of_time):
                        validation_started = time.time()
                        state["best"] = dist.on_main(lambda: self._validate(va_res, va_qrels, step, state["best"]))
                        validation_seconds += time.time() - validation_started
                    if step % self.save_steps == 0 or end_of_epoch or step == total_steps or out_of_time:
                        self._save_checkpoint(checkpoint, optimizer, scheduler, step, state["best"], fingerprint)
                    if step >= total_steps or out_of_time or end_of_epoch:
                        stopped_early = out_of_time and step < total_steps
                        break
                if step == step_before:
                    raise ValueError(f"epoch {epoch} of the training data yielded fewer groups than the "
                                     f"{groups_per_epoch} announced")
        finally:
            memory_saving.close()
            release_freed_memory()
            bar.close()
            if teacher is not None:
                self.report["teacher_pairs_scored"] = teacher.teacher.pairs_scored
                teacher.close()
        if teacher is not None:
            dist.merge_teacher_caches(teacher.shared_path)
        self.report["stopped_by_max_time"] = stopped_early
        if self.select_best and state["best"] is not None and (out / "best" / "model.safetensors").exists():
            load_model(self.student.model, str(out / "best" / "model.safetensors"))
            self.report["best_step"], self.report["best_ndcg@10"] = state["best"]["step"], state["best"]["value"]
        self.student.model.eval()
        if dist.is_main:
            self.student.save_pretrained(out / "student")
            if not stopped_early and not self.keep_checkpoint:
                _remove_checkpoint(checkpoint)
        dist.barrier()
        if self.verbose and dist.is_main:
            print(f"Distiller: {json.dumps(self.report)}")

    def _lr_factor(self, step: int, total_steps: int) -> float:
        """Linear warm-up (``warmup_ratio`` of the run) then linear decay to 0 at the end of the run, whose progress
        is the larger of steps done / total steps and, with ``max_time``, time spent / max_time — so a time-boxed
        run warms up and anneals within its budget instead of stopping at a high learning rate."""
        progress = step / max(total_steps, 1)
        if self.max_time and self._clock is not None:
            progress = max(progress, (self._elapsed_before + time.time() - self._clock) / self.max_time)
        progress = min(progress, 1.0)
        if progress < self.warmup_ratio:
            return max(progress / self.warmup_ratio, 1.0 / max(total_steps, 1))
        return max(0.0, (1.0 - progress) / max(1.0 - self.warmup_ratio, 1e-9))

    def _batches(self, groups: Iterable[Group], teacher: TeacherScores | None, *, skip: int = 0,
                 prefetch_steps: int = 16) -> Iterator[list[Group]]:
        """Optimizer-step batches of groups, skipping ``skip`` groups (resume) and adding teacher scores in chunks.

        The chunks are ``prefetch_steps`` steps counted from the start of the epoch whatever ``skip`` is: a resumed
        run asks the teacher for exactly the pairs, in exactly the calls, of an uninterrupted run (the pairs it
        scored before the kill come from the cache). A teacher scores in padded batches, and a pair's float score
        depends on its batch-mates in the last bits; chunks starting at the resumed step would give the student
        other teacher scores than an uninterrupted run, so other weights.
        """
        per_step = self.batch_size * self.grad_accum_steps
        shard = distributed.current().shard
        chunk_groups = per_step * prefetch_steps
        start_of_chunk = skip - skip % chunk_groups
        skip_steps = (skip - start_of_chunk) // per_step  # skip is a whole number of steps
        groups = itertools.islice(iter(groups), start_of_chunk, None)
        while True:
            chunk = list(itertools.islice(groups, chunk_groups))
            if not chunk:
                return
            steps = [shard(chunk[start:start + per_step]) for start in range(0, len(chunk), per_step)]
            if teacher is not None:
                teacher.fill([g for step in steps for g in step])
            yield from steps[skip_steps:]
            skip_steps = 0

    def _teacher_cache(self) -> TeacherScores:
        cache_dir = Path(self.cache_dir) if self.cache_dir is not None else self.out_path / "teacher_cache"
        return TeacherScores(self.teacher, cache_dir, teacher_id=self.teacher_id, text_field=self.student.text_field,
                             verbose=self.verbose, shard=distributed.current().shard_name)

    def examples(self, tr_res: pd.DataFrame, tr_qrels: pd.DataFrame | None, *,
                 teacher_scores: dict[tuple[str, str], float] | None = None) -> GroupSource:
        """The training examples ``fit`` would build from these results and qrels (None: label-free);
        ``teacher_scores`` (of the candidates) rank label-free queries instead of the cached teacher."""
        text_field = self.student.text_field
        if tr_qrels is not None and self.unjudged == "skip":
            return TrainingExamples(tr_res, tr_qrels, num_negatives=self.num_negatives,
                                    negative_sampling=self.negative_sampling, graded=self.graded,
                                    text_field=text_field, seed=self.seed)
        if self.teacher is None:
            raise ValueError("label-free training (qrels=None or unjudged='teacher') needs a teacher to rank the "
                             "candidates; pass teacher=...")
        validate_training_results(tr_res, text_field)
        tr_res = tr_res.assign(qid=tr_res["qid"].astype(str), docno=tr_res["docno"].astype(str))
        judged, judged_qids = None, set()
        if tr_qrels is not None:
            tr_qrels = validate_qrels(tr_qrels)
            judged_qids = set(tr_qrels["qid"]) & set(tr_res["qid"])
            if judged_qids:
                judged = TrainingExamples(tr_res[tr_res["qid"].isin(judged_qids)], tr_qrels,
                                          num_negatives=self.num_negatives, negative_sampling=self.negative_sampling,
                                          graded=self.graded, text_field=text_field, seed=self.seed,
                                          allow_empty=True)
        unjudged = tr_res[~tr_res["qid"].isin(judged_qids)]
        if teacher_scores is not None:
            scores = teacher_scores
        elif self._teacher_scores_lists:
            scores = self._list_teacher_scores(unjudged)
        else:
            cache = self._teacher_cache()
            try:
                scores = cache.scores(unjudged[["qid", "query", "docno", text_field]])
            finally:
                cache.close()
        return TeacherRankedExamples(unjudged, scores, num_positives=self.pseudo_positives,
                                     negative_start=self.pseudo_negative_start, num_negatives=self.num_negatives,
                                     judged=judged, text_field=text_field, seed=self.seed)

    def evaluate_loss(self, tr_res: pd.DataFrame, tr_qrels: pd.DataFrame, *, epoch: int = 0) -> float:
        """Mean loss of the current student over one epoch of training groups (no gradient, no update)."""
        source = self.examples(tr_res, tr_qrels)
        groups = source.groups(epoch)
        cache = self._teacher_cache() if self.teacher is not None and self.loss.needs_teacher else None
        try:
            if cache is not None:
                cache.fill(groups)
            self._teacher_factor = self._teacher_scale_factor(source, cache)
        finally:
            if cache is not None:
                cache.close()
        values = []
        was_training = self.student.model.training
        self.student.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(groups), self.batch_size):
                    part = groups[start:start + self.batch_size]
                    student, teacher, labels = self._batch_tensors(part)
                    values.append(float(self.loss(student, teacher, labels)) * len(part))
        finally:
            self.student.model.train(was_training)
        return sum(values) / len(groups)

    def _batch_tensors(self, part: list[Group]):
        size = len(part[0].docnos)
        queries = [g.query for g in part for _ in g.docnos]
        texts = [t for g in part for t in g.texts]
        device = self.student.torch_device
        use_amp = self.amp and device.type == "cuda"
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            first_stage = [f for g in part for f in g.first_stage] if self._mixes_first_stage else None
            student = self._student_scores(queries, texts, first_stage).float().view(len(part), size)
        teacher = labels = None
        if all(g.teacher is not None for g in part):
            teacher = torch.tensor([g.teacher for g in part], dtype=torch.float32, device=device) * self._teacher_factor
        if all(g.labels is not None for g in part):
            labels = torch.tensor([g.labels for g in part], dtype=torch.float32, device=device)
        return student, teacher, labels

    def _student_scores(self, queries: list[str], texts: list[str],
                        first_stage: list[float] | None = None) -> torch.Tensor:
        """Differentiable student scores; with ``intermediate`` (and gradients on) also the layer loss of the same
        forward pass, kept for ``_step`` to add to the ranking loss."""
        if first_stage is not None:
            return self.student.train_scores(queries, texts, first_stage=first_stage)
        if self.intermediate is None or not torch.is_grad_enabled():
            return self.student.train_scores(queries, texts)
        scores, self._layer_loss = scores_with_layer_loss(self.intermediate, self.student, self.teacher, queries,
                                                          texts)
        return scores

    def _step(self, groups: list[Group], optimizer, scheduler) -> float:
        model = self.student.model
        model.train()
        total = 0.0
        micro = [groups[i:i + self.batch_size] for i in range(0, len(groups), self.batch_size)]
        for part in micro:
            student, teacher, labels = self._batch_tensors(part)
            loss = self.loss(student, teacher, labels)
            if self._layer_loss is not None:
                loss, self._layer_loss = loss + self._layer_loss, None
            loss = loss * (len(part) / len(groups))
            loss.backward()
            total += float(loss.detach())
        total = distributed.current().sync_gradients(optimizer, len(groups), total)
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    def _require_teacher_scores(self, source: GroupSource, teacher: TeacherScores | None) -> None:
        """Fail early when the loss distils from a teacher but neither a teacher nor the data provides scores."""
        if not self.loss.needs_teacher or teacher is not None:
            return
        first = next(iter(source.groups(0)), None)
        if first is not None and first.teacher is None:
            raise ValueError(f"{self.loss!r} distils from a teacher, but teacher=None and the training data carries "
                             "no teacher scores; pass a teacher, train from a teacher-score file (fit_file), or use "
                             "a label loss such as losses.RankNet() for the label-only baseline")

    def _teacher_scale_factor(self, source: GroupSource, teacher: TeacherScores | None, sample: int = 256) -> float:
        """Factor applied to teacher scores: ``teacher_scale``, or with "auto", one that gives teacher margins unit
        standard deviation when they live on a small scale (std < 0.5: cosine similarities, probabilities)."""
        if self.teacher_scale is None:
            return 1.0
        if not isinstance(self.teacher_scale, str):
            return float(self.teacher_scale)
        groups = list(itertools.islice(iter(source.groups(0)), sample))
        if teacher is not None:
            teacher.fill(groups)
        std = margin_std(groups)
        if std is None:
            return 1.0
        factor = 1.0 / std if 0 < std < 0.5 else 1.0
        self.report["teacher_margin_std"], self.report["teacher_scale_factor"] = std, factor
        return factor

    def _init_first_stage_mix(self, source: GroupSource, teacher: TeacherScores | None, sample: int = 256) -> None:
        """Start a student's first-stage mixing at the weights that best fit the teacher's margins (least squares on
        the first groups: margins of the student's neural score and of the normalised first-stage score); without
        teacher scores, at weights that give both the same spread of margins (an even fusion)."""
        groups = list(itertools.islice(iter(source.groups(0)), sample))
        if teacher is not None:
            teacher.fill(groups)
        if not groups or any(g.first_stage is None for g in groups):
            return
        neural = self.student.score_pairs([g.query for g in groups for _ in g.docnos],
                                          [t for g in groups for t in g.texts])
        x_neural, x_first, y, start = [], [], [], 0
        for g in groups:
            n = neural[start:start + len(g.docnos)]
            start += len(g.docnos)
            x_neural += [n[0] - v for v in n[1:]]
            x_first += [g.first_stage[0] - v for v in g.first_stage[1:]]
            if g.teacher is not None:
                y += [(g.teacher[0] - v) * self._teacher_factor for v in g.teacher[1:]]
        x = np.column_stack([x_neural, x_first])
        if self.loss.needs_teacher and len(y) == len(x):
            weights = np.linalg.lstsq(x, np.asarray(y), rcond=None)[0]
        else:
            spread = x.std(axis=0)
            weights = np.array([spread[1] / spread[0] if spread[0] > 0 else 1.0, 1.0])
        if not np.isfinite(weights).all():
            return
        self.student.set_first_stage_weights(*weights)
        self.report["first_stage_mix_start"] = [float(w) for w in weights]

    def _validate(self, va_res: pd.DataFrame, va_qrels: pd.DataFrame, step: int, best: dict | None) -> dict | None:
        run = self.student.transform(va_res)
        value = evaluate_ndcg10(run, va_qrels)
        self.validation.append({"step": step, "ndcg@10": value, "train_seconds": self._train_seconds})
        if best is None or value > best["value"]:
            best = {"step": step, "value": value}
            with _files.atomic_dir(self.out_path / "best") as tmp:
                save_model(self.student.model, str(tmp / "model.safetensors"))
        if self.verbose:
            pt.tqdm.write(f"Distiller: step {step} validation nDCG@10 {value:.4f} (best {best['value']:.4f} at step "
                          f"{best['step']})")
        self.student.model.train()
        return best

    # --- checkpoints ----------------------------------------------------------------------------------------
    def _seed_everything(self) -> None:
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def _fingerprint(self, source: GroupSource, total_steps: int) -> str:
        loss = repr(self.loss) + (f" + {self.intermediate!r}" if self.intermediate is not None else "")
        return run_fingerprint({"student": repr(self.student), "loss": loss, "lr": self.lr, "seed": self.seed,
                                "batch_size": self.batch_size, "accum": self.grad_accum_steps,
                                "total_steps": total_steps, "epochs": self.epochs, "data": sample_groups(source),
                                **({"head_lr": self.head_lr} if self.head_lr is not None else {}),
                                "groups": source.num_groups()})

    def _save_checkpoint(self, path: Path, optimizer, scheduler, step: int, best, fingerprint: str) -> None:
        if distributed.current().is_main:
            save_checkpoint(path, self.student.model, self.intermediate, optimizer, scheduler, step=step, best=best,
                            fingerprint=fingerprint, history=self.history, validation=self.validation,
                            elapsed=self._elapsed_before + time.time() - (self._clock or time.time()))

    def _load_checkpoint(self, path: Path, optimizer, scheduler, fingerprint: str) -> dict:
        return load_checkpoint(path, self.student.model, self.intermediate, optimizer, scheduler, fingerprint)
