"""TK (Transformer-Kernel): a small non-BERT ranker — contextualised word embeddings and RBF kernel pooling."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from transformers import AutoModel, AutoTokenizer

from pyterrier_marginkd.models import io
from pyterrier_marginkd.models.docstore import StoredDocs
from pyterrier_marginkd.models.first_stage import FirstStageMix
from pyterrier_marginkd.models.hf import TOKENIZER_FILES, TextTokenizer
from pyterrier_marginkd.models.two_sided import Tokens, TwoSidedScorer

#: centres of the RBF kernels over cosine similarity (exact match, then soft matches down to -0.9), as in TK/KNRM
KERNEL_MU = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9)
KERNEL_SIGMA = 0.1


def positional_features(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """Sinusoidal position features ``[length, dim]`` (Vaswani et al., 2017)."""
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    features = torch.zeros(length, dim, device=device)
    features[:, 0::2] = torch.sin(position * frequency)
    features[:, 1::2] = torch.cos(position * frequency)[:, :dim // 2]
    return features


class _TKModel(nn.Module):
    """Word embeddings, a small transformer mixed with the raw embeddings, cosine match matrix, kernel pooling."""

    def __init__(self, vocab_size: int, embedding_dim: int, num_layers: int, num_heads: int, ff_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        layer = nn.TransformerEncoderLayer(embedding_dim, num_heads, ff_dim, dropout=0.1, batch_first=True)
        self.contextualizer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.mixer = nn.Parameter(torch.full([1], 0.5))
        self.kernel_scale = nn.Parameter(torch.full([1], 0.01))
        self.register_buffer("mu", torch.tensor(KERNEL_MU), persistent=False)
        self.score = nn.Linear(len(KERNEL_MU), 1, bias=False)
        nn.init.uniform_(self.score.weight, -0.014, 0.014)

    def contextualize(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mixer * embedding + (1 - mixer) * transformer(embedding + position)`` of each token."""
        embedded = self.embedding(input_ids)
        positions = positional_features(input_ids.shape[1], embedded.shape[-1], embedded.device)
        context = self.contextualizer(embedded + positions, src_key_padding_mask=~mask)
        return self.mixer * embedded + (1 - self.mixer) * context

    def token_vectors(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-length contextualised token vectors ``[batch, length, dim]`` (what a document store keeps)."""
        return F.normalize(self.contextualize(input_ids, mask), dim=-1)

    def match(self, queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
              doc_mask: torch.Tensor) -> torch.Tensor:
        """Scores of pairs from their unit-length token vectors ``[pairs, length, dim]`` and float masks
        ``[pairs, length]``: cosine match matrix, RBF kernels, per query token the log of each kernel's soft term
        frequency, summed over the query, then the linear layer."""
        cosine = queries @ docs.transpose(1, 2)  # [pairs, q, d]
        kernels = torch.exp(-(cosine.unsqueeze(-1) - self.mu) ** 2 / (2 * KERNEL_SIGMA ** 2))
        soft_tf = (kernels * doc_mask[:, None, :, None]).sum(2)  # [pairs, q, kernels]
        log_tf = torch.log2(soft_tf.clamp(min=1e-10)) * self.kernel_scale * query_mask.unsqueeze(-1)
        return self.score(log_tf.sum(1)).squeeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        q_mask, d_mask = batch["query_attention_mask"].bool(), batch["doc_attention_mask"].bool()
        # each distinct query and document contextualised once, then gathered for its pairs
        queries = self.token_vectors(batch["query_input_ids"], q_mask)[batch["query_index"]]
        docs = self.token_vectors(batch["doc_input_ids"], d_mask)[batch["doc_index"]]
        return self.match(queries, q_mask[batch["query_index"]].to(queries.dtype), docs,
                          d_mask[batch["doc_index"]].to(docs.dtype))


class TK(StoredDocs, TwoSidedScorer):
    """TK re-ranker (Hofstätter et al., ECAI 2020): no BERT — word embeddings, ``num_layers`` small transformer
    layers whose output is mixed with the raw embeddings by a learned weight, a cosine match matrix between query and
    document tokens, RBF kernel pooling (per query term the log of each kernel's soft term frequency, summed over the
    query) and a linear layer over the kernels.

    ``TK.from_pretrained(name)`` starts from any Hugging Face model: its tokenizer and its input embeddings (trained
    further with the rest); a folder saved by ``save_pretrained`` loads as it was. Texts longer than ``max_length``
    and queries longer than ``max_query_length`` tokens are truncated. ``first_stage="zscore"`` (or ``"minmax"``)
    mixes in the incoming first-stage score, normalised per query, with two weights trained beside the rest (the
    kernels then learn what the first stage misses).

    A document's contextualised token vectors never see the query, so they can be computed once per document:
    ``build_store``/``with_store`` keep them (``embedding_dim`` floats per token) and score only the queries and the
    kernels, as ColBERT's and PreTT's stores do.
    """

    ARCHITECTURE = "tk"
    DEFAULTS = {"num_layers": 2, "num_heads": 4, "ff_dim": 100, "max_query_length": 32, "first_stage": None}
    schematic_label = "TK"

    def __init__(self, model_name: str | os.PathLike, *, num_layers: int | None = None, num_heads: int | None = None,
                 ff_dim: int | None = None, max_query_length: int | None = None, first_stage: str | None = None,
                 max_length: int | None = None,
                 batch_size: int = 32, text_field: str = "text", verbose: bool = False,
                 device: str | torch.device | None = None, quantize: str | None = None, **model_kwargs: Any):
        super().__init__(batch_size=batch_size, text_field=text_field, verbose=verbose, device=device,
                         quantize=quantize)
        self.model_name = io.checked_name(model_name)
        given = {"num_layers": num_layers, "num_heads": num_heads, "ff_dim": ff_dim,
                 "max_query_length": max_query_length, "first_stage": first_stage, "max_length": max_length}
        settings, ours = io.resolve_settings(model_name, self.ARCHITECTURE, given, {**self.DEFAULTS, "max_length": 256},
                                             fixed=("num_layers", "num_heads", "ff_dim", "first_stage"))
        if ours:
            io.check_files(model_name, [io.WEIGHTS_NAME, TOKENIZER_FILES])
        self.num_layers, self.num_heads, self.ff_dim = settings["num_layers"], settings["num_heads"], settings["ff_dim"]
        self.max_query_length, self.max_length = settings["max_query_length"], settings["max_length"]
        self.first_stage = settings["first_stage"]
        self._check_first_stage()
        self.tokenizer = AutoTokenizer.from_pretrained(model_name, **model_kwargs)
        self._tok = TextTokenizer(self.tokenizer, self.max_length)
        self._query_tok = TextTokenizer(self.tokenizer, self.max_query_length)
        self._empty_id = self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else self._tok.pad_id
        if ours:
            saved = io.read_config(model_name)
            embeddings = torch.empty(saved["vocab_size"], saved["embedding_dim"])
        else:
            embeddings = AutoModel.from_pretrained(model_name, **model_kwargs).get_input_embeddings().weight.detach()
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1 (TK uses 1-3), got {self.num_layers}")
        if embeddings.shape[1] % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the embedding size {embeddings.shape[1]} of "
                             f"{self.model_name!r}")
        model = _TKModel(embeddings.shape[0], embeddings.shape[1], self.num_layers, self.num_heads, self.ff_dim)
        if self.first_stage is not None:
            model.interpolation = FirstStageMix()
        if ours:
            try:
                model.load_state_dict(io.load_extra_weights(model_name))
            except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
                raise ValueError(f"{Path(model_name) / io.WEIGHTS_NAME} does not fit the TK that "
                                 f"{Path(model_name) / io.CONFIG_NAME} describes: {str(err).splitlines()[0]} "
                                 "— save the model again") from None
        else:
            # rescaled so that words are about as long as the position features, as GloVe vectors were in TK: else
            # positions drown the words (BERT input embeddings are ~13x shorter); cosine matches are unchanged
            model.embedding.weight.data.copy_(embeddings * (math.sqrt(embeddings.shape[1] / 2) /
                                                            embeddings.norm(dim=1).mean()))
        self.model = model.to(self._device).eval()
        self._apply_saved_quantization()

    def _save_files(self, folder: Path) -> None:
        # the tokenizer and all the weights (safetensors): TK has no Hugging Face encoder
        self.tokenizer.save_pretrained(folder)
        io.save_extra_weights(self.model.state_dict(), folder)

    def _config(self) -> dict[str, Any]:
        vocab_size, embedding_dim = self.model.embedding.weight.shape
        return {**self._settings(), "max_length": self.max_length, "vocab_size": vocab_size,
                "embedding_dim": embedding_dim}

    def _words(self, tokenizer: TextTokenizer, texts: Sequence[str]) -> list[Tokens]:
        # a text without tokens becomes one unknown token, so that attention always has something to attend to
        return [(enc.ids or [self._empty_id], [0] * max(len(enc.ids), 1)) for enc in tokenizer.encode_texts(texts)]

    def _query_sequences(self, queries: Sequence[str]) -> list[Tokens]:
        return self._words(self._query_tok, queries)

    def _doc_sequences(self, texts: Sequence[str]) -> list[Tokens]:
        return self._words(self._tok, texts)

    # --- pre-computed documents (docstore) -------------------------------------------------------------------
    def _doc_side(self) -> tuple[list, dict[str, Any]]:
        # the whole model: its mixing weight is a parameter of the model itself, and query and documents share the
        # embeddings and the transformer, so a store is rebuilt whenever any weight has changed
        return [self.model], {"max_length": self.max_length}

    def doc_width(self) -> int:
        return self.model.embedding.weight.shape[1]

    def _stored_rows(self, batch: dict[str, torch.Tensor], side: str) -> list[torch.Tensor]:
        mask = batch[f"{side}_attention_mask"].bool()
        vectors = self.model.token_vectors(batch[f"{side}_input_ids"], mask)
        return [row[:int(n)] for row, n in zip(vectors, mask.sum(1))]

    def _stored_scores(self, queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
                       doc_mask: torch.Tensor) -> torch.Tensor:
        return self.model.match(queries, query_mask.to(queries.dtype), docs, doc_mask.to(docs.dtype))
