"""The base shared by every neural re-ranker: validation, length-sorted batching, inference mode, progress."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt
import torch

from pyterrier_marginkd import _files
from pyterrier_marginkd.data.frames import (
    RecordsTransformer,
    add_scores,
    check_id_columns,
    check_text_column,
    validate_results,
)
from pyterrier_marginkd.models import io
from pyterrier_marginkd.models.quantize import (
    QUANTIZATIONS,
    check_quantize,
    dequantized,
    is_quantized,
    num_int8_weights,
    quantize_int8,
)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device to use: the one asked for, else CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)



class NeuralScorer(RecordsTransformer, pt.Transformer):
    """Base of every neural re-ranker: ``qid, query, docno, text`` in, the same rows with ``score`` and ``rank`` out.

    Subclasses turn (query, text) pairs into per-pair items (``_prepare``), collate a batch of items into tensors
    (``_collate``) and score a batch (``_forward``). This base sorts pairs by length so that each batch pads little,
    runs under ``torch.inference_mode()``, shows a progress bar when ``verbose`` and keeps row order.
    ``quantize="int8"`` (or ``quantize("int8")``) makes it an int8 model for CPU inference.
    """

    schematic_label = "NeuralScorer"
    #: pairs tokenised and length-sorted together; bounds memory when scoring millions of pairs
    chunk_size = 16384

    def __init__(self, *, batch_size: int = 32, text_field: str = "text", verbose: bool = False,
                 device: str | torch.device | None = None, quantize: str | None = None):
        self.batch_size = batch_size
        self.text_field = text_field
        self.verbose = verbose
        self.device = device
        self._device = resolve_device(device)
        # under the private name (pt.inspect reads it there): the public one is the method quantize()
        self._quantize = check_quantize(quantize)
        if self._quantize is not None:
            self._check_cpu(device)
            self._device = torch.device("cpu")

    # --- what subclasses provide -------------------------------------------------------------------
    model: torch.nn.Module
    #: the architecture's name in marginkd.json (a key of pyterrier_marginkd.models.io.ARCHITECTURES)
    ARCHITECTURE = ""

    def _save_files(self, folder: Path) -> None:
        """Write the model's own files (weights, tokenizer) into ``folder``."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        """The settings that ``marginkd.json`` keeps (besides the architecture and the quantization)."""
        raise NotImplementedError

    def _prepare(self, queries: Sequence[str], texts: Sequence[str]) -> list[Any]:
        raise NotImplementedError

    @staticmethod
    def _item_length(item: Any) -> int:
        raise NotImplementedError

    def _collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # --- PyTerrier -----------------------------------------------------------------------------------
    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Score each (query, text) row; return the rows with ``score`` and ``rank`` (other columns kept)."""
        validate_results(inp, self.text_field, self)
        if len(inp) == 0:
            return add_scores(inp, np.zeros(0))
        check_id_columns(inp)
        check_text_column(inp, "query")
        check_text_column(inp, self.text_field)
        scores = self.score_pairs(inp["query"].tolist(), inp[self.text_field].tolist())
        return add_scores(inp, scores)

    def schematic(self, *, input_columns=None):
        return {"label": self.schematic_label, "help_url": None}

    # --- saving and loading --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> NeuralScorer:
        """Load from a hub id or a local folder: one written by ``save_pretrained``, or a Hugging Face checkpoint to
        start from."""
        return cls(name_or_path, **kwargs)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a folder that ``from_pretrained`` and ``pyterrier_marginkd.load`` load to the same scores: the
        model's files and our config (``marginkd.json``), atomically (all or nothing); an int8 model saves its
        dequantized weights with ``quantize: int8``."""
        with _files.atomic_dir(path) as tmp, self._fp32_model():
            self._save_files(tmp)
            io.write_config(tmp, self.ARCHITECTURE, {**self._config(), "quantize": self._quantize})

    # --- scoring -------------------------------------------------------------------------------------
    def score_pairs(self, queries: Sequence[str], texts: Sequence[str], *, batch_size: int | None = None,
                    desc: str | None = None) -> np.ndarray:
        """Scores of (query, text) pairs as a float64 array in input order, batched by length.

        Pairs are tokenised and sorted by length in chunks of ``chunk_size`` pairs, so memory stays bounded however
        many pairs are scored.
        """
        if len(queries) != len(texts):
            raise ValueError(f"got {len(queries)} queries but {len(texts)} texts; they must pair up one to one")
        batch_size = batch_size or self.batch_size
        scores = np.empty(len(queries), dtype=np.float64)
        if len(queries) == 0:
            return scores
        bar = pt.tqdm(total=len(queries), desc=desc or type(self).__name__, unit="pair", disable=not self.verbose)
        try:
            for chunk_start in range(0, len(queries), self.chunk_size):
                chunk_end = min(chunk_start + self.chunk_size, len(queries))
                items = self._prepare(queries[chunk_start:chunk_end], texts[chunk_start:chunk_end])
                self._run_by_length(items, [self._item_length(it) for it in items], self._collate, self._forward,
                                    scores[chunk_start:chunk_end], batch_size, bar.update)
        finally:
            bar.close()
        return scores

    def _run_by_length(self, items: Sequence[Any], lengths: Sequence[int],
                       collate: Callable[[list[Any]], dict[str, torch.Tensor]],
                       forward: Callable[[dict[str, torch.Tensor]], torch.Tensor], out: np.ndarray, batch_size: int,
                       done: Callable[[int], Any] | None = None) -> None:
        """The batching loop: ``forward`` over batches of ``items`` of about one length (longest first, so each
        batch pads little), in eval and inference mode; each batch's outputs go to ``out`` at its items' positions
        and ``done(number of items)`` is told of each batch."""
        order = np.argsort([-n for n in lengths], kind="stable")
        with self.eval_mode(), torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                out[idx] = forward(self._to_device(collate([items[i] for i in idx]))).float().cpu().numpy()
                if done is not None:
                    done(len(idx))

    def train_scores(self, queries: Sequence[str], texts: Sequence[str],
                     first_stage: Sequence[float] | None = None) -> torch.Tensor:
        """Differentiable scores of (query, text) pairs, shape ``[len(queries)]`` (for training).
        (``first_stage`` is for students that mix in the first stage's score; this one does not.)"""
        return self._forward(self.batch(queries, texts))

    # --- int8 ----------------------------------------------------------------------------------------------
    @property
    def quantization(self) -> str | None:
        """``"int8"`` for a quantized model, None for fp32."""
        return self._quantize

    def quantize(self, mode: str = "int8") -> NeuralScorer:
        """Make this an int8 model for CPU inference, in place; returns self.

        The linear layers of the transformer layers (attention and feed-forward) get int8 weights (one scale per
        output row) and quantize their inputs on the fly (PyTorch dynamic quantization); embeddings, attention
        scores, norms and heads stay fp32. Scores change slightly (see the README for the measured effect); an int8
        model cannot be trained, and ``save_pretrained`` writes its dequantized weights with ``quantize: int8`` in
        marginkd.json, so that loading quantizes it again to the same int8 weights.
        """
        if check_quantize(mode) is None:
            raise ValueError(f"quantize() takes one of {list(QUANTIZATIONS)}, got None; an int8 model cannot be "
                             "turned back into fp32 (load the fp32 weights again)")
        if self._device.type != "cpu":
            self._check_cpu(self.device)
            self._device = torch.device("cpu")  # the device was picked for the user: take the CPU
            self.model.to(self._device)
        if not is_quantized(self.model) and quantize_int8(self._quantized_part()) == 0:
            raise ValueError(f"found no transformer layers to quantize in {self!r} (int8 quantization looks for the "
                             "linear layers in an nn.ModuleList named 'layer' or 'layers')")
        self._quantize = mode
        self.model.eval()
        return self

    def _quantized_part(self) -> torch.nn.Module:
        """The part of ``self.model`` that ``quantize`` makes int8 (all of it; a subclass may keep a part fp32)."""
        return self.model

    @staticmethod
    def _check_cpu(device: str | torch.device | None) -> None:
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"int8 models run on the CPU only, not on {device!r} (pass device='cpu' or None)")

    def _apply_saved_quantization(self) -> None:
        """Quantize as asked when the model was built, else as saved in its folder (subclasses call this once
        ``self.model`` exists)."""
        if self._quantize is None and Path(self.model_name).is_dir():
            self._quantize = check_quantize((io.read_config(self.model_name) or {}).get("quantize"))
        if self._quantize is not None:
            self.quantize(self._quantize)

    def _fp32_model(self):
        """Context manager: ``self.model`` with fp32 (dequantized) weights in place of int8 ones, for saving."""
        return dequantized(self.model)

    @property
    def torch_device(self) -> torch.device:
        """The device the model runs on (``device`` keeps the one asked for; None: picked when it was built)."""
        return self._device

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """The model in eval mode (dropout off) inside the block, then back in the mode it was in."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def batch(self, queries: Sequence[str], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The tensors of (query, text) pairs as the model's forward pass takes them, on its device."""
        return self._to_device(self._collate(self._prepare(queries, texts)))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(self._device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()}

    def to(self, device: str | torch.device) -> NeuralScorer:
        """Move the model to ``device``; returns self."""
        if self._quantize is not None:
            self._check_cpu(device)
        self.device = device
        self._device = torch.device(device)
        self.model.to(self._device)
        return self

    def num_parameters(self) -> int:
        """Number of parameters of the model (int8 weights included)."""
        return sum(p.numel() for p in self.model.parameters()) + num_int8_weights(self.model)
