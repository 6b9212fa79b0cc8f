"""Faster CPU training steps for BERT-like encoders — the same function, the same dropout distribution.

On the CPU, torch draws dropout masks one number at a time from a single Mersenne Twister (``bernoulli_``) and
sentence-transformers' models train through the same kernels: the attention-probability masks alone, [pairs, heads,
length, length] per layer, took about 15% of a 6-layer MiniLM cross-encoder's training step on 2 cores, more than
the attention's matrix products (benchmarks/train_speed.py). Here the masks come from one PCG64 stream per torch
thread, filled in parallel (seeded from torch's generator, so ``torch.manual_seed`` and a resumed run's saved random
state still fix them), and the attention applies its mask to the probabilities directly, without a float noise
tensor. Each element is dropped with probability ``p`` (at the float32 resolution of torch's own uniform draws)
and kept ones are scaled by ``1 / (1 - p)``, as ``nn.Dropout`` does.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

#: below this many elements one stream fills the mask (threads would cost more than they save)
_PARALLEL_FROM = 2**18

_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="marginkd-dropout")
    return _pool


def _forget_pool() -> None:  # a forked child has the executor object but not its threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def dropped(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A boolean mask of ``shape``, True with probability ``p`` independently per element (the elements dropout
    zeroes), drawn from parallel PCG64 streams seeded from torch's default generator."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    size = math.prod(shape)
    seed = int(torch.randint(0, 2**63 - 1, (1,)))
    streams = max(1, min(torch.get_num_threads(), size // _PARALLEL_FROM))
    generators = [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(streams)]
    uniform = np.empty(size, dtype=np.float32)
    parts = np.array_split(uniform, streams)
    if streams == 1:
        generators[0].random(out=uniform, dtype=np.float32)
    else:  # numpy fills without the GIL, so the streams run side by side
        list(_threads().map(lambda gp: gp[0].random(out=gp[1], dtype=np.float32), zip(generators, parts)))
    return torch.from_numpy(uniform < p).view(tuple(shape))


class _Dropout(torch.autograd.Function):
    """Inverted dropout with a stored boolean mask (a byte per element, as torch's own)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        drop = dropped(x.shape, p)
        ctx.save_for_backward(drop)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(drop, 0.0, x * ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (drop,) = ctx.saved_tensors
        return torch.where(drop, 0.0, grad * ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``nn.functional.dropout`` with masks from :func:`dropped` for CPU tensors (elsewhere torch's own)."""
    if not training or p == 0 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    return _Dropout.apply(x, p)


def _dropout_forward(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    return dropout(x, module.p, module.training)


def self_attention(module: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   first_only: bool = False, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A BERT self-attention (``query``/``key``/``value``, ``scaling``, ``dropout``) in training: softmax of the
    scaled products (plus the boolean or additive mask), the kept probabilities scaled by ``1 / (1 - p)``, times the
    values. ``first_only``: the output for the first position alone (keys and values still from every position)."""
    batch, heads, size = hidden_states.shape[0], module.num_attention_heads, module.attention_head_size

    def split_heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, size).transpose(1, 2)

    query = split_heads(module.query(hidden_states[:, :1] if first_only else hidden_states))
    key, value = split_heads(module.key(hidden_states)), split_heads(module.value(hidden_states))
    if attention_mask is not None and first_only:  # [batch, 1, queries, keys]
        attention_mask = attention_mask[:, :, :1]
    p = module.dropout.p if module.training else 0.0
    out = _attend(query, key, value, attention_mask, p, module.scaling, own_masks=not first_only)
    return out.transpose(1, 2).reshape(batch, -1, heads * size), None


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, p: float,
            scale: float, own_masks: bool = True) -> torch.Tensor:
    """Attention of ``[batch, heads, length, size]`` heads: softmax of the scaled products plus ``mask`` (boolean,
    True: may attend, or additive; broadcast to [batch, heads, queries, keys]), the probabilities dropped with
    probability ``p`` by a :func:`dropped` mask and the kept ones scaled by ``1 / (1 - p)``, times the values. Without
    dropout, off the CPU or without ``own_masks``: torch's scaled_dot_product_attention."""
    if p == 0 or not own_masks or query.device.type != "cpu":
        return nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=p, scale=scale)
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=scores.dtype).masked_fill_(~mask, float("-inf"))
        scores += mask  # in place: the product's backward does not read its output
    probs = torch.where(dropped(scores.shape, p), 0.0, torch.softmax(scores, dim=-1))
    return torch.matmul(probs, value).mul_(1.0 / (1.0 - p))


def is_plain_self_attention(module: nn.Module) -> bool:
    """Whether :func:`multihead_self_attention` can run ``module``: a batch-first ``nn.MultiheadAttention`` with one
    input projection for query, key and value, and no added key/value biases or zero attention (TK's layers)."""
    return (isinstance(module, nn.MultiheadAttention) and module.batch_first and module._qkv_same_embed_dim
            and module.in_proj_weight is not None and module.bias_k is None and not module.add_zero_attn)


def multihead_self_attention(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                             need_weights: bool = True, attn_mask: torch.Tensor | None = None,
                             average_attn_weights: bool = True, is_causal: bool = False) -> tuple[torch.Tensor, None]:
    """``module``'s forward pass (:func:`is_plain_self_attention`) for self-attention in training, its dropout
    applied to the attention probabilities with a mask from :func:`dropped` instead of torch's; any other call
    (attention weights asked for, an attention mask, cross-attention) runs the module's own."""
    if need_weights or attn_mask is not None or is_causal or not (query is key is value):
        return nn.MultiheadAttention.forward(module, query, key, value, key_padding_mask=key_padding_mask,
                                             need_weights=need_weights, attn_mask=attn_mask,
                                             average_attn_weights=average_attn_weights, is_causal=is_causal)
    batch, length, width = query.shape
    heads = module.num_heads
    size = width // heads
    q, k, v = (x.view(batch, length, heads, size).transpose(1, 2)
               for x in nn.functional.linear(query, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1))
    mask = None
    if key_padding_mask is not None:  # [batch, keys]: True or -inf where a key is padding
        mask = key_padding_mask.view(batch, 1, 1, length)
        mask = ~mask if mask.dtype == torch.bool else mask.to(q.dtype)
    p = module.dropout if module.training else 0.0
    out = _attend(q, k, v, mask, p, size ** -0.5)
    return module.out_proj(out.transpose(1, 2).reshape(batch, length, width)), None


#: model types whose layers are BERT's (self-attention with query/key/value, scaling and dropout)
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


def is_bert_self_attention(module: nn.Module) -> bool:
    """Whether :func:`self_attention` can run ``module`` (it has BERT's projections, head sizes, scaling and
    dropout)."""
    return all(hasattr(module, n) for n in ("query", "key", "value", "num_attention_heads", "attention_head_size",
                                            "scaling", "dropout"))


def _bert_attentions(model: nn.Module) -> list[nn.Module]:
    """The BERT-like self-attentions of ``model``'s Hugging Face models (``model`` itself or any inside it: the
    encoder of a student's scoring module) that run the standard attention."""
    found: dict[int, nn.Module] = {}
    for sub in model.modules():
        if not isinstance(sub, PreTrainedModel):
            continue
        config = sub.config
        if getattr(config, "model_type", None) not in BERT_LIKE or getattr(config, "is_decoder", False) \
                or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
            continue
        found.update((id(m), m) for m in sub.modules() if is_bert_self_attention(m))
    return list(found.values())


def recomputes_layers(model: nn.Module) -> bool:
    """Whether ``model`` has gradient (activation) checkpointing on: its backward pass reruns layers' forwards."""
    if hasattr(type(model), "is_activation_checkpointing"):  # transformers >= 5 (the old name is deprecated)
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


@contextlib.contextmanager
def fast_training(model: nn.Module) -> Iterator[None]:
    """While entered, ``model``'s dropout draws its masks with :func:`dropped` (CPU tensors), its BERT-like
    self-attention runs :func:`self_attention` and its batch-first ``nn.MultiheadAttention`` (TK)
    :func:`multihead_self_attention`: scores and gradients are the model's own function. A no-op under
    gradient checkpointing of ``model`` or of any model inside it, which recomputes layers in the backward pass,
    outside this context (other masks)."""
    if any(recomputes_layers(m) for m in model.modules()):
        yield
        return
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            if type(module) is nn.Dropout:
                module.forward = functools.partial(_dropout_forward, module)
                patched.append(module)
        for attention in _bert_attentions(model):
            attention.forward = functools.partial(self_attention, attention)
            patched.append(attention)
        for attention in [m for m in model.modules() if is_plain_self_attention(m)]:
            attention.forward = functools.partial(multihead_self_attention, attention)
            patched.append(attention)
        yield
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
