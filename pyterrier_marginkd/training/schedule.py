"""The learning-rate schedule: linear warm-up, then linear decay to 0 at the end of the run, whose progress is the
larger of steps done / total steps and, with a time budget, seconds spent / the budget."""
from __future__ import annotations

import torch

from pyterrier_marginkd.training.loop import Clock


def lr_factor(progress: float, warmup_ratio: float, total_steps: int) -> float:
    """The factor on the peak learning rate at ``progress`` (0 to 1) of a run of ``total_steps``."""
    progress = min(progress, 1.0)
    if progress < warmup_ratio:
        return max(progress / warmup_ratio, 1.0 / max(total_steps, 1))
    return max(0.0, (1.0 - progress) / max(1.0 - warmup_ratio, 1e-9))


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, clock: Clock,
                    max_time: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then decay over ``total_steps``; with ``max_time`` also over the seconds on ``clock`` (once started),
    so that a time-boxed run warms up and anneals within its budget instead of stopping at a high learning rate."""
    def factor(step: int) -> float:
        progress = step / max(total_steps, 1)
        if max_time and clock.started is not None:
            progress = max(progress, clock.elapsed() / max_time)
        return lr_factor(progress, warmup_ratio, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
