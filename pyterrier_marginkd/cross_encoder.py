"""BERT-CAT: query and passage concatenated into one transformer with a one-output score head."""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from pyterrier_marginkd import io
from pyterrier_marginkd._hf import TOKENIZER_FILES, TextTokenizer, lean_inference, load_weights, pad, truncate_layers
from pyterrier_marginkd._scorer import NeuralScorer


class CrossEncoder(NeuralScorer):
    """BERT-CAT re-ranker: ``score = head([CLS] query [SEP] text [SEP])``; a teacher or a student.

    Loads any Hugging Face sequence-classification or plain encoder checkpoint (a 1-output head is added when
    absent). ``num_layers=k`` keeps only the first k transformer layers — the usual way to make a small student
    from a big checkpoint. Saved folders are plain Hugging Face models too (``AutoModelForSequenceClassification``
    and sentence-transformers' ``CrossEncoder`` load them and give the same scores). A folder saved by
    pyterrier-marginkd loads from safetensors only, and a missing, damaged or mismatched file is a ValueError naming it.
    """

    ARCHITECTURE = "cross_encoder"
    schematic_label = "CrossEncoder"

    def __init__(self, model_name: str | os.PathLike, *, num_layers: int | None = None, max_length: int | None = None,
                 batch_size: int = 32, text_field: str = "text", verbose: bool = False,
                 device: str | torch.device | None = None, **model_kwargs: Any):
        super().__init__(batch_size=batch_size, text_field=text_field, verbose=verbose, device=device)
        self.model_name = str(model_name)
        saved = io.read_config(model_name) if Path(model_name).is_dir() else None
        if saved is not None and saved["architecture"] != self.ARCHITECTURE:
            raise ValueError(f"{self.model_name!r} holds a {saved['architecture']!r} model, not a cross-encoder; "
                             "load it with pyterrier_marginkd.load(path)")
        if saved is not None:
            io.check_files(model_name, ["config.json", "model.safetensors", TOKENIZER_FILES])
        self.max_length = max_length or (saved or {}).get("max_length", 256)
        config = AutoConfig.from_pretrained(model_name, **model_kwargs)
        config.num_labels = 1
        config.problem_type = "regression"
        self.model = load_weights(AutoModelForSequenceClassification, model_name, config, strict=saved is not None,
                                  **model_kwargs)
        if num_layers is not None:
            truncate_layers(self.model, num_layers)
        self.num_layers = num_layers
        self.tokenizer = AutoTokenizer.from_pretrained(model_name, **model_kwargs)
        self._tok = TextTokenizer(self.tokenizer, self.max_length)
        self._use_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        self.model.to(self._device).eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> CrossEncoder:
        """Load a cross-encoder from a hub id or a local folder (ours or any Hugging Face checkpoint)."""
        return cls(name_or_path, **kwargs)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a folder that ``CrossEncoder.from_pretrained``, ``pyterrier_marginkd.load``, transformers and
        sentence-transformers all load to identical scores (written atomically: all or nothing)."""
        with io.atomic_dir(path) as tmp:
            self.model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            io.write_config(tmp, self.ARCHITECTURE, {"max_length": self.max_length})
            # sentence-transformers reads the maximum length from here
            (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": self.max_length}))

    def _prepare(self, queries: Sequence[str], texts: Sequence[str]) -> list:
        return self._tok.pairs(queries, texts)

    @staticmethod
    def _item_length(item) -> int:
        return len(item[0])

    def _collate(self, items):
        return pad(items, self._tok.pad_id)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.model.training:
            return self.model_outputs(batch).logits[:, 0]
        with lean_inference(self.model):
            return self.model_outputs(batch).logits[:, 0]

    def model_outputs(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """The Hugging Face model's output for a collated batch (``output_hidden_states=True`` etc. pass through)."""
        if not self._use_token_types:
            batch = {k: v for k, v in batch.items() if k != "token_type_ids"}
        return self.model(**batch, **kwargs)

    def __repr__(self) -> str:
        extra = f", num_layers={self.num_layers}" if self.num_layers is not None else ""
        return f"CrossEncoder({self.model_name!r}{extra})"
