"""Distiller(gradient_checkpointing=True): layers recompute their activations in the backward pass, training ends at
the same weights, the models are left as they were, and students without a Hugging Face encoder are refused."""
from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import CountingTeacher

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models import cross_encoder, two_sided
from pyterrier_marginkd.models.hf import layer_list
from pyterrier_marginkd.training.checkpoints import checkpointable_models

STUDENTS = {
    "CrossEncoder": lambda path: mkd.CrossEncoder.from_pretrained(path, max_length=48),
    "DotEncoder": lambda path: mkd.DotEncoder.from_pretrained(path, max_length=48),
    "ColBERT": lambda path: mkd.ColBERT.from_pretrained(path, max_length=48, query_length=8),
    "PreTT": lambda path: mkd.PreTT.from_pretrained(path, max_length=48),
}


def _fit(make_student, path, small_results, folder, checkpointing: bool):
    """Fit a freshly seeded student for 3 steps; return its weights and how often its first layer's feed-forward
    ran (forward passes, plus recomputations in the backward pass)."""
    torch.manual_seed(0)
    student = make_student(path)
    encoder = checkpointable_models(student.model)[0]
    runs = []
    handle = layer_list(encoder)[0].intermediate.register_forward_hook(lambda *_: runs.append(1))
    distiller = mkd.Distiller(student, CountingTeacher(), batch_size=2, num_negatives=2, epochs=3, lr=1e-3,
                              seed=0, output_dir=folder, gradient_checkpointing=checkpointing)
    qrels = small_results[["qid", "docno"]].assign(label=[1, 0, 0, 1, 0, 0])
    distiller.fit(small_results, qrels)
    handle.remove()
    assert len(distiller.history) == 3
    assert not any(getattr(m, "gradient_checkpointing", False) for m in student.model.modules())  # switched off
    return {k: v.clone() for k, v in student.model.state_dict().items()}, len(runs)


@pytest.mark.parametrize("name", list(STUDENTS))
def test_gradient_checkpointing_recomputes_and_trains_to_the_same_weights(name, tiny_bert_dir, small_results,
                                                                          tmp_path, monkeypatch):
    # the students' CPU shortcuts (models/fast_training.py: other dropout masks; the cross-encoder's last layer's
    # first token only: smaller masks) are off under checkpointing; off in the plain run too, both draw torch's masks
    monkeypatch.setattr(cross_encoder, "fast_training", lambda model: contextlib.nullcontext())
    monkeypatch.setattr(two_sided, "fast_training", lambda model: contextlib.nullcontext())
    monkeypatch.setattr(cross_encoder, "first_token_only", lambda model: contextlib.nullcontext())
    plain, plain_runs = _fit(STUDENTS[name], tiny_bert_dir, small_results, tmp_path / "plain", False)
    saved, saved_runs = _fit(STUDENTS[name], tiny_bert_dir, small_results, tmp_path / "checkpointed", True)
    assert plain_runs > 0 and saved_runs == 2 * plain_runs  # every training forward ran again in the backward pass
    assert plain.keys() == saved.keys()
    for key in plain:  # same dropout masks in the recomputation: the same training, step for step
        torch.testing.assert_close(saved[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)


def test_gradient_checkpointing_is_checked_at_construction(tiny_bert_dir, tmp_path):
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=32)
    with pytest.raises(ValueError, match="gradient_checkpointing must be True or False"):
        mkd.Distiller(student, CountingTeacher(), gradient_checkpointing="yes")
    tk = mkd.TK.from_pretrained(tiny_bert_dir, max_length=32)
    with pytest.raises(ValueError, match="needs a student built on a Hugging Face encoder"):
        mkd.Distiller(tk, CountingTeacher(), gradient_checkpointing=True)


MALLOC_PROBE = """
import ctypes, ctypes.util, sys
from pyterrier_marginkd import unmap_large_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "unmap":
    assert unmap_large_blocks(4) is True
size = 6 * 2**20
libc.free(libc.malloc(size))  # glibc's adaptive threshold rises past a freed mapped block...
before = libc.mallinfo2().hblks
block = libc.malloc(size)     # ...so by default the next one of that size comes from the heap
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


def test_unmap_large_blocks_maps_large_allocations_on_glibc():
    """After unmap_large_blocks(4), a 6 MiB block gets its own mapping (returned to the system when freed) even once
    glibc's adaptive threshold would have put it in the heap."""
    import ctypes.util
    import subprocess
    import sys

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33")
    mapped = {mode: int(subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "unmap")}
    assert mapped == {"default": 0, "unmap": 1}
    with pytest.raises(ValueError, match="min_mib must be positive"):
        mkd.unmap_large_blocks(0)


def test_cli_low_memory_trains_with_checkpointing_and_unmapped_blocks(tiny_bert_dir, tmp_path, monkeypatch):
    from pyterrier_marginkd import cli
    from pyterrier_marginkd.cli import commands
    from pyterrier_marginkd.training import checkpoints

    calls = []
    monkeypatch.setattr(checkpoints, "unmap_large_blocks", lambda: calls.append(1) or True)
    for flag, expected in (([], False), (["--low-memory"], True)):
        args = cli.build_parser().parse_args(["train", "--student", str(tiny_bert_dir), "--teacher", "none",
                                              "--loss", "ranknet", "--output", str(tmp_path), *flag])
        assert commands._distiller(args, tmp_path).gradient_checkpointing is expected
    assert calls == [1]


def test_pretts_recomputes_its_layers_in_chunks_with_the_same_gradients(tiny_bert_dir):
    """Under checkpointing PreTT runs (and recomputes) each layer on CHECKPOINT_ROWS sequences at a time, so that the
    backward pass holds one chunk's attention maps; without dropout its scores and gradients are those of all rows at
    once."""
    from pyterrier_marginkd.models import pretts
    from pyterrier_marginkd.training.checkpoints import gradient_checkpointing

    torch.manual_seed(0)
    student = mkd.PreTT.from_pretrained(tiny_bert_dir, max_length=48, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)
    queries = [f"wing flutter number {i}" for i in range(10) for _ in range(4)]  # 10 queries, 40 pairs
    texts = [f"the boundary layer of plate {i} " * (1 + i % 5) for i in range(40)]
    rows = []
    first = layer_list(student.model.encoder)[0].intermediate  # its feed-forward runs again in each recomputation
    handle = first.register_forward_hook(lambda _, args, out: rows.append(len(args[0])))

    def scores_and_gradients(checkpointing: bool):
        student.model.train()
        student.model.zero_grad()
        rows.clear()
        with gradient_checkpointing(student.model) if checkpointing else contextlib.nullcontext():
            scores = student.train_scores(queries, texts)
            scores.pow(2).sum().backward()
        return scores.detach(), {n: p.grad.clone() for n, p in student.model.named_parameters() if p.grad is not None}

    plain_scores, plain = scores_and_gradients(False)
    assert sorted(rows) == [10, 40]  # the distinct queries, the documents
    chunked_scores, chunked = scores_and_gradients(True)
    handle.remove()
    assert max(rows) == pretts.CHECKPOINT_ROWS and sum(rows) == 2 * (10 + 40)  # in chunks, each recomputed once
    torch.testing.assert_close(chunked_scores, plain_scores)
    assert plain.keys() == chunked.keys()
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
