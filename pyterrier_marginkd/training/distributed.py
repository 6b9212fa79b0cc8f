"""Multi-process training under ``torchrun`` or ``accelerate launch``: ranks, data shards, gradient averaging, rank-0
writes and teacher-cache merging. A process started on its own (no ``WORLD_SIZE > 1``) gets no-ops throughout."""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from pyterrier_caching import Sqlite3ScorerCache

T = TypeVar("T")


class Distributed:
    """The process group of a run launched with ``torchrun``/``accelerate launch`` (read from ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``); gloo on CPUs, NCCL on GPUs."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank

    @classmethod
    def from_env(cls) -> Distributed:
        """The ranks of this process as set by the launcher (rank 0 of 1 when not launched distributed)."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that writes checkpoints, the student and progress)."""
        return self.rank == 0

    def init(self) -> None:
        """Join the process group (once)."""
        if self.enabled and not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def place(self, scorer: object) -> None:
        """Move a CUDA re-ranker (or an Ensemble's CUDA members) to this process's own GPU."""
        if not self.enabled:
            return
        for model in getattr(scorer, "members", [scorer]):
            device = getattr(model, "_device", None)
            if isinstance(device, torch.device) and device.type == "cuda":
                model.to(f"cuda:{self.local_rank}")

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of one optimizer step's items: every world_size-th, starting at the rank."""
        return list(items[self.rank::self.world_size]) if self.enabled else list(items)

    def broadcast(self, tensors: Iterable[torch.Tensor]) -> None:
        """Give every rank rank 0's values of these tensors (e.g. parameters, with a freshly initialised head)."""
        if self.enabled:
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def sync_gradients(self, optimizer: torch.optim.Optimizer, num_local: int, local_loss: float) -> float:
        """Turn each rank's gradient of its mean loss over ``num_local`` groups into the gradient of the mean over all
        ranks' groups, for every parameter the optimizer updates (one all-reduce); returns that global mean loss."""
        if not self.enabled:
            return local_loss
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        device = params[0].device
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        stats = torch.tensor([local_loss, 1.0], dtype=parts[0].dtype, device=device)
        flat = torch.cat(parts + [stats]) * num_local
        dist.all_reduce(flat)
        flat /= flat[-1].clamp(min=1)
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return float(flat[-2])

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result to every rank."""
        if not self.enabled:
            return fn()
        box = [fn() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank arrives here."""
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. building an index), the other ranks after it."""
        self.init()
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    @property
    def shard_name(self) -> str | None:
        """Suffix of this rank's own teacher cache (None when not distributed)."""
        return f"rank{self.rank}-of-{self.world_size}" if self.enabled else None

    def merge_teacher_caches(self, path: Path) -> None:
        """After training, rank 0 merges every rank's teacher-cache shard (``<path>.rankR-of-W``) into ``path``."""
        if not self.enabled:
            return
        self.barrier()
        if self.is_main:
            with Sqlite3ScorerCache(str(path)) as merged:
                for rank in range(self.world_size):
                    shard = path.with_name(f"{path.name}.rank{rank}-of-{self.world_size}")
                    if (shard / "pt_meta.json").exists():
                        with Sqlite3ScorerCache(str(shard)) as part:
                            merged.merge_from(part)
        self.barrier()


@functools.lru_cache(maxsize=1)
def current() -> Distributed:
    """This process's place in the run (read once from the launcher's environment)."""
    return Distributed.from_env()
