"""CPU training shortcuts: parallel dropout masks, BERT self-attention with the mask applied in place of a noise
tensor — the same function and gradients as the model's own forward pass given the same masks; and the heap that
keeps freed activations between steps."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import subprocess
import sys

import pytest
import torch

from pyterrier_marginkd.models import fast_training
from pyterrier_marginkd.models.fast_training import dropout, dropped
from pyterrier_marginkd.models.fast_training import fast_training as fast
from pyterrier_marginkd.training.checkpoints import gradient_checkpointing


def test_masks_drop_at_the_rate_asked_and_follow_torch_seed():
    torch.manual_seed(0)
    mask = dropped((1000, 1000), 0.1)  # several parallel streams
    assert mask.dtype == torch.bool and mask.shape == (1000, 1000)
    assert abs(mask.float().mean().item() - 0.1) < 0.002  # 6 standard deviations
    assert abs(mask[:500].float().mean().item() - mask[500:].float().mean().item()) < 0.003  # both streams drop
    torch.manual_seed(0)
    assert torch.equal(dropped((1000, 1000), 0.1), mask)
    assert not torch.equal(dropped((1000, 1000), 0.1), mask)
    small = dropped((3, 5), 0.5)  # one stream
    assert small.shape == (3, 5)
    assert not dropped((4096,), 0.0).any()
    with pytest.raises(ValueError, match="dropout probability must be in"):
        dropped((3,), 1.0)


def test_dropout_keeps_the_mean_and_passes_gradients_through_kept_elements():
    torch.manual_seed(1)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.2)
    assert set(y.unique().tolist()) == {0.0, 1.25}
    assert abs(y.mean().item() - 1.0) < 0.015
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y_i / d x_i = mask_i / (1 - p) = y_i here
    assert torch.equal(dropout(x, 0.2, training=False), x)


def _batch(ce, frame):
    return ce._collate(ce._prepare(frame["query"].tolist(), frame["text"].tolist()))


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_training_pass_equals_the_models_own_with_the_same_dropout_masks(tiny_ce, small_results, monkeypatch,
                                                                         attention):
    """Reference: the Hugging Face model's own (eager) forward pass with every dropout — attention probabilities
    and hidden states — drawing its masks from the same generator in the same order."""
    model, batch = tiny_ce.model, _batch(tiny_ce, small_results)
    assert (batch["attention_mask"] == 0).any()  # padding: the attention mask matters
    assert all(m.p > 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    model.train()
    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.functional, "dropout",
                      lambda x, p=0.5, training=True, inplace=False: fast_training._Dropout.apply(x, p)
                      if training and p > 0 else x)
        model.set_attn_implementation("eager")
        torch.manual_seed(3)
        expected = model(**batch).logits
        expected.sum().backward()
    expected_grads = _grads(model)
    model.zero_grad()
    model.set_attn_implementation(attention)
    torch.manual_seed(3)
    with fast(model):
        got = model(**batch).logits
        assert "forward" in vars(model.bert.encoder.layer[0].attention.self)
    got.sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not any("forward" in vars(m) for m in model.modules())  # every patch undone
    torch.manual_seed(3)
    with fast(model):
        again = model(**batch).logits
    torch.testing.assert_close(again, got)  # torch's seed fixes the masks
    torch.manual_seed(4)
    with fast(model):
        other = model(**batch).logits
    assert not torch.allclose(other, got)  # dropout is on


def test_nothing_is_patched_under_gradient_checkpointing(tiny_ce):
    """Checkpointing reruns layers in the backward pass, outside the context: they must draw the same masks."""
    model = tiny_ce.model
    model.train()
    with gradient_checkpointing(model), fast(model):
        assert not any("forward" in vars(m) for m in model.modules())
    with fast(model):
        assert any("forward" in vars(m) for m in model.modules())


HEAP_PROBE = """
import ctypes, ctypes.util, sys
from pyterrier_marginkd import unmap_large_blocks
from pyterrier_marginkd.training.checkpoints import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "unmap":
    unmap_large_blocks(4)
size = 100 * 2**20  # above any mmap threshold glibc adapts to
base = rss()
with keep_freed_memory() as kept:
    mapped = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    from_heap = libc.mallinfo2().hblkhd == mapped
    libc.free(block)
    still_held = rss() - base > size // 2
