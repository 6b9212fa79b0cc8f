"""How much memory a training step's activations take, and the budget a fit keeps them under: an estimate from the
batch (groups x documents), the token lengths in it and the student's transformer, and the machine's available
memory."""
from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from pyterrier_marginkd.data.groups import Group, GroupSource
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.fast_training import BERT_LIKE
from pyterrier_marginkd.models.hf import first_token_model
from pyterrier_marginkd.models.pretts import CHECKPOINT_ROWS
from pyterrier_marginkd.training import checkpoints
from pyterrier_marginkd.training.settings import TrainSettings

#: bytes of one float32 activation
FLOAT_BYTES = 4
#: activation bytes per counted element (attention scores heads x L x L plus hidden and feed-forward values L x
#: (hidden + intermediate), per sequence and layer), measured once against real peaks of 6-layer all-MiniLM-L6-v2
#: students (12 heads, hidden 384, feed-forward 1536), Margin-MSE at 16 groups x 5 documents, max length 256, one CPU
#: thread (benchmarks/train_memory.py; peak RSS minus RSS before the fit, per counted element): CrossEncoder 4.1
#: (256-token pairs), DotEncoder 3.9, ColBERT 3.9 (benchmarks/results/train-memory/), PreTT 4.4 with Cranfield's
#: queries (up to 56 tokens) and 4.35 with 140-word queries (up to 205 tokens; 8 groups)
#: (benchmarks/results/train-memory-auto/). It holds everything a step keeps besides the counted elements: the
#: saved softmax and dropout outputs and masks, the gradients flowing back, the AdamW state, the freed blocks
#: glibc's heap keeps. Under gradient checkpointing the estimate is lower than the peak by about the parameters'
#: gradients and AdamW state (3 x the weights: 260 MiB for MiniLM-L6), which no longer vanish beside the activations.
CALIBRATION = 4.5
#: the share of the available memory that ``memory_budget="auto"`` gives one step's activations
AUTO_SHARE = 0.5
#: groups read from the start of the first epoch for their token lengths
SAMPLED_GROUPS = 1000


@dataclass(frozen=True)
class Stack:
    """``sequences`` sequences of ``length`` tokens through ``layers`` transformer layers of one shape (``heads``
    attention heads, ``hidden`` and ``intermediate`` sizes); under gradient checkpointing a layer recomputes
    ``checkpoint_rows`` of the sequences at a time (None: all)."""

    sequences: int
    length: int
    layers: int
    heads: int
    hidden: int
    intermediate: int
    checkpoint_rows: int | None = None

    def layer_bytes(self, rows: int | None = None) -> float:
        """The activations of one of the layers in training (of ``rows`` of the sequences; None: all)."""
        rows = self.sequences if rows is None else min(rows, self.sequences)
        return CALIBRATION * FLOAT_BYTES * rows * self.length * (self.heads * self.length + self.hidden
                                                                 + self.intermediate)

    def input_bytes(self) -> float:
        """The layer inputs that gradient checkpointing keeps (one hidden state per token and layer)."""
        return FLOAT_BYTES * self.sequences * self.length * self.hidden * self.layers


def activation_bytes(stacks: Iterable[Stack], *, checkpointing: bool = False) -> int:
    """Bytes of one forward and backward pass's activations: every layer's; with ``checkpointing``, every layer's
    input and the largest layer's activations (recomputed one layer, or one chunk of its rows, at a time in the
    backward pass)."""
    stacks = [s for s in stacks if s.layers > 0 and s.sequences > 0]
    if not stacks:
        return 0
    if checkpointing:
        return int(sum(s.input_bytes() for s in stacks) + max(s.layer_bytes(s.checkpoint_rows) for s in stacks))
    return int(sum(s.layer_bytes() * s.layers for s in stacks))


