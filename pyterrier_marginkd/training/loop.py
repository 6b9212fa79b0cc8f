"""The training loop: optimizer steps over epochs of batches within the step and time budgets, and when to validate
and write the resume checkpoint. It knows no DataFrames, PyTerrier or models: the Distiller hands it callables."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np


@dataclass
class LoopState:
    """What a run has done so far (saved in and restored from the resume checkpoint)."""

    step: int = 0
    best: dict | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    #: training seconds of the earlier runs this one resumes
    elapsed: float = 0.0


class Clock:
    """Seconds of training, across resumed runs; validation time is counted apart."""

    def __init__(self, before: float = 0.0):
        self.before = before
        self.started: float | None = None
        self.validation_seconds = 0.0

    def start(self) -> None:
        self.started = time.time()

    def elapsed(self) -> float:
        """Seconds since the first run started (this run's so far, plus the earlier runs')."""
        return self.before + (time.time() - self.started if self.started is not None else 0.0)

    def train_seconds(self) -> float:
        """:meth:`elapsed` less the time spent validating in this run."""
        return self.elapsed() - self.validation_seconds


@dataclass(frozen=True)
class Budget:
    """How long a run lasts and when it validates and saves."""

    groups_per_epoch: int
    groups_per_step: int
    steps_per_epoch: int
    total_steps: int
    eval_steps: int | None
    save_steps: int
    max_time: float | None


def run_loop(budget: Budget, state: LoopState, clock: Clock, *,
             batches: Callable[[int, int], Iterable[Any]], step: Callable[[Any], tuple[float, float]],
             save: Callable[[int], None], validate: Callable[[int], None] | None = None,
             validate_start: bool = True, save_at_end: bool = True, progress: Any = None) -> bool:
    """Run optimizer steps from ``state.step`` to ``budget.total_steps``; return whether ``max_time`` stopped it early.

    ``batches(epoch, step_in_epoch)`` yields the rest of an epoch's batches, ``step(batch)`` makes one optimizer step
    and returns (loss, learning rate), ``validate(step)`` updates ``state.best``, ``save(step)`` writes the resume
    checkpoint; ``progress`` is a tqdm-like bar. Validation runs every ``eval_steps``, at the end of each epoch and
    of the run. The checkpoint is written every ``save_steps`` and where ``max_time`` stops the run (a resumed run
    continues mid-epoch), and at the end of the run with ``save_at_end`` (off when a completed run's checkpoint is
    deleted anyway).
    """
    current = state.step
    first = current
    clock.start()
    if validate is not None and validate_start and current == 0:
        # the starting weights compete for "best" too: a fit that only makes the student worse on the validation
        # queries (too few labels, a weak teacher) gives back the student it started from
        _timed(clock, validate, 0)
    stopped_early = False
    while current < budget.total_steps and not stopped_early:
        epoch, step_in_epoch = divmod(current, budget.steps_per_epoch)
        before = current
        for s, batch in enumerate(batches(epoch, step_in_epoch), start=step_in_epoch):
            loss, lr = step(batch)
            current = state.step = current + 1
            state.history.append({"step": current, "epoch": epoch, "loss": loss, "lr": lr})
            if progress is not None:
                seconds = time.time() - clock.started
                progress.update(1)
                progress.set_postfix(loss=f"{np.mean([h['loss'] for h in state.history[-20:]]):.4f}",
                                     ex_s=f"{(current - first) * budget.groups_per_step / max(seconds, 1e-9):.1f}")
            end_of_epoch = s == budget.steps_per_epoch - 1
            out_of_time = budget.max_time is not None and clock.elapsed() >= budget.max_time
            end = end_of_epoch or current == budget.total_steps or out_of_time
            if validate is not None and ((budget.eval_steps and current % budget.eval_steps == 0) or end):
                _timed(clock, validate, current)
            if current % budget.save_steps == 0 or out_of_time or (current == budget.total_steps and save_at_end):
                save(current)
            if current >= budget.total_steps or out_of_time or end_of_epoch:
                stopped_early = out_of_time and current < budget.total_steps
                break
        if current == before:
            raise ValueError(f"epoch {epoch} of the training data yielded fewer groups than the "
                             f"{budget.groups_per_epoch} announced")
    return stopped_early


def _timed(clock: Clock, validate: Callable[[int], None], step: int) -> None:
    started = time.time()
    validate(step)
    clock.validation_seconds += time.time() - started
