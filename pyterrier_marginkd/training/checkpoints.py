"""The Distiller's training-loop helpers: run fingerprints, checkpoints (atomic save, safe load), validation metric."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_model, save_model
from transformers import PreTrainedModel

from pyterrier_marginkd import _files
from pyterrier_marginkd.data.groups import GroupSource
from pyterrier_marginkd.models import io

#: names of the scoring-head modules that ``head_lr`` applies to (the layers a student adds on top of its encoder)
HEAD_NAMES = frozenset({"classifier", "pooler", "projection", "score_head", "score", "mixer", "kernel_scale",
                        "interpolation"})
#: the optimizer / scheduler / RNG / progress state saved next to the weights in every checkpoint
STATE_FILE = "trainer_state.pt"


def param_groups(model: torch.nn.Module, extra: torch.nn.Module | None, head_lr: float | None) -> list[dict]:
    """AdamW parameter groups: the model (and ``extra``, e.g. intermediate-layer projections) at the base learning
    rate; with ``head_lr``, the scoring-head modules (:data:`HEAD_NAMES`) in a second group at that rate."""
    head = [p for name, p in model.named_parameters() if HEAD_NAMES & set(name.split("."))]
    head_ids = {id(p) for p in head} if head_lr is not None else set()
    body = [p for p in model.parameters() if id(p) not in head_ids]
    if extra is not None:
        body += list(extra.parameters())
    return [{"params": body}] + ([{"params": head, "lr": head_lr}] if head_ids else [])


def checkpointable_models(model: torch.nn.Module) -> list[PreTrainedModel]:
    """The outermost Hugging Face models inside ``model`` (itself included) that support gradient checkpointing."""
    if isinstance(model, PreTrainedModel):
        return [model] if model.supports_gradient_checkpointing else []
    return [m for child in model.children() for m in checkpointable_models(child)]


@contextlib.contextmanager
def gradient_checkpointing(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, the Hugging Face models in ``model`` keep only each transformer layer's input in training
    and recompute the layer's activations in the backward pass (PyTorch's non-reentrant checkpointing): memory no
    longer grows with the layers' attention maps and feed-forward activations, for about a third more compute."""
    models = checkpointable_models(model)
    for hf_model in models:
        if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed the method
            hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        for hf_model in models:
            if hasattr(hf_model, "activation_checkpointing_disable"):
                hf_model.activation_checkpointing_disable()
            else:
                hf_model.gradient_checkpointing_disable()


