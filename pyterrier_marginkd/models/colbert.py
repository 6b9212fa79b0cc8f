"""ColBERT: late interaction — the sum over query tokens of each one's best match among the document tokens."""
from __future__ import annotations

import os
import string
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from transformers import PreTrainedModel

from pyterrier_marginkd.models.docstore import StoredDocs
from pyterrier_marginkd.models.hf import TextTokenizer
from pyterrier_marginkd.models.two_sided import EncoderStudent, Tokens, encode, two_sided_batch


class _ColBERTModel(nn.Module):
    """Encoder and linear compression; ``forward`` scores the pairs of a two-sided batch by MaxSim."""

    def __init__(self, encoder: PreTrainedModel, dim: int, normalize: bool):
        super().__init__()
        self.encoder = encoder
        self.projection = nn.Linear(encoder.config.hidden_size, dim, bias=False)
        self.normalize = normalize

    def embed(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        """Token vectors ``[rows, length, dim]`` of the distinct ``side`` sequences of the batch."""
        vectors = self.projection(encode(self.encoder, batch, side))
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        q_index, d_index = batch["query_index"], batch["doc_index"]
        return maxsim(self.embed(batch, "query")[q_index], batch["query_attention_mask"][q_index],
                      self.embed(batch, "doc")[d_index], batch["doc_match_mask"][d_index])


def maxsim(queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor, doc_mask: torch.Tensor) -> torch.Tensor:
    """Per pair, the sum over the query's tokens (``query_mask``) of the best match among its document's tokens
    (``doc_mask``); token vectors ``[pairs, tokens, dim]``."""
    similarity = queries @ docs.transpose(1, 2)  # [pairs, query tokens, doc tokens]
    similarity = similarity.masked_fill(~doc_mask.bool().unsqueeze(1), torch.finfo(similarity.dtype).min)
    return (similarity.max(-1).values * query_mask.to(similarity.dtype)).sum(-1)


class ColBERT(StoredDocs, EncoderStudent):
    """ColBERT re-ranker: ``score = Σ_i max_j q_i · d_j`` over query token vectors q_i and document token vectors
    d_j (Khattab & Zaharia, SIGIR 2020).

    Token vectors are the encoder's outputs compressed by a linear layer to ``dim`` dimensions (128) and, with
    ``normalize`` (default), scaled to unit length (cosine similarity). With ``query_length`` (32), queries are
    truncated or padded with [MASK] tokens to exactly that many tokens, and the [MASK] tokens take part in attention
    and in the sum (ColBERT's query augmentation); ``query_length=0`` turns augmentation off. With
    ``mask_punctuation``, document tokens that are punctuation are not matched. Unlike the original, no [Q]/[D]
    marker tokens are added, so any WordPiece/BPE vocabulary works.
    """

    ARCHITECTURE = "colbert"
    DEFAULTS = {"dim": 128, "query_length": 32, "mask_punctuation": False, "normalize": True,
                "first_stage": None}
    schematic_label = "ColBERT"

    def __init__(self, model_name: str | os.PathLike, *, dim: int | None = None, query_length: int | None = None,
                 mask_punctuation: bool | None = None, normalize: bool | None = None, first_stage: str | None = None,
                 num_layers: int | Sequence[int] | None = None,
                 max_length: int | None = None, batch_size: int = 32, text_field: str = "text",
                 verbose: bool = False, device: str | torch.device | None = None, quantize: str | None = None,
                 **model_kwargs: Any):
        super().__init__(batch_size=batch_size, text_field=text_field, verbose=verbose, device=device,
                         quantize=quantize)
        encoder, settings, ours = self._load_encoder(
            model_name, num_layers=num_layers, max_length=max_length, model_kwargs=model_kwargs,
            settings={"dim": dim, "query_length": query_length, "mask_punctuation": mask_punctuation,
                      "normalize": normalize, "first_stage": first_stage})
        self.first_stage = settings["first_stage"]
        self.dim, self.query_length = settings["dim"], settings["query_length"]
        self.mask_punctuation, self.normalize = settings["mask_punctuation"], settings["normalize"]
        if self.dim < 1:
            raise ValueError(f"dim must be a positive number of dimensions, got {self.dim}")
        if self.query_length < 0:
            raise ValueError(f"query_length must be >= 0 (0: no query augmentation), got {self.query_length}")
        if self.query_length:
            if self.tokenizer.mask_token_id is None:
                raise ValueError(f"the tokenizer of {self.model_name!r} has no mask token; query augmentation needs "
                                 "one: pass query_length=0")
            if self.query_length < 3:
                raise ValueError(f"query_length must leave room for [CLS], [SEP] and a token, got {self.query_length}")
            self._query_tok = TextTokenizer(self.tokenizer, self.query_length)
        vocab = self.tokenizer.get_vocab()
        self._punctuation = torch.tensor(sorted(vocab[c] for c in string.punctuation if c in vocab), dtype=torch.long)
        self._finish(_ColBERTModel(encoder, self.dim, self.normalize), ours)

    def _query_sequences(self, queries: Sequence[str]) -> list[Tokens]:
        if not self.query_length:
            return self._tok.singles(queries)
        masks = self.query_length
        return [(ids + [self.tokenizer.mask_token_id] * (masks - len(ids)), types + [0] * (masks - len(types)))
                for ids, types in self._query_tok.singles(queries)]

    def _collate(self, items: Sequence[tuple[Tokens, Tokens]]) -> dict[str, torch.Tensor]:
        batch = two_sided_batch(items, self._tok.pad_id)
        batch["doc_match_mask"] = self._collate_mask(batch)
        return batch

    def _collate_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which document tokens are matched: all but padding (and punctuation, with ``mask_punctuation``)."""
        match = batch["doc_attention_mask"]
        if self.mask_punctuation:
            match = match * ~torch.isin(batch["doc_input_ids"], self._punctuation.to(match.device))
        return match

    # --- pre-computed documents (docstore) -------------------------------------------------------------------
    def _doc_side(self) -> tuple[list, dict[str, Any]]:
        return [self.model.encoder, self.model.projection], {
            "dim": self.dim, "normalize": self.normalize, "mask_punctuation": self.mask_punctuation,
            "max_length": self.max_length}

    def doc_width(self) -> int:
        return self.dim

    def _stored_rows(self, batch: dict[str, torch.Tensor], side: str) -> list[torch.Tensor]:
        # a document keeps the token vectors it is matched on; a query every token (its [MASK]s included)
        vectors = self.model.embed(batch, side)
        keep = self._collate_mask(batch) if side == "doc" else batch["query_attention_mask"]
        return [row[mask.bool()] for row, mask in zip(vectors, keep)]

    def _stored_scores(self, queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
                       doc_mask: torch.Tensor) -> torch.Tensor:
        return maxsim(queries, query_mask, docs, doc_mask)
