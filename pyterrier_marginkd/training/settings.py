"""The Distiller's settings in one object, checked once, when it is made."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

from pyterrier_marginkd.data.groups import NEGATIVE_SAMPLING


def _whole(name: str, value: object, *, optional: str = "") -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}" + (f" (None: {optional})" if optional
                                                                                   else ""))


def _positive(name: str, value: object, *, optional: bool = False, zero: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a {'non-negative' if zero else 'positive'} number"
                         f"{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class TrainSettings:
    """How a :class:`~pyterrier_marginkd.Distiller` trains; every value is checked here, when the settings are made.

    Args:
        epochs: passes over the training groups.
        batch_size: groups (a query, its positive and ``num_negatives`` negatives) per forward pass.
        lr: peak learning rate of the student (AdamW); ``head_lr`` that of its score head (default: ``lr``).
        num_negatives: negatives per group; ``negative_sampling`` picks them ``"random"``-ly among the candidates
            below the positives or from the ``"top"``; ``graded`` keeps relevance grades as labels.
        warmup_ratio: share of the run with a linear warm-up; then the rate decays linearly to 0.
        weight_decay: AdamW weight decay. ``max_grad_norm``: gradient clipping (0/None: off).
        grad_accum_steps: forward passes per optimizer step.
        max_steps: stop after this many optimizer steps (None: all epochs). ``max_time``: stop after this many
            seconds of training (the schedule anneals within it; the checkpoint is kept to resume).
        amp: bfloat16 autocast of the student's forward pass (weights, gradients and optimizer stay float32) on
            CUDA and on CPUs with native bfloat16 (AVX512-BF16 or AMX); elsewhere a warning, and float32.
        eval_steps: validate every this many steps (None: at the end of each epoch only).
        save_steps: write the resume checkpoint every this many steps.
        seed: seeds the sampling, the shuffling and torch.
        output_dir: checkpoints, the teacher cache and the final ``student`` (None: a temporary folder).
        cache_dir: the teacher cache (default ``output_dir/teacher_cache``); ``teacher_id`` names the teacher in it.
        unjudged: ``"skip"`` queries without qrels, or let the ``"teacher"`` rank their candidates.
        pseudo_positives: label-free groups: the teacher's top ``pseudo_positives`` candidates are positives.
        pseudo_negative_start: label-free groups: negatives come from rank ``pseudo_negative_start`` on.
        teacher_scale: factor on teacher scores; ``"auto"`` rescales teachers whose margins are small (std < 0.5).
        select_best: end with the weights that validated best. ``validate_start``: the starting weights compete.
        resume: continue from ``output_dir/checkpoint`` when it exists. ``keep_checkpoint``: keep it after a
            completed fit.
        verbose: progress bars and messages.
        gradient_checkpointing: recompute each layer in the backward pass (less memory, about a third more compute).
        memory_budget: bytes one training step's activations may take, or ``"auto"`` (half of the memory available
            when the fit starts); when the estimate of the largest step exceeds it, the fit turns on gradient
            checkpointing and :func:`~pyterrier_marginkd.unmap_large_blocks` (process-wide) and warns. None: never.
    """

    epochs: int = 1
    batch_size: int = 8
    lr: float = 3e-5
    head_lr: float | None = None
    num_negatives: int = 1
    negative_sampling: str = "random"
    graded: bool = False
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None
    max_time: float | None = None
    amp: bool = False
    eval_steps: int | None = None
    save_steps: int = 200
    seed: int = 0
    output_dir: str | Path | None = None
    cache_dir: str | Path | None = None
    teacher_id: str | None = None
    unjudged: str = "skip"
    pseudo_positives: int = 1
    pseudo_negative_start: int | None = None
    teacher_scale: float | str | None = "auto"
    select_best: bool = True
    validate_start: bool = True
    resume: bool = True
    keep_checkpoint: bool = False
    verbose: bool = False
    gradient_checkpointing: bool = False
    memory_budget: float | str | None = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum_steps", "num_negatives", "save_steps", "pseudo_positives"):
            _whole(name, getattr(self, name))
        _whole("max_steps", self.max_steps, optional="the steps of all epochs")
        _whole("eval_steps", self.eval_steps, optional="no periodic validation, only at the end of each epoch")
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not (math.isfinite(self.lr)
                                                                                      and self.lr > 0):
            raise ValueError(f"lr must be a positive learning rate, got {self.lr!r}")
        _positive("head_lr", self.head_lr, optional=True, zero=True)
        _positive("max_time", self.max_time, optional=True, zero=True)
        _positive("weight_decay", self.weight_decay, zero=True)
        _positive("max_grad_norm", self.max_grad_norm, optional=True, zero=True)
        if isinstance(self.warmup_ratio, bool) or not isinstance(self.warmup_ratio, numbers.Real) \
                or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be a share of the run in [0, 1), got {self.warmup_ratio!r}")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {self.negative_sampling!r}")
        if self.unjudged not in ("skip", "teacher"):
            raise ValueError(f"unjudged must be 'skip' or 'teacher', got {self.unjudged!r}")
        for name in ("graded", "amp", "select_best", "validate_start", "resume", "keep_checkpoint", "verbose",
                     "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        budget = self.memory_budget
        if not (budget is None or (isinstance(budget, str) and budget == "auto")
                or (isinstance(budget, numbers.Real) and not isinstance(budget, bool) and math.isfinite(budget)
                    and budget > 0)):
            raise ValueError(f"memory_budget must be a positive number of bytes (e.g. 8e9), 'auto' (half of the "
                             f"available memory) or None (never switch to low-memory training), got {budget!r}")
        scale = self.teacher_scale
        if not (scale is None or scale == "auto" or (isinstance(scale, (int, float)) and not isinstance(scale, bool))):
            raise ValueError(f"teacher_scale must be 'auto', a number or None, got {scale!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The names of the settings (the Distiller's keyword arguments besides student, teacher, loss)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: object) -> TrainSettings:
        """A copy with some settings changed (checked like new settings); unknown names are a TypeError."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown training setting(s) {unknown}; the settings are {list(self.names())}")
        return dataclasses.replace(self, **changes)
