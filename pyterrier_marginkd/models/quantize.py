"""int8 inference on the CPU: dynamic quantization of the linear layers inside a model's transformer layers.

Each ``nn.Linear`` of the attention and feed-forward blocks (over 90% of a BERT layer's work) becomes a PyTorch
dynamically quantized linear layer: int8 weights with one symmetric scale per output row (range -127..127),
activations quantized per batch as they arrive, int8 GEMM (fbgemm) and an fp32 result. Embeddings, layer norms,
attention scores, pooling, projections and score heads stay fp32.

The scales are chosen so that quantizing the dequantized weights again gives the same int8 weights: a quantized
model is saved as its dequantized fp32 weights (still a plain Hugging Face folder) and is quantized again on load.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

#: the ``quantize=`` settings a scorer accepts (besides None: fp32)
QUANTIZATIONS = ("int8",)
#: the largest int8 magnitude used; symmetric, so that re-quantizing dequantized weights is exact
_INT8_MAX = 127


def check_quantize(value: str | None) -> str | None:
    """``value`` when it is a known quantization (or None), else a ValueError naming the choices."""
    if value is not None and value not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)} or None (fp32), got {value!r}")
    return value


def _int8_linear_class() -> type:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.10 warns that eager-mode quantization moves to torchao
        from torch.ao.nn.quantized.dynamic import Linear
    return Linear


def _transformer_layers(model: nn.Module) -> Iterator[nn.Module]:
    """The model's transformer layers: the members of every ``nn.ModuleList`` named ``layer``/``layers`` (BERT,
    RoBERTa, ELECTRA, DistilBERT, DeBERTa encoders; ``nn.TransformerEncoder``)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layer", "layers"):
            yield from module


def _to_int8(linear: nn.Linear) -> nn.Module:
    weight = linear.weight.detach().float().cpu()
    scales = (weight.abs().amax(dim=1) / _INT8_MAX).clamp(min=1e-12).double()
    zero_points = torch.zeros(len(scales), dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch >= 2.13 (still supported)
        qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        module = _int8_linear_class()(linear.in_features, linear.out_features, dtype=torch.qint8)
        bias = linear.bias.detach().float().cpu() if linear.bias is not None else None
        module.set_weight_bias(qweight, bias)
    return module


def quantize_int8(model: nn.Module) -> int:
    """Replace (in place) every ``nn.Linear`` inside the model's transformer layers by an int8 dynamically quantized
    linear layer; returns how many were replaced. The model must be on the CPU."""
    count = 0
    for layer in list(_transformer_layers(model)):
        replaced = [(parent, name, child) for parent in layer.modules() for name, child in parent.named_children()
                    if type(child) is nn.Linear]  # not subclasses: MultiheadAttention reads its out_proj's weight
        for parent, name, child in replaced:
            setattr(parent, name, _to_int8(child))
        if replaced and isinstance(layer, nn.TransformerEncoderLayer):
            # its fused fast path reads fp32 weight tensors; with int8 feed-forward layers it takes the module path
            layer.activation_relu_or_gelu = 0
        count += len(replaced)
    return count


def _int8_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    linear_int8 = _int8_linear_class()
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, linear_int8)]


def is_quantized(model: nn.Module) -> bool:
    """Whether the model holds int8 linear layers."""
    return bool(_int8_modules(model))


def num_int8_weights(model: nn.Module) -> int:
    """How many weights (and biases) the model holds in its int8 linear layers (``parameters()`` omits them)."""
    total = 0
    for _, _, module in _int8_modules(model):
        weight, bias = module._weight_bias()
        total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total


@contextlib.contextmanager
def dequantized(model: nn.Module) -> Iterator[nn.Module]:
    """The model with each int8 linear layer replaced, for the duration of the block, by an fp32 ``nn.Linear`` holding
    its dequantized weights (for saving, or digesting the weights); the int8 layers are put back afterwards."""
    swapped = _int8_modules(model)
    for parent, name, module in swapped:
        weight, bias = module._weight_bias()
        linear = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.dequantize())
            if bias is not None:
                linear.bias.copy_(bias)
        setattr(parent, name, linear.requires_grad_(False))
    try:
        yield model
    finally:
        for parent, name, module in swapped:
            setattr(parent, name, module)