def _glibc() -> Any:
    """The C library when it is glibc (mallopt and malloc_trim behave as documented here), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the operating system (glibc's ``malloc_trim``; elsewhere a no-op).

    A training step allocates and frees gigabytes of activations in blocks that glibc serves from its heap (below its
    adaptive mmap threshold of up to 32 MiB); without this the process keeps them after a fit (3-5 GB measured
    after a 6-layer MiniLM fit at 80 sequences x 256 tokens, see benchmarks/train_memory.py)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


#: glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: glibc's default maximum number of mapped blocks, and the trim threshold its adaptive rule reaches (2 x 32 MiB)
_DEFAULT_MMAP_MAX, _ADAPTED_TRIM_THRESHOLD = 65536, 64 * 2**20
#: set by unmap_large_blocks: the process asked for low memory, so training does not keep freed blocks
_unmapping = False


def unmap_large_blocks(min_mib: float = 4) -> bool:
    """Make glibc serve every allocation of ``min_mib`` MiB or more with its own memory mapping, handed back to the
    operating system as soon as it is freed (``mallopt(M_MMAP_THRESHOLD)``; process-wide, for the rest of the
    process). Returns False where the C library is not glibc (nothing changed). Training then no longer keeps
    freed activations between steps (:func:`keep_freed_memory`): lower memory, slower steps.

    Training allocates and frees activations of tens of MiB every step; glibc's adaptive threshold (up to 32 MiB)
    keeps such freed blocks in its heap, so the process's RSS counts them: measured on a 6-layer MiniLM student at
    batch 16 x 5, length 256, with gradient checkpointing, peak RSS 3.8-5.0 GB without and 2.5-3.0 GB with this
    (benchmarks/train_memory.py), at the same time per step.
    """
    global _unmapping
    if min_mib <= 0:
        raise ValueError(f"min_mib must be positive, got {min_mib}")
    libc = _glibc()
    if libc is None or not libc.mallopt(_M_MMAP_THRESHOLD, int(min_mib * 2**20)):
        return False
    _unmapping = True
    return True


def large_blocks_unmapped() -> bool:
    """Whether :func:`unmap_large_blocks` took effect in this process."""
    return _unmapping


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """While training, glibc keeps freed blocks of any size in its heap for the next step instead of handing them
    back to the operating system and faulting fresh zeroed pages in again (``mallopt``: no memory mappings; the
    heap's free top is trimmed only above 2 GiB, mallopt's largest value); on exit the free heap goes back
    (``malloc_trim``) and mappings and trimming resume (with fixed thresholds: 64 MiB for trimming, the mmap
    threshold where glibc's adaptive rule had put it). A training step allocates and frees its activations every
    time: on 2 CPU cores half of a step's time went to the kernel's page faults (benchmarks/train_speed.py). Peak
    memory stays about the same (lower, measured: benchmarks/results/train-memory/fresh-cross-kept-heap.md); between
    steps the process holds up to its peak. Yields whether it changed anything: not where the C library is not
    glibc, nor after :func:`unmap_large_blocks` (the process asked for low memory)."""
    libc = None if _unmapping else _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _ADAPTED_TRIM_THRESHOLD)
        release_freed_memory()


def sample_groups(source: GroupSource, num: int = 50) -> list[tuple[str, list[str]]]:
    """(qid, docnos) of the first ``num`` groups of epoch 0: the data part of a run's fingerprint."""
    return [(g.qid, g.docnos) for g in itertools.islice(iter(source.groups(0)), num)]


def run_fingerprint(description: dict[str, Any]) -> str:
    """A digest of everything that makes two runs the same run (settings, step count, data sample); a checkpoint
    resumes only a run with the same fingerprint."""
    return hashlib.sha256(json.dumps(description).encode()).hexdigest()


def _cuda_rng_states() -> list[torch.Tensor]:
    """The random states of the CUDA devices once CUDA is in use (a student trained on a GPU draws its dropout
    masks from them), else none."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.get_rng_state_all()
    return []


def save_checkpoint(path: Path, model: torch.nn.Module, extra: torch.nn.Module | None, optimizer, scheduler, *,
                    step: int, best: dict | None, fingerprint: str, history: list, validation: list,
                    elapsed: float) -> None:
    """Write weights and trainer state to ``path`` atomically (a kill leaves the previous checkpoint intact)."""
    with _files.atomic_dir(path) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(), "cuda_rng": _cuda_rng_states(), "step": step,
                    "fingerprint": fingerprint,
                    "best": json.dumps(best), "history": json.dumps(history), "validation": json.dumps(validation),
                    "elapsed": elapsed, "intermediate": extra.state_dict() if extra is not None else {}},
                   tmp / STATE_FILE)


def load_checkpoint(path: Path, model: torch.nn.Module, extra: torch.nn.Module | None, optimizer, scheduler,
                    fingerprint: str) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``path``; the progress state (step, best, history,
    validation, elapsed) is returned. Refuses a damaged file, pickled objects and a checkpoint of another run."""
    io.check_files(path, ["model.safetensors", STATE_FILE])
    try:  # weights_only: tensors and plain containers, never arbitrary pickled objects
        saved = torch.load(path / STATE_FILE, weights_only=True)
    except Exception as err:  # UnpicklingError for a forbidden object, RuntimeError/EOFError for a damaged file
        raise ValueError(f"{path / STATE_FILE} cannot be loaded safely ({type(err).__name__}: {err}); delete "
                         f"{path} to start over, or pass resume=False") from None
    if saved["fingerprint"] != fingerprint:
        raise ValueError(f"the checkpoint in {path} belongs to a different run (other data, student or settings); "
                         "use another output_dir, delete the checkpoint, or pass resume=False")
    load_model(model, str(path / "model.safetensors"))
    if extra is not None:
        extra.load_state_dict(saved["intermediate"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    cuda_rng = saved.get("cuda_rng") or []
    if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)  # the student's dropout on a GPU draws from these
    print(f"Distiller: resuming from the checkpoint at step {saved['step']} in {path}")
    return {"step": saved["step"], "best": json.loads(saved["best"]), "history": json.loads(saved["history"]),
            "validation": json.loads(saved["validation"]), "elapsed": float(saved.get("elapsed", 0.0))}
