"""PreTT(R): the lower layers encode query and document apart (documents pre-computable), the upper ones together."""
from __future__ import annotations

import inspect
import os
from typing import Any, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from pyterrier_marginkd.models.docstore import StoredDocs
from pyterrier_marginkd.models.fast_training import is_bert_self_attention, recomputes_layers, self_attention
from pyterrier_marginkd.models.hf import layer_list
from pyterrier_marginkd.models.two_sided import EncoderStudent, Tokens

#: sequences a layer runs together under gradient checkpointing: the backward pass then holds one chunk's
#: activations of one layer at a time, whose attention maps grow with (query + document length)^2 in the joint layers
CHECKPOINT_ROWS = 16


class _PreTTModel(nn.Module):
    """Encoder split at ``num_separate_layers`` and a linear score head on the joint [CLS] vector."""

    def __init__(self, encoder: PreTrainedModel, num_separate_layers: int):
        super().__init__()
        self.encoder = encoder
        self.num_separate_layers = num_separate_layers
        self.score_head = nn.Linear(encoder.config.hidden_size, 1)

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[nn.Module]):
        mask = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        if len(hidden) <= CHECKPOINT_ROWS or not (self.training and torch.is_grad_enabled()
                                                  and recomputes_layers(self.encoder)):
            for layer in layers:
                hidden = layer(hidden, attention_mask=mask)
            return hidden
        # each chunk is checkpointed (and recomputed in the backward pass) on its own; its dropout masks are drawn
        # per chunk, so the training equals the unchunked one in distribution, not bit for bit
        masks = mask.split(CHECKPOINT_ROWS) if mask is not None else [None] * -(-len(hidden) // CHECKPOINT_ROWS)
        for layer in layers:
            hidden = torch.cat([layer(part, attention_mask=part_mask)
                                for part, part_mask in zip(hidden.split(CHECKPOINT_ROWS), masks)])
        return hidden

    def separate(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        """Hidden states ``[rows, length, hidden]`` of the ``side`` sequences after the separate layers alone; they
        depend on nothing but the sequence itself, so document ones can be computed ahead of the queries."""
        hidden = self.encoder.embeddings(input_ids=batch[f"{side}_input_ids"],
                                         token_type_ids=batch[f"{side}_token_type_ids"])
        layers = layer_list(self.encoder)[:self.num_separate_layers]
        return self._run_layers(hidden, batch[f"{side}_attention_mask"], layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        q_index, d_index = batch["query_index"], batch["doc_index"]
        return self.joint(self.separate(batch, "query")[q_index], batch["query_attention_mask"][q_index],
                          self.separate(batch, "doc")[d_index], batch["doc_attention_mask"][d_index])

    def joint(self, queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
              doc_mask: torch.Tensor) -> torch.Tensor:
        """Scores of pairs from their separate-layer states ``[pairs, tokens, hidden]``: the joint layers on the
        concatenation, then the head on [CLS]."""
        hidden, mask = torch.cat([queries, docs], dim=1), torch.cat([query_mask, doc_mask], dim=1)
        layers = layer_list(self.encoder)[self.num_separate_layers:]
        if not _is_bert_layer(layers[-1]):
            return self.score_head(self._run_layers(hidden, mask, layers)[:, 0]).squeeze(-1)
        # the head reads [CLS] alone: the last layer computes only its row (keys and values still from every token)
        hidden = self._run_layers(hidden, mask, layers[:-1])
        return self.score_head(_first_token_output(layers[-1], hidden, mask)).squeeze(-1)


def _is_bert_layer(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    return (hasattr(layer, "feed_forward_chunk") and hasattr(attention, "output") and not getattr(layer, "is_decoder",
            False) and is_bert_self_attention(getattr(attention, "self", None)))


def _first_token_output(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A BERT layer's output at the first position only, ``[rows, hidden]``: the same numbers as the whole layer's
    first row, at a fraction of the cost (one query row, no feed-forward for the other tokens)."""
    context, _ = self_attention(layer.attention.self, hidden, mask.bool()[:, None, None, :], first_only=True)
    attended = layer.attention.output(context, hidden[:, :1])
    return layer.feed_forward_chunk(attended)[:, 0]


class PreTT(StoredDocs, EncoderStudent):
    """PreTT(R) re-ranker (MacAvaney et al., SIGIR 2020): ``[CLS] query [SEP]`` and ``text [SEP]`` pass the first
    ``num_separate_layers`` transformer layers apart, the remaining layers on their concatenation, and a linear head
    scores the [CLS] vector.

    The document side (token type 1, positions from 0) never sees the query in the separate layers, so its states
    can be computed once per document (``model.separate``). ``num_separate_layers`` defaults to half the layers
    (after ``num_layers`` truncation); with 0 every layer sees query and text together. Needs a BERT-like encoder
    (embeddings that take token types, an ``nn.ModuleList`` of layers).
    """

    ARCHITECTURE = "pretts"
    DEFAULTS = {"num_separate_layers": None, "first_stage": None}
    schematic_label = "PreTT"

    def __init__(self, model_name: str | os.PathLike, *, num_separate_layers: int | None = None,
                 first_stage: str | None = None, num_layers: int | Sequence[int] | None = None,
                 max_length: int | None = None,
                 batch_size: int = 32, text_field: str = "text", verbose: bool = False,
                 device: str | torch.device | None = None, quantize: str | None = None,
                 **model_kwargs: Any):
        super().__init__(batch_size=batch_size, text_field=text_field, verbose=verbose, device=device,
                         quantize=quantize)
        encoder, settings, ours = self._load_encoder(
            model_name, num_layers=num_layers, max_length=max_length, model_kwargs=model_kwargs,
            settings={"num_separate_layers": num_separate_layers, "first_stage": first_stage})
        self.first_stage = settings["first_stage"]
        embeddings = getattr(encoder, "embeddings", None)
        if embeddings is None or "token_type_ids" not in inspect.signature(embeddings.forward).parameters:
            raise ValueError(f"PreTT needs a BERT-like encoder whose embeddings take token types; "
                             f"{type(encoder).__name__} ({self.model_name!r}) has none")
        total = len(layer_list(encoder))
        self.num_separate_layers = settings["num_separate_layers"]
        if self.num_separate_layers is None:
            self.num_separate_layers = total // 2
        if not 0 <= self.num_separate_layers < total:
            raise ValueError(f"num_separate_layers must be between 0 and {total - 1} (this encoder has {total} "
                             f"layers and at least one must see query and text together), got "
                             f"{self.num_separate_layers}")
        self._finish(_PreTTModel(encoder, self.num_separate_layers), ours)

    def _doc_sequences(self, texts: Sequence[str]) -> list[Tokens]:
        # drop the document's own [CLS]: the pair reads like [CLS] query [SEP] text [SEP]
        return [(ids[1:], [1] * (len(ids) - 1)) for ids, _ in self._tok.singles(texts)]

    # --- pre-computed documents (docstore) -------------------------------------------------------------------
    def _doc_side(self) -> tuple[list, dict[str, Any]]:
        separate = layer_list(self.model.encoder)[:self.num_separate_layers]
        return [self.model.encoder.embeddings, *separate], {"num_separate_layers": self.num_separate_layers,
                                                            "max_length": self.max_length}

    def doc_width(self) -> int:
        return self.model.encoder.config.hidden_size

    def _stored_rows(self, batch: dict[str, torch.Tensor], side: str) -> list[torch.Tensor]:
        states = self.model.separate(batch, side)
        return [row[:int(n)] for row, n in zip(states, batch[f"{side}_attention_mask"].sum(1))]

    def _stored_scores(self, queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
                       doc_mask: torch.Tensor) -> torch.Tensor:
        return self.model.joint(queries, query_mask, docs, doc_mask)
