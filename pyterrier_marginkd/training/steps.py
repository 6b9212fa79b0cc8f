"""Optimizer steps: groups batched per step (teacher scores filled in chunks), their tensors (differentiable student
scores, with the layer loss of the same forward pass under intermediate-layer distillation; teacher scores; labels)
and one update of the student."""
from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch

from pyterrier_marginkd.data.groups import Group
from pyterrier_marginkd.losses import HiddenStateMSE, RankingLoss
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.training import distributed
from pyterrier_marginkd.training.layer_distillation import scores_with_layer_loss
from pyterrier_marginkd.training.teacher_cache import TeacherScores


def step_batches(groups: Iterable[Group], teacher: TeacherScores | None, *, groups_per_step: int, skip: int = 0,
                 prefetch_steps: int = 16) -> Iterator[list[Group]]:
    """Optimizer-step batches of groups, skipping ``skip`` groups (resume) and adding teacher scores in chunks.

    The chunks are ``prefetch_steps`` steps counted from the start of the epoch whatever ``skip`` is: a resumed
    run asks the teacher for exactly the pairs, in exactly the calls, of an uninterrupted run (the pairs it
    scored before the kill come from the cache). A teacher scores in padded batches, and a pair's float score
    depends on its batch-mates in the last bits; chunks starting at the resumed step would give the student
    other teacher scores than an uninterrupted run, so other weights.
    """
    shard = distributed.current().shard
    chunk_groups = groups_per_step * prefetch_steps
    start_of_chunk = skip - skip % chunk_groups
    skip_steps = (skip - start_of_chunk) // groups_per_step  # skip is a whole number of steps
    groups = itertools.islice(iter(groups), start_of_chunk, None)
    while True:
        chunk = list(itertools.islice(groups, chunk_groups))
        if not chunk:
            return
        steps = [shard(chunk[start:start + groups_per_step]) for start in range(0, len(chunk), groups_per_step)]
        if teacher is not None:
            teacher.fill([g for step in steps for g in step])
        yield from steps[skip_steps:]
        skip_steps = 0


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast pays on ``device``: any CUDA device, or a CPU with native bfloat16 arithmetic
    (AVX512-BF16 or AMX, which oneDNN uses; elsewhere bfloat16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class BatchTensors:
    """The tensors of a batch of groups: ``(student, teacher, labels, layer_loss, judged, vectors)``, each ``[groups,
    group size]`` but the layer loss (a scalar, or None without intermediate-layer distillation or without
    gradients), ``judged`` (``[groups]``: whether a group's labels are judgements rather than the teacher's pick) and
    ``vectors`` (with ``align=True``: the student's vectors of the batch's distinct queries and their targets, from
    its frozen document encoder; else None). Groups without documents (texts to align) give scores ``[groups, 0]``."""

    def __init__(self, student: NeuralScorer, teacher: Any = None, intermediate: HiddenStateMSE | None = None, *,
                 amp: bool = False, teacher_factor: float = 1.0, align: bool = False):
        self.student = student
        self.teacher = teacher
        self.intermediate = intermediate
        self.amp = amp
        self._autocast: dict[str, bool] = {}  # per device type: whether amp runs there (asked once)
        self.teacher_factor = teacher_factor
        self.align = align

    def __call__(self, part: list[Group]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None,
                                                   torch.Tensor | None, torch.Tensor, tuple | None]:
        size = len(part[0].docnos)
        if any(len(g.docnos) != size for g in part):
            raise ValueError(f"a batch mixes groups of {sorted({len(g.docnos) for g in part})} documents; every group "
                             "of a batch needs the same number")
        queries = [g.query for g in part for _ in g.docnos]
        texts = [t for g in part for t in g.texts]
        device = self.student.torch_device
        vectors = None
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.autocast(device)):
            if self.align:
                student, vectors = self.aligned_scores(queries, texts, part)
                layer_loss = None
            else:
                student, layer_loss = self.student_scores(queries, texts, part)
            student = student.float().view(len(part), size)
        if vectors is not None:
            vectors = (vectors[0].float(), vectors[1].float())
        teacher = labels = None
        if all(g.teacher is not None for g in part):
            teacher = torch.tensor([g.teacher for g in part], dtype=torch.float32, device=device) * self.teacher_factor
        if all(g.labels is not None for g in part):
            labels = torch.tensor([g.labels for g in part], dtype=torch.float32, device=device)
        judged = torch.tensor([g.judged for g in part], dtype=torch.bool, device=device)
        return student, teacher, labels, layer_loss, judged, vectors

    def autocast(self, device: torch.device) -> bool:
        """Whether this batch runs under bfloat16 autocast: with ``amp``, where the device has native bfloat16; a
        device without it trains in float32, and a warning says so once."""
        if not self.amp:
            return False
        if device.type not in self._autocast:
            self._autocast[device.type] = native_bf16(device)
            if not self._autocast[device.type]:
                warnings.warn(f"amp=True, but the {device.type} device has no native bfloat16 arithmetic (CUDA, or a "
                              "CPU with AVX512-BF16 or AMX): training in float32", stacklevel=3)
        return self._autocast[device.type]

    def aligned_scores(self, queries: list[str], texts: list[str],
                       part: list[Group]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Differentiable scores and the ``(student, target)`` vectors of the batch's distinct queries, from one
        forward pass of the query encoder (no scores, ``[0]``, for groups without documents)."""
        if not texts:
            unique = list(dict.fromkeys(g.query for g in part))
            student = self.student.train_query_vectors(unique)
            return student.new_zeros(0), (student, self.student.target_query_vectors(unique))
        first_stage = None
        if getattr(self.student, "first_stage", None) is not None:
            first_stage = [f for g in part for f in g.first_stage]
        scores, unique, student = self.student.train_scores_and_query_vectors(queries, texts, first_stage)
        return scores, (student, self.student.target_query_vectors(unique))

    def student_scores(self, queries: list[str], texts: list[str],
                       part: list[Group]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Differentiable student scores and, with ``intermediate`` (and gradients on), the layer loss of the same
        forward pass."""
        if getattr(self.student, "first_stage", None) is not None:
            return self.student.train_scores(queries, texts, first_stage=[f for g in part for f in g.first_stage]), \
                None
        if self.intermediate is None or not torch.is_grad_enabled():
            return self.student.train_scores(queries, texts), None
        return scores_with_layer_loss(self.intermediate, self.student, self.teacher, queries, texts)


def optimizer_step(groups: list[Group], tensors: Callable[[list[Group]], tuple], loss: RankingLoss, *,
                   batch_size: int, optimizer: torch.optim.Optimizer, scheduler: Any,
                   max_grad_norm: float | None) -> float:
    """One update of the student from ``groups`` (forward passes of ``batch_size`` groups, gradients accumulated);
    returns the loss."""
    model = tensors.student.model
    model.train()
    total = 0.0
    for start in range(0, len(groups), batch_size):
        part = groups[start:start + batch_size]
        student, teacher, labels, layer_loss, judged, vectors = tensors(part)
        value = loss(student, teacher, labels, judged, **({"vectors": vectors} if vectors is not None else {}))
        if layer_loss is not None:
            value = value + layer_loss
        value = value * (len(part) / len(groups))
        value.backward()
        total += float(value.detach())
    total = distributed.current().sync_gradients(optimizer, len(groups), total)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total