handed_back = rss() - base < size // 2
block = libc.malloc(size)
mapped_again = libc.mallinfo2().hblkhd >= size
libc.free(block)
print(kept, from_heap, still_held, handed_back, mapped_again)
"""


def test_training_keeps_freed_blocks_in_the_heap_and_hands_them_back_after():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33")
    out = {mode: subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True,
                                check=True).stdout.split() for mode in ("default", "unmap")}
    # a 100 MiB block comes from the heap and stays there while training; afterwards the heap is trimmed and large
    # blocks are mapped again
    assert out["default"] == ["True", "True", "True", "True", "True"]
    # after unmap_large_blocks (low memory asked for) nothing changes: the block is mapped and handed back at once
    assert out["unmap"] == ["False", "False", "False", "True", "True"]


def test_distiller_keeps_freed_memory_only_without_gradient_checkpointing(tiny_ce, small_results, tmp_path,
                                                                          monkeypatch):
    import contextlib

    import pyterrier_marginkd as mkd
    from pyterrier_marginkd.training import run

    entered = []

    @contextlib.contextmanager
    def spy():
        entered.append(1)
        yield True

    monkeypatch.setattr(run, "keep_freed_memory", spy)
    qrels = small_results[["qid", "docno"]].assign(label=[1, 0, 0, 1, 0, 0])
    for checkpointing, expected in ((False, [1]), (True, [1])):  # checkpointing: no second entry
        mkd.Distiller(tiny_ce, loss=mkd.losses.RankNet(), max_steps=1, batch_size=2, output_dir=tmp_path / str(
            checkpointing), gradient_checkpointing=checkpointing).fit(small_results, qrels)
        assert entered == expected


def _student(kind: str, folder):
    import pyterrier_marginkd as mkd

    torch.manual_seed(0)
    if kind == "DotEncoder":
        return mkd.DotEncoder.from_pretrained(folder, max_length=64, pooling="mean")
    if kind == "ColBERT":
        return mkd.ColBERT.from_pretrained(folder, max_length=64, dim=16)
    return mkd.PreTT.from_pretrained(folder, max_length=64, num_separate_layers=1, first_stage="zscore")


@pytest.mark.parametrize("kind", ["DotEncoder", "ColBERT", "PreTT"])
def test_encoder_students_train_through_the_fast_path_with_their_own_function(kind, tiny_bert_dir, small_results,
                                                                              monkeypatch):
    """DotEncoder, ColBERT and PreTT training passes run fast_training: the same scores and gradients as the eager
    Hugging Face forward pass drawing the same dropout masks in the same order."""
    from pyterrier_marginkd.models import two_sided

    student = _student(kind, tiny_bert_dir)
    queries, texts = small_results["query"].tolist(), small_results["text"].tolist()
    first_stage = [3.0, 2.0, 1.0, 1.0, 2.0, 3.0]
    encoder = student.model.encoder
    assert all(m.p > 0 for m in encoder.modules() if isinstance(m, torch.nn.Dropout))
    student.model.train()
    entered = []
    real = two_sided.fast_training

    def counting(model):
        entered.append(model)
        return real(model)

    with monkeypatch.context() as patch:  # the reference: eager attention, torch's dropout given our masks
        patch.setattr(two_sided, "fast_training", lambda model: contextlib.nullcontext())
        patch.setattr(torch.nn.functional, "dropout",
                      lambda x, p=0.5, training=True, inplace=False: fast_training._Dropout.apply(x, p)
                      if training and p > 0 else x)
        encoder.set_attn_implementation("eager")
        torch.manual_seed(3)
        expected = student.train_scores(queries, texts, first_stage=first_stage)
        expected.sum().backward()
    expected_grads = _grads(student.model)
    student.model.zero_grad()
    encoder.set_attn_implementation("sdpa")
    monkeypatch.setattr(two_sided, "fast_training", counting)
    torch.manual_seed(3)
    got = student.train_scores(queries, texts, first_stage=first_stage)
    got.sum().backward()
    assert entered == [student.model]  # one training pass, through the fast path
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert expected_grads and set(_grads(student.model)) == set(expected_grads)
    for name, grad in _grads(student.model).items():
        # summed over many tokens: a few embedding rows differ in float rounding (ColBERT: 3e-6)
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert not any("forward" in vars(m) for m in student.model.modules())  # every patch undone
    torch.manual_seed(4)
    assert not torch.allclose(student.train_scores(queries, texts, first_stage=first_stage), got)  # dropout is on
    with torch.no_grad():  # scoring never takes the training path
        entered.clear()
        student.model.eval()
        student.train_scores(queries, texts, first_stage=first_stage)
        assert entered == []


def test_tk_trains_through_the_fast_path_with_its_own_function(tiny_bert_dir, small_results, monkeypatch):
    """TK's transformer layers (batch-first nn.MultiheadAttention, nn.Dropout) under fast_training: the same scores
    and gradients as torch's own layers drawing the same dropout masks in the same order."""
    import pyterrier_marginkd as mkd
    from pyterrier_marginkd.models import two_sided

    torch.manual_seed(0)
    student = mkd.TK.from_pretrained(tiny_bert_dir, max_length=64, first_stage="zscore")
    queries, texts = small_results["query"].tolist(), small_results["text"].tolist()
    first_stage = [3.0, 2.0, 1.0, 1.0, 2.0, 3.0]
    attentions = [m for m in student.model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attentions and all(fast_training.is_plain_self_attention(m) and m.dropout > 0 for m in attentions)
    student.model.train()
    own = torch.nn.MultiheadAttention.forward
    with monkeypatch.context() as patch:  # the reference: torch's layers, their dropout given our masks
        patch.setattr(two_sided, "fast_training", lambda model: contextlib.nullcontext())
        patch.setattr(torch.nn.functional, "dropout",
                      lambda x, p=0.5, training=True, inplace=False: fast_training._Dropout.apply(x, p)
                      if training and p > 0 else x)
        # with its weights asked for, torch's attention drops probabilities through F.dropout (not inside SDPA)
        patch.setattr(torch.nn.MultiheadAttention, "forward",
                      lambda self, *args, **kwargs: own(self, *args, **{**kwargs, "need_weights": True}))
        torch.manual_seed(3)
        expected = student.train_scores(queries, texts, first_stage=first_stage)
        expected.sum().backward()
    expected_grads = _grads(student.model)
    student.model.zero_grad()
    entered = []
    real = two_sided.fast_training
    monkeypatch.setattr(two_sided, "fast_training", lambda model: entered.append(model) or real(model))
    calls = []
    real_attention = fast_training.multihead_self_attention
    monkeypatch.setattr(fast_training, "multihead_self_attention",
                        lambda *args, **kwargs: calls.append(1) or real_attention(*args, **kwargs))
    torch.manual_seed(3)
    got = student.train_scores(queries, texts, first_stage=first_stage)
    got.sum().backward()
    assert entered == [student.model] and len(calls) == 2 * len(attentions)  # queries and documents, every layer
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert expected_grads and set(_grads(student.model)) == set(expected_grads)
    for name, grad in _grads(student.model).items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert not any("forward" in vars(m) for m in student.model.modules())  # every patch undone
    # scoring (no gradients) never enters the fast path
    student.model.eval()
    with torch.no_grad():
        student.train_scores(queries, texts, first_stage=first_stage)
    assert entered == [student.model]


def test_multihead_self_attention_equals_torchs_without_dropout_and_defers_other_calls():
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(16, 4, dropout=0.0, batch_first=True)
    x = torch.randn(3, 5, 16)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] + [True] * 4])
    expected = attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]
    got, weights = fast_training.multihead_self_attention(attention, x, x, x, key_padding_mask=padding,
                                                          need_weights=False)
    assert weights is None
    torch.testing.assert_close(got, expected)
    additive = torch.zeros(padding.shape).masked_fill(padding, float("-inf"))
    torch.testing.assert_close(fast_training.multihead_self_attention(attention, x, x, x, key_padding_mask=additive,
                                                                      need_weights=False)[0], expected)
    # attention weights asked for, or cross-attention: the module's own forward pass
    own = attention(x, x, x, need_weights=True)
    deferred = fast_training.multihead_self_attention(attention, x, x, x)
    torch.testing.assert_close(deferred[1], own[1])
    y = torch.randn(3, 2, 16)
    torch.testing.assert_close(fast_training.multihead_self_attention(attention, y, x, x, need_weights=False)[0],
                               attention(y, x, x, need_weights=False)[0])
    assert not fast_training.is_plain_self_attention(torch.nn.MultiheadAttention(16, 4))  # not batch-first
