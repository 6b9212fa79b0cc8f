"""BERT-CAT: query and passage concatenated into one transformer with a one-output score head."""
from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from pyterrier_marginkd.models import io
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.fast_training import fast_training
from pyterrier_marginkd.models.first_stage import FirstStageMix, FirstStageMixing
from pyterrier_marginkd.models.hf import (
    TOKENIZER_FILES,
    TextTokenizer,
    first_token_only,
    lean_inference,
    load_hf_model,
    pad,
    truncate_layers,
)


class CrossEncoder(FirstStageMixing, NeuralScorer):
    """BERT-CAT re-ranker: ``score = head([CLS] query [SEP] text [SEP])``; a teacher or a student.

    Loads any Hugging Face sequence-classification or plain encoder checkpoint as it is: a 1-output head scores with its
    logit (``cross-encoder/ms-marco-MiniLM-L12-v2``, ``BAAI/bge-reranker-base``); a 2-output head (monoBERT,
    monoELECTRA: not relevant, relevant) scores with ``logit[1] - logit[0]``, which ranks like softmax P(relevant); a
    plain encoder gets a new 1-output head. ``num_layers=k`` keeps only the first k transformer layers — the usual way
    to make a small student from a big checkpoint; a list of layer indices keeps those layers (``spread_layers(total,
    k)``: spread over the depth, the last one included). Saved folders are plain Hugging Face models too
    (``AutoModelForSequenceClassification`` and sentence-transformers' ``CrossEncoder`` load them and give the same
    logits; a 2-logit model keeps its head, recorded as ``"head": "two_logit"`` in marginkd.json). A folder saved by
    pyterrier-marginkd loads from safetensors only, and a missing, damaged or mismatched file is a ValueError naming it.
    A local path that does not exist is a FileNotFoundError naming it (it is not tried as a hub id).

    ``first_stage="zscore"`` (or ``"minmax"``) mixes in the incoming first-stage score, normalised per query:
    ``score = a * logit + b * normalised score``, ``a`` and ``b`` trained with the student (a new head then starts
    from the first stage's ranking instead of a random one) and saved in marginkd.json; the Hugging Face files hold
    the cross-encoder alone (its logits, without the mix).
    """

    ARCHITECTURE = "cross_encoder"
    schematic_label = "CrossEncoder"

    def __init__(self, model_name: str | os.PathLike, *, num_layers: int | Sequence[int] | None = None,
                 max_length: int | None = None,
                 batch_size: int = 32, text_field: str = "text", verbose: bool = False,
                 device: str | torch.device | None = None, quantize: str | None = None,
                 first_stage: str | None = None, **model_kwargs: Any):
        super().__init__(batch_size=batch_size, text_field=text_field, verbose=verbose, device=device,
                         quantize=quantize)
        self.model_name = io.checked_name(model_name)
        saved = io.read_config(model_name) if Path(model_name).is_dir() else None
        if saved is not None and saved["architecture"] != self.ARCHITECTURE:
            raise ValueError(f"{self.model_name!r} holds a {saved['architecture']!r} model, not a cross-encoder; "
                             "load it with pyterrier_marginkd.load(path)")
        if saved is not None:
            io.check_files(model_name, ["config.json", "model.safetensors", TOKENIZER_FILES])
        self.max_length = max_length or (saved or {}).get("max_length", 256)
        config = AutoConfig.from_pretrained(model_name, **model_kwargs)
        self.head = _head(self.model_name, config, saved)
        if self.head == "two_logit":
            config.num_labels = 2
        else:
            config.num_labels = 1
            config.problem_type = "regression"
        if saved is None and self.head == "two_logit" and not config.architectures:
            # a config that does not name its architecture says 2 labels by default: a trained 2-logit head, or a
            # plain encoder? The weights tell: a plain encoder has no head weights, and gets a new 1-output head
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                model_name, config=config, output_loading_info=True, **model_kwargs)
            if _new_head_weights(self.model, info):
                config = AutoConfig.from_pretrained(model_name, **model_kwargs)
                config.num_labels, config.problem_type, self.head = 1, "regression", "one_logit"
                self.model = AutoModelForSequenceClassification.from_pretrained(model_name, config=config,
                                                                                **model_kwargs)
        else:
            self.model = load_hf_model(AutoModelForSequenceClassification, model_name, config,
                                      strict=saved is not None, **model_kwargs)
        if num_layers is not None:
            truncate_layers(self.model, num_layers)
        self.num_layers = num_layers
        self._attach_first_stage(first_stage, saved)
        self.tokenizer = AutoTokenizer.from_pretrained(model_name, **model_kwargs)
        self._tok = TextTokenizer(self.tokenizer, self.max_length)
        self._use_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        self.model.to(self._device).eval()
        self._apply_saved_quantization()

    def _attach_first_stage(self, first_stage: str | None, saved: dict[str, Any] | None) -> None:
        saved_first_stage = (saved or {}).get("first_stage")
        settings, _ = io.resolve_settings(self.model_name, self.ARCHITECTURE, {"first_stage": first_stage},
                                          {"first_stage": None}, fixed=("first_stage",))
        self.first_stage = settings["first_stage"]
        self._check_first_stage()
        if self.first_stage is None:
            return
        self.model.interpolation = FirstStageMix()
        weights = (saved or {}).get("first_stage_weights")
        if saved_first_stage is not None:
            if (not isinstance(weights, list) or len(weights) != 2
                    or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights)):
                raise ValueError(f"{self.model_name!r}: {io.CONFIG_NAME} has first_stage={saved_first_stage!r} but "
                                 f"first_stage_weights={weights!r} (two finite numbers expected); save the model "
                                 "again")
            self.set_first_stage_weights(*weights)

    def _save_files(self, folder: Path) -> None:
        # a folder that transformers and sentence-transformers load to identical scores too: the first-stage mix
        # (two numbers, in marginkd.json) stays out of the Hugging Face weights
        self.model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
        mix = self.model._modules.pop("interpolation", None)
        try:
            self.model.save_pretrained(folder, safe_serialization=True)
        finally:
            if mix is not None:
                self.model.interpolation = mix
        # sentence-transformers (>= 5) truncates a plain Hugging Face folder at the tokenizer's model_max_length
        limit, self.tokenizer.model_max_length = self.tokenizer.model_max_length, self.max_length
        try:
            self.tokenizer.save_pretrained(folder)
        finally:
            self.tokenizer.model_max_length = limit
        # older sentence-transformers read the maximum length from here
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": self.max_length}))

    def _config(self) -> dict[str, Any]:
        mix = ({"first_stage": self.first_stage, "first_stage_weights": list(self.model.interpolation.weights())}
               if self.first_stage is not None else {})
        return {"max_length": self.max_length, "head": self.head, **mix}

    def _prepare(self, queries: Sequence[str], texts: Sequence[str]) -> list:
        return self._tok.pairs(queries, texts)

    @staticmethod
    def _item_length(item) -> int:
        return len(item[0])

    def _collate(self, items):
        return pad(items, self._tok.pad_id)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.model.training:  # the scores' function and gradients are those of the whole model
            with fast_training(self.model), first_token_only(self.model):
                return self.scores_from_logits(self.model_outputs(batch).logits)
        with lean_inference(self.model):
            return self.scores_from_logits(self.model_outputs(batch).logits)

    def scores_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The relevance score of each row of the head's logits ``[batch, 1 or 2]``: the logit of a 1-output head,
        ``logit[1] - logit[0]`` (relevant minus not relevant) of a 2-output head."""
        if self.head == "two_logit":
            return logits[:, 1] - logits[:, 0]
        return logits[:, 0]

    def model_outputs(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """The Hugging Face model's output for a collated batch (``output_hidden_states=True`` etc. pass through)."""
        if not self._use_token_types:
            batch = {k: v for k, v in batch.items() if k != "token_type_ids"}
        return self.model(**batch, **kwargs)

    def __repr__(self) -> str:
        extra = f", num_layers={self.num_layers}" if self.num_layers is not None else ""
        extra += f", first_stage={self.first_stage!r}" if self.first_stage is not None else ""
        extra += f", quantize={self._quantize!r}" if self._quantize is not None else ""
        return f"CrossEncoder({self.model_name!r}{extra})"


