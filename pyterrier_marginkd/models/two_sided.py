"""What the two-sided students share (DotEncoder, ColBERT, PreTT, TK): batches of distinct queries and documents,
settings, repr; and for those built on a Hugging Face encoder, loading and saving."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from pyterrier_marginkd.models import io
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.fast_training import fast_training
from pyterrier_marginkd.models.first_stage import FirstStageMix, FirstStageMixing
from pyterrier_marginkd.models.hf import TOKENIZER_FILES, TextTokenizer, load_hf_model, pad, truncate_layers

Tokens = tuple[list[int], list[int]]  # (input_ids, token_type_ids) of one text


class TwoSidedScorer(FirstStageMixing, NeuralScorer):
    """Base of the students that read query and document as two sequences: ``_prepare`` tokenises each side,
    ``_collate`` pads each distinct query and document once, ``self.model(batch)`` scores the pairs."""

    #: the architecture's own settings with their defaults (saved in marginkd.json; shown by repr when not default)
    DEFAULTS: dict[str, Any] = {}

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.DEFAULTS}

    def _check_first_stage(self) -> None:
        super()._check_first_stage()
        if self.first_stage is not None and "first_stage" not in self.DEFAULTS:
            raise ValueError(f"{type(self).__name__} has no first-stage mixing; DotEncoder, ColBERT, PreTT, TK and "
                             "CrossEncoder have")

    def _prepare(self, queries: Sequence[str], texts: Sequence[str]) -> list[tuple[Tokens, Tokens]]:
        return list(zip(self._query_sequences(queries), self._doc_sequences(texts)))

    def _query_sequences(self, queries: Sequence[str]) -> list[Tokens]:
        return self._tok.singles(queries)

    def _doc_sequences(self, texts: Sequence[str]) -> list[Tokens]:
        return self._tok.singles(texts)

    @staticmethod
    def _item_length(item: tuple[Tokens, Tokens]) -> int:
        return len(item[0][0]) + len(item[1][0])

    def _collate(self, items: Sequence[tuple[Tokens, Tokens]]) -> dict[str, torch.Tensor]:
        return two_sided_batch(items, self._tok.pad_id)

    def training_pass(self) -> contextlib.AbstractContextManager:
        """The context of a training forward pass: :func:`fast_training` (the CPU shortcuts of
        :mod:`~pyterrier_marginkd.models.fast_training`: parallel dropout masks, attention without a noise tensor;
        the scores and gradients of the model's own forward pass given the same masks) while the model trains with
        gradients, nothing otherwise."""
        if self.model.training and torch.is_grad_enabled():
            return fast_training(self.model)
        return contextlib.nullcontext()

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.training_pass():
            return self.model(batch)

    def _repr_extra(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        shown = [repr(self.model_name)] + [f"{name}={getattr(self, name)!r}" for name, default in
                                           self.DEFAULTS.items() if getattr(self, name) != default]
        quantized = [f"quantize={self._quantize!r}"] if self._quantize is not None else []
        return f"{type(self).__name__}({', '.join(shown + self._repr_extra() + quantized)})"


class EncoderStudent(TwoSidedScorer):
    """Base of the students on a Hugging Face encoder: ``self.model`` is an ``nn.Module`` whose child ``encoder``
    (and any other ``PreTrainedModel`` child) is saved as a Hugging Face model, its other weights in
    ``marginkd.safetensors``, the ``DEFAULTS`` settings (which shape the weights) in ``marginkd.json``.

    Training passes run the CPU shortcuts of :mod:`~pyterrier_marginkd.models.fast_training`, as every two-sided
    scorer's do (:meth:`TwoSidedScorer.training_pass`).
    """

    def _load_encoder(self, model_name: str | os.PathLike, *, num_layers: int | Sequence[int] | None,
                      max_length: int | None,
                      settings: dict[str, Any], model_kwargs: dict[str, Any]) -> tuple[PreTrainedModel, dict, bool]:
        """Set model_name, num_layers, max_length, tokenizer; return the encoder, the settings and whether the
        folder is one we saved (then its extra weights load with ``_finish``)."""
        self.model_name = io.checked_name(model_name)
        resolved, ours = io.resolve_settings(model_name, self.ARCHITECTURE, {"max_length": max_length, **settings},
                                             {"max_length": 256, **self.DEFAULTS}, fixed=tuple(self.DEFAULTS))
        self.max_length = resolved.pop("max_length")
        if ours:
            io.check_files(model_name, ["config.json", "model.safetensors", io.WEIGHTS_NAME, TOKENIZER_FILES])
        encoder = load_hf_model(AutoModel, model_name, None, strict=ours, **model_kwargs)
        if num_layers is not None:
            truncate_layers(encoder, num_layers)
        self.num_layers = num_layers
        self.tokenizer = AutoTokenizer.from_pretrained(model_name, **model_kwargs)
        self._tok = TextTokenizer(self.tokenizer, self.max_length)
        return encoder, resolved, ours

    def _finish(self, model: nn.Module, ours: bool) -> None:
        """Load the saved extra weights into ``model`` (when ours) and make it ``self.model`` on the device."""
        self._check_first_stage()
        if self.first_stage is not None:
            model.interpolation = FirstStageMix()
        if ours:
            weights = io.load_extra_weights(self.model_name)
            missing, unexpected = model.load_state_dict(weights, strict=False)
            missing = [k for k in missing if k.split(".")[0] not in _encoder_children(model)]
            if missing or unexpected:
                raise ValueError(f"{self.model_name!r}: {io.WEIGHTS_NAME} does not fit this {type(self).__name__} "
                                 f"(missing {missing}, unexpected {unexpected}); save the model again")
        self.model = model.to(self._device).eval()
        self._apply_saved_quantization()

    def _save_files(self, folder: Path) -> None:
        # the encoder(s) and tokenizer as Hugging Face files, the other weights as safetensors
        encoders = _encoder_children(self.model)
        for name, encoder in encoders.items():
            encoder.save_pretrained(folder if name == "encoder" else folder / name, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        io.save_extra_weights({k: v for k, v in self.model.state_dict().items() if k.split(".")[0] not in encoders},
                              folder)

    def _config(self) -> dict[str, Any]:
        return {"max_length": self.max_length, **self._settings()}

    def _repr_extra(self) -> list[str]:
        return [f"num_layers={self.num_layers}"] if self.num_layers is not None else []


def _encoder_children(model: nn.Module) -> dict[str, PreTrainedModel]:
    return {name: child for name, child in model.named_children() if isinstance(child, PreTrainedModel)}


def load_encoder(path: str | os.PathLike, **model_kwargs: Any) -> PreTrainedModel:
    """A Hugging Face encoder saved in ``path`` by pyterrier-marginkd (safetensors only, every weight checked)."""
    if not Path(path).is_dir():
        raise ValueError(f"{str(path)!r} is missing; the saved folder is damaged — save the model again")
    io.check_files(path, ["config.json", "model.safetensors"])
    return load_hf_model(AutoModel, path, None, strict=True, **model_kwargs)


def two_sided_batch(items: Sequence[tuple[Tokens, Tokens]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad each distinct query and document of the pairs once: ``query_*``/``doc_*`` tensors hold the distinct
    sequences, ``query_index``/``doc_index`` the row of each pair's query and document."""
    batch = {}
    for side, sequences in (("query", [q for q, _ in items]), ("doc", [d for _, d in items])):
        rows: dict[tuple, int] = {}
        index = [rows.setdefault((tuple(ids), tuple(types)), len(rows)) for ids, types in sequences]
        for key, value in pad(list(rows), pad_id).items():
            batch[f"{side}_{key}"] = value
        batch[f"{side}_index"] = torch.tensor(index, dtype=torch.long)
    return batch


@functools.lru_cache(maxsize=None)
def _takes_token_types(cls: type) -> bool:
    return "token_type_ids" in inspect.signature(cls.forward).parameters


def encode(encoder: PreTrainedModel, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
    """Last hidden states ``[rows, length, hidden]`` of the ``side`` ('query' or 'doc') sequences of a batch."""
    inputs = {"input_ids": batch[f"{side}_input_ids"], "attention_mask": batch[f"{side}_attention_mask"]}
    if _takes_token_types(type(encoder)):
        inputs["token_type_ids"] = batch[f"{side}_token_type_ids"]
    return encoder(**inputs).last_hidden_state