@dataclass(frozen=True)
class StepShape:
    """One training forward pass: ``groups`` queries, ``group_size`` documents each, and the longest query, document
    and pair (query and document in one sequence) in tokens."""

    groups: int
    group_size: int
    query_length: int
    doc_length: int
    pair_length: int


def step_shape(student: NeuralScorer, groups: Sequence[Group], groups_per_pass: int) -> StepShape:
    """The largest forward pass of ``groups_per_pass`` groups: each group as large as the largest in ``groups``, each
    sequence as long as the longest the student makes of them (after its truncation)."""
    queries = [g.query for g in groups for _ in g.texts]
    texts = [t for g in groups for t in g.texts]
    group_size = max((len(g.texts) for g in groups), default=0)
    if not texts:  # texts to align: queries alone
        queries = [g.query for g in groups]
        texts = [""] * len(queries)
    items = student._prepare(queries, texts) if queries else []
    if items and isinstance(items[0][0], tuple):  # two-sided: (query tokens, document tokens)
        query_length = max(len(q[0]) for q, _ in items)
        doc_length = max(len(d[0]) for _, d in items) if group_size else 0
        pair_length = query_length + doc_length
    else:  # one sequence per pair
        pair_length = max((len(item[0]) for item in items), default=0)
        query_length, doc_length = 0, 0
    return StepShape(groups_per_pass, group_size, query_length, doc_length, pair_length)


def _config(model: Any) -> Any:
    return getattr(model, "config", None) or getattr(getattr(model, "encoder", None), "config", None)


def _dims(config: Any) -> dict[str, int]:
    return {"heads": config.num_attention_heads, "hidden": config.hidden_size,
            "intermediate": config.intermediate_size}


def student_stacks(student: NeuralScorer, shape: StepShape) -> list[Stack] | None:
    """The transformer stacks a training pass of ``shape`` runs through with gradients, by architecture: a
    CrossEncoder one pair sequence per document; DotEncoder and ColBERT each distinct query and document apart (not
    the documents of a frozen document encoder); PreTT queries and documents apart in its separate layers, pairs in
    the joint ones; TK its small transformer on queries and documents. The last layer of a CrossEncoder or PreTT that
    computes its first token alone is left out; under gradient checkpointing PreTT recomputes its layers in chunks of
    :data:`~pyterrier_marginkd.models.pretts.CHECKPOINT_ROWS` sequences. None for a student of another kind."""
    architecture = student.ARCHITECTURE
    pairs = shape.groups * shape.group_size
    if architecture == "tk":
        dims = {"heads": student.num_heads, "hidden": student.model.embedding.embedding_dim,
                "intermediate": student.ff_dim}
        return [Stack(shape.groups, shape.query_length, student.num_layers, **dims),
                Stack(pairs, shape.doc_length, student.num_layers, **dims)]
    config = _config(student.model)
    if config is None or architecture not in ("cross_encoder", "dot", "colbert", "pretts"):
        return None
    dims, layers = _dims(config), config.num_hidden_layers
    if architecture == "cross_encoder":
        return [Stack(pairs, shape.pair_length, layers - first_token_model(student.model), **dims)]
    if architecture == "pretts":
        separate = student.num_separate_layers
        joint = layers - separate - (config.model_type in BERT_LIKE)
        return [Stack(shape.groups, shape.query_length, separate, **dims, checkpoint_rows=CHECKPOINT_ROWS),
                Stack(pairs, shape.doc_length, separate, **dims, checkpoint_rows=CHECKPOINT_ROWS),
                Stack(pairs, shape.query_length + shape.doc_length, joint, **dims, checkpoint_rows=CHECKPOINT_ROWS)]
    stacks = [Stack(shape.groups, shape.query_length, layers, **dims)]
    if not getattr(student, "frozen_docs", False):
        doc_encoder = getattr(student.model, "doc_encoder", None)
        doc_config = doc_encoder.config if doc_encoder is not None else config
        stacks.append(Stack(pairs, shape.doc_length, doc_config.num_hidden_layers, **_dims(doc_config)))
    return stacks