#: how a CrossEncoder reads its head (saved as "head" in marginkd.json): one logit, or (not relevant, relevant)
HEADS = ("one_logit", "two_logit")


def _head(name: str, config: Any, saved: dict[str, Any] | None) -> str:
    """The head a checkpoint is scored with: ours as saved; a sequence-classification checkpoint with 1 or 2 outputs
    as it is; a plain encoder (its config names no ``...ForSequenceClassification``) gets a new 1-output head."""
    if saved is not None:
        head = saved.get("head", "one_logit")  # folders saved before 2-logit heads were supported have one logit
        if head not in HEADS:
            raise ValueError(f"{name!r}: unknown head {head!r} in {io.CONFIG_NAME}; known: {list(HEADS)}")
        return head
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        return "one_logit"  # a plain encoder: a new head
    if config.num_labels == 1:
        return "one_logit"
    if config.num_labels == 2:
        return "two_logit"
    raise ValueError(f"{name!r} has a sequence-classification head with {config.num_labels} outputs "
                     f"({config.id2label}); a re-ranker needs 1 output (a relevance score) or 2 (not relevant, "
                     "relevant: monoBERT style)")


def _new_head_weights(model: Any, info: dict[str, Any]) -> bool:
    """Whether loading left head weights (outside the base model) missing or mismatched: the checkpoint had none."""
    prefix = getattr(model, "base_model_prefix", "")
    keys = [str(k[0] if isinstance(k, tuple) else k) for k in
            list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])]
    return any(not (prefix and k.startswith(f"{prefix}.")) for k in keys)
