"""One fit of a :class:`~pyterrier_marginkd.Distiller` on a source of groups: the optimizer and schedule, the teacher
cache, resuming from and writing checkpoints, validation with the best weights kept, and the saved student."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyterrier as pt
import torch
from safetensors.torch import load_model, save_model

from pyterrier_marginkd import _files
from pyterrier_marginkd.data.evaluation import evaluate_ndcg10
from pyterrier_marginkd.data.groups import GroupSource
from pyterrier_marginkd.training import distributed, memory, preparation
from pyterrier_marginkd.training.checkpoints import (
    STATE_FILE,
    gradient_checkpointing,
    keep_freed_memory,
    load_checkpoint,
    param_groups,
    release_freed_memory,
    run_fingerprint,
    sample_groups,
    save_checkpoint,
)
from pyterrier_marginkd.training.loop import Budget, Clock, LoopState, run_loop
from pyterrier_marginkd.training.schedule import linear_schedule
from pyterrier_marginkd.training.steps import optimizer_step, step_batches

if TYPE_CHECKING:
    from pyterrier_marginkd.training.distiller import Distiller


def check_trainable(student: Any) -> None:
    """Refuse a student quantized for inference."""
    if student.quantization is not None:
        raise ValueError(f"the student {student!r} is quantized ({student.quantization}) for inference and cannot be "
                         "trained: train the fp32 model, then quantize it (student.quantize('int8'), or load the saved "
                         "student with quantize='int8')")


def remove_checkpoint(checkpoint: Path) -> None:
    """Delete the checkpoint of a completed run: first renamed out of the way in one step (a kill during the deletion
    leaves a ``.checkpoint.tmp-<pid>-*`` folder, which the next run tidies, never a half-deleted checkpoint that
    would be resumed), then removed."""
    if not checkpoint.exists():
        return
    doomed = checkpoint.with_name(f".{checkpoint.name}.tmp-{os.getpid()}-finished")
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def budget(distiller: Distiller, source: GroupSource) -> Budget:
    """Steps per epoch and in all of the run, from the source's size and the settings."""
    settings = distiller.settings
    per_step = settings.batch_size * settings.grad_accum_steps
    groups_per_epoch = source.num_groups()
    if groups_per_epoch == 0:
        raise ValueError("there are no training groups to learn from")
    steps_per_epoch = math.ceil(groups_per_epoch / per_step)
    total_steps = steps_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    return Budget(groups_per_epoch=groups_per_epoch, groups_per_step=per_step, steps_per_epoch=steps_per_epoch,
                  total_steps=total_steps, eval_steps=settings.eval_steps, save_steps=settings.save_steps,
                  max_time=settings.max_time)


def fingerprint(distiller: Distiller, source: GroupSource, total_steps: int) -> str:
    """What a resumed run must share with the run that wrote the checkpoint."""
    s = distiller.settings
    loss = repr(distiller.loss) + (f" + {distiller.intermediate!r}" if distiller.intermediate is not None else "")
    return run_fingerprint({"student": repr(distiller.student), "loss": loss, "lr": s.lr, "seed": s.seed,
                            "batch_size": s.batch_size, "accum": s.grad_accum_steps, "total_steps": total_steps,
                            "epochs": s.epochs, "data": sample_groups(source),
                            **({"head_lr": s.head_lr} if s.head_lr is not None else {}),
                            "groups": source.num_groups()})


def validate(distiller: Distiller, va_res: pd.DataFrame, va_qrels: pd.DataFrame, step: int, state: LoopState,
             clock: Clock) -> dict:
    """nDCG@10 of the student on the validation results, recorded in ``state.validation``; returns the best step so
    far, whose weights are kept in ``out_path/best``."""
    student = distiller.student
    value = evaluate_ndcg10(student.transform(va_res), va_qrels)
    state.validation.append({"step": step, "ndcg@10": value, "train_seconds": clock.train_seconds()})
    best = state.best
    if best is None or value > best["value"]:
        best = {"step": step, "value": value}
        with _files.atomic_dir(distiller.out_path / "best") as tmp:
            save_model(student.model, str(tmp / "model.safetensors"))
    if distiller.settings.verbose:
        pt.tqdm.write(f"Distiller: step {step} validation nDCG@10 {value:.4f} (best {best['value']:.4f} at step "
                      f"{best['step']})")
    student.model.train()
    return best


def adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``groups``, fused (one kernel over all parameters) where torch has that for their device, as
    Hugging Face's Trainer does: the same update as the per-parameter loop torch uses on the CPU by default, at
    a fraction of its cost (about 5% of a 6-layer cross-encoder's training step on 2 CPU cores)."""
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def train(distiller: Distiller, source: GroupSource, va_res: pd.DataFrame | None = None,
          va_qrels: pd.DataFrame | None = None) -> None:
    """Train ``distiller.student`` on ``source`` (epochs of groups, teacher scores added from the cached teacher in
    chunks where the groups have none), resuming a checkpoint of the same run, validating on ``va_res``."""
    settings, student, report = distiller.settings, distiller.student, distiller.report
    check_trainable(student)  # quantized since the Distiller was made?
    out = distiller.out_path
    out.mkdir(parents=True, exist_ok=True)
    dist = distributed.current()
    dist.init()
    dist.place(student)
    dist.place(distiller.teacher)
    plan = budget(distiller, source)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    model = student.model
    model.train()
    extra = distiller.intermediate.to(student.torch_device) if distiller.intermediate is not None else None
    groups = param_groups(model, extra, settings.head_lr)
    dist.broadcast([p for group in groups for p in group["params"]])
    optimizer = adamw(groups, settings.lr, settings.weight_decay)
    clock = Clock()
    scheduler = linear_schedule(optimizer, plan.total_steps, settings.warmup_ratio, clock, settings.max_time)
    teacher = None
    if distiller.teacher is not None and distiller.loss.needs_teacher and not getattr(source, "has_teacher_scores",
                                                                                       False):
        if preparation.scores_whole_lists(distiller.teacher):
            raise ValueError(f"the teacher {distiller.teacher!r} scores whole candidate lists (it normalises per "
                             "query), so it cannot score these training pairs one batch at a time; train with "
                             "fit(results, qrels) on candidate lists, or score the pairs into a file first")
        teacher = distiller.teacher_cache()
    preparation.require_teacher_scores(distiller.loss, source, teacher)
    distiller.tensors.teacher_factor = preparation.teacher_scale_factor(settings.teacher_scale, source, teacher,
                                                                        report)
    run_id = fingerprint(distiller, source, plan.total_steps)
    state = LoopState()
    checkpoint = out / "checkpoint"
    for folder in (checkpoint, out / "best"):
        _files.recover_dir(folder)  # what a killed run left half-written
    if settings.resume and (checkpoint / STATE_FILE).exists():
        state = LoopState(**load_checkpoint(checkpoint, model, distiller.intermediate, optimizer, scheduler, run_id))
    elif preparation.mixes_first_stage(student):
        preparation.init_first_stage_mix(student, source, teacher, distiller.tensors.teacher_factor,
                                         distiller.loss.needs_teacher, report)
    distiller.history, distiller.validation = state.history, state.validation
    clock.before = state.elapsed
    report.update(groups_per_epoch=plan.groups_per_epoch, total_steps=plan.total_steps, resumed_from=state.step)

    def save(step: int) -> None:
        if dist.is_main:
            save_checkpoint(checkpoint, model, distiller.intermediate, optimizer, scheduler, step=step,
                            best=state.best, fingerprint=run_id, history=state.history,
                            validation=state.validation, elapsed=clock.elapsed())

    def one_step(batch: list) -> tuple[float, float]:
        loss = optimizer_step(batch, distiller.tensors, distiller.loss, batch_size=settings.batch_size,
                              optimizer=optimizer, scheduler=scheduler, max_grad_norm=settings.max_grad_norm)
        return loss, scheduler.get_last_lr()[0]

    def validate_step(step: int) -> None:
        state.best = dist.on_main(lambda: validate(distiller, va_res, va_qrels, step, state, clock))

    report["memory"] = memory.keep_budget(student, source, settings)
    bar = pt.tqdm(total=plan.total_steps, initial=state.step, desc="distil", unit="step",
                  disable=not (settings.verbose and dist.is_main))
    memory_saving = contextlib.ExitStack()
    if report["memory"]["checkpointing"]:
        memory_saving.enter_context(gradient_checkpointing(model))
    else:  # freed activations stay in the heap for the next step (not under unmap_large_blocks)
        memory_saving.enter_context(keep_freed_memory())
    try:
        stopped_early = run_loop(
            plan, state, clock, step=one_step, save=save, validate_start=settings.validate_start,
            save_at_end=settings.keep_checkpoint, progress=bar,
            batches=lambda epoch, step_in_epoch: step_batches(source.groups(epoch), teacher,
                                                              groups_per_step=plan.groups_per_step,
                                                              skip=step_in_epoch * plan.groups_per_step),
            validate=None if va_res is None else validate_step)
    finally:
        memory_saving.close()
        release_freed_memory()
        bar.close()
        if teacher is not None:
            report["teacher_pairs_scored"] = teacher.teacher.pairs_scored
            teacher.close()
    if teacher is not None:
        dist.merge_teacher_caches(teacher.shared_path)
    report["stopped_by_max_time"] = stopped_early
    if settings.select_best and state.best is not None and (out / "best" / "model.safetensors").exists():
        load_model(model, str(out / "best" / "model.safetensors"))
        report["best_step"], report["best_ndcg@10"] = state.best["step"], state.best["value"]
    model.eval()
    if dist.is_main:
        student.save_pretrained(out / "student")
        if not stopped_early and not settings.keep_checkpoint:
            remove_checkpoint(checkpoint)
    dist.barrier()
    if settings.verbose and dist.is_main:
        print(f"Distiller: {json.dumps(report)}")