def step_stacks(student: NeuralScorer, groups: Iterable[Group], groups_per_pass: int) -> list[Stack] | None:
    """The stacks of the student's largest training pass of ``groups_per_pass`` groups, with the group sizes and
    token lengths of ``groups`` (the first :data:`SAMPLED_GROUPS` are read); None for a student whose kind the
    estimate does not know, or without groups."""
    sample = list(itertools.islice(iter(groups), SAMPLED_GROUPS))
    return student_stacks(student, step_shape(student, sample, groups_per_pass)) if sample else None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: Linux's ``MemAvailable`` (free memory plus caches it can drop),
    else the machine's physical memory where ``os.sysconf`` tells it, else None."""
    try:
        with open("/proc/meminfo") as fin:
            for line in fin:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def resolve_budget(memory_budget: float | str | None) -> int | None:
    """The budget in bytes: ``"auto"`` is :data:`AUTO_SHARE` of the available memory (None where that is
    unknown), a number is bytes, None is no budget."""
    if memory_budget == "auto":
        available = available_memory()
        return None if available is None else int(available * AUTO_SHARE)
    return None if memory_budget is None else int(memory_budget)


def gib(size: float) -> str:
    """``size`` bytes in GiB, one decimal."""
    return f"{size / 2**30:.1f} GiB"


def keep_budget(student: NeuralScorer, source: GroupSource, settings: TrainSettings) -> dict[str, Any]:
    """Whether a fit trains in low memory: when the estimate of its largest step exceeds ``settings.memory_budget``
    and gradient checkpointing is off, it turns on gradient checkpointing and
    :func:`~pyterrier_marginkd.training.checkpoints.unmap_large_blocks` (process-wide, for the rest of the process)
    and warns once. Returns the record of ``report["memory"]``: ``estimate_bytes`` (None when not estimated),
    ``budget_bytes``, ``checkpointing`` and ``unmapped`` (what the fit trains with)."""
    budget = resolve_budget(settings.memory_budget)
    record = {"estimate_bytes": None, "budget_bytes": budget, "checkpointing": settings.gradient_checkpointing,
              "unmapped": checkpoints.large_blocks_unmapped()}
    if budget is None:
        return record
    stacks = step_stacks(student, source.groups(0), settings.batch_size)
    if stacks is None:
        return record
    estimate = record["estimate_bytes"] = activation_bytes(stacks)
    if settings.gradient_checkpointing or estimate <= budget:
        return record
    which = f"{AUTO_SHARE:.0%} of the available memory" if settings.memory_budget == "auto" else "memory_budget"
    said = (f"one training step of {student!r} is estimated to take {gib(estimate)} of activations "
            f"({settings.batch_size} groups per forward pass), more than the budget of {gib(budget)} ({which})")
    if not checkpoints.checkpointable_models(student.model):
        warnings.warn(f"{said}; it has no Hugging Face encoder to checkpoint, so the budget cannot be kept: lower "
                      "batch_size (raise grad_accum_steps to keep the step) or max_length", stacklevel=5)
        return record
    record["checkpointing"] = True
    record["unmapped"] = checkpoints.unmap_large_blocks() or record["unmapped"]
    after = activation_bytes(stacks, checkpointing=True)
    warnings.warn(f"{said}: training with gradient checkpointing (layers recomputed in the backward pass, about a "
                  f"third more compute; estimate {gib(after)})"
                  + (" and mkd.unmap_large_blocks() (freed blocks of 4 MiB or more go back to the system at once; "
                     "a glibc setting of the whole process, kept after the fit)" if record["unmapped"] else "")
                  + ("; still above the budget: lower batch_size (raise grad_accum_steps to keep the step) or "
                     "max_length" if after > budget else "")
                  + ". Pass memory_budget=None never to switch, a number of bytes for another budget, or "
                    "gradient_checkpointing=True to always checkpoint", stacklevel=5)
    return record
