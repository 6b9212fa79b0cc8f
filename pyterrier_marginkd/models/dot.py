"""BERT-DOT: query and document encoded separately into one vector each, scored by their dot product."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyterrier as pt
import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

from pyterrier_marginkd.models import io
from pyterrier_marginkd.models.docstore import StoredDocs
from pyterrier_marginkd.models.hf import (
    TextTokenizer,
    length_buckets,
    load_hf_model,
    pad,
    sentence_transformers_settings,
)
from pyterrier_marginkd.models.two_sided import EncoderStudent, encode, load_encoder

POOLINGS = ("cls", "mean")
#: file beside a dense index naming the weights that built it
INDEX_STAMP = "marginkd_encoder.txt"


class _DotModel(nn.Module):
    """Encoder(s), pooling and an optional linear projection; ``forward`` scores the pairs of a two-sided batch."""

    def __init__(self, encoder: PreTrainedModel, doc_encoder: PreTrainedModel | None, pooling: str,
                 dim: int | None, normalize: bool = False):
        super().__init__()
        self.normalize = normalize
        self.encoder = encoder
        if doc_encoder is not None:
            self.doc_encoder = doc_encoder
        self.pooling = pooling
        self.projection = nn.Linear(encoder.config.hidden_size, dim) if dim else None

    def embed(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        """One vector per distinct ``side`` ('query' or 'doc') sequence of the batch."""
        encoder = self.doc_encoder if side == "doc" and hasattr(self, "doc_encoder") else self.encoder
        hidden = encode(encoder, batch, side)
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            mask = batch[f"{side}_attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        vectors = self.projection(vectors) if self.projection is not None else vectors
        return nn.functional.normalize(vectors, dim=-1) if self.normalize else vectors

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        queries = self.embed(batch, "query")[batch["query_index"]]
        docs = self.embed(batch, "doc")[batch["doc_index"]]
        return (queries * docs).sum(-1)


class DotEncoder(StoredDocs, EncoderStudent):
    """BERT-DOT re-ranker and dense retriever: ``score = pool(enc(query)) · pool(enc(text))``.

    ``pooling`` is ``"cls"`` (the [CLS] vector) or ``"mean"`` (mean of the token vectors); ``dim`` adds a linear
    projection to that many dimensions; ``shared_encoder=False`` trains a separate document encoder (a copy of the
    query encoder at the start); ``normalize=True`` scales vectors to unit length (cosine similarity, as
    sentence-transformers models such as all-MiniLM-L6-v2 are trained). As a PyTerrier transformer it re-ranks
    ``qid, query, docno, text`` rows. ``frozen_docs=True`` encodes documents with the checkpoint's whole encoder,
    frozen (vectors computed once per distinct text), and makes the first ``num_layers`` layers a trainable query
    encoder (token embeddings frozen); ``first_stage="zscore"`` mixes in the normalised first-stage score with two
    learned weights. For first-stage retrieval,
    ``index(docs, path)`` encodes a corpus once into a pyterrier-dr ``FlexIndex`` and
    ``retriever(index, num_results=k)`` returns the top k documents of each query by dot product;
    ``query_encoder()``/``doc_encoder()`` add ``query_vec``/``doc_vec`` columns for any pyterrier-dr pipeline.
    """

    ARCHITECTURE = "dot"
    DEFAULTS = {"pooling": "cls", "dim": None, "shared_encoder": True, "normalize": False, "first_stage": None,
                "frozen_docs": False}
    #: distinct document vectors kept by a frozen-document encoder (beyond it the memory is cleared and refilled)
    doc_cache_size = 500_000
    schematic_label = "DotEncoder"

    def __init__(self, model_name: str | os.PathLike, *, pooling: str | None = None, dim: int | None = None,
                 shared_encoder: bool | None = None, normalize: bool | None = None, first_stage: str | None = None,
                 frozen_docs: bool | None = None, num_layers: int | Sequence[int] | None = None,
                 max_length: int | None = None, query_max_length: int | None = None,
                 batch_size: int = 32,
                 text_field: str = "text", verbose: bool = False, device: str | torch.device | None = None,
                 quantize: str | None = None,
                 **model_kwargs: Any):
        super().__init__(batch_size=batch_size, text_field=text_field, verbose=verbose, device=device,
                         quantize=quantize)
        if frozen_docs and shared_encoder:
            raise ValueError("frozen_docs=True gives documents their own (frozen) encoder: it cannot be combined "
                             "with shared_encoder=True")
        given = {"pooling": pooling, "dim": dim, "shared_encoder": False if frozen_docs else shared_encoder,
                 "normalize": normalize, "first_stage": first_stage, "frozen_docs": frozen_docs}
        if not (Path(model_name).is_dir() and io.read_config(model_name) is not None):
            # a sentence-transformers checkpoint says how it pools and whether it normalises: score as it does
            st = sentence_transformers_settings(model_name, **model_kwargs)
            if pooling is None and "unsupported_pooling" in st:
                raise ValueError(f"{str(model_name)!r} pools its token vectors with {st['unsupported_pooling']}; "
                                 "DotEncoder pools with 'cls' or 'mean' (pass pooling= to choose one)")
            given = {**given, **{k: v for k, v in st.items() if k in given and given[k] is None}}
            max_length = max_length or st.get("max_length")
        encoder, settings, ours = self._load_encoder(
            model_name, num_layers=num_layers, max_length=max_length, model_kwargs=model_kwargs, settings=given)
        # queries may be cut shorter than documents: given, else the saved model's, else None (max_length)
        query_max_length = io.resolve_settings(model_name, self.ARCHITECTURE, {"query_max_length": query_max_length},
                                               {"query_max_length": None})[0]["query_max_length"]
        if query_max_length is not None and not 3 <= query_max_length <= self.max_length:
            raise ValueError(f"query_max_length must leave room for [CLS], [SEP] and a token and be at most "
                             f"max_length={self.max_length} (None: max_length), got {query_max_length}")
        self.query_max_length = query_max_length
        self._query_tok = (TextTokenizer(self.tokenizer, query_max_length) if query_max_length is not None
                           else self._tok)
        self.pooling, self.dim, self.shared_encoder = settings["pooling"], settings["dim"], settings["shared_encoder"]
        self.normalize = bool(settings["normalize"])
        self.first_stage = settings["first_stage"]
        self.frozen_docs = bool(settings["frozen_docs"])
        if self.frozen_docs and self.dim is not None:
            raise ValueError("frozen_docs=True keeps the checkpoint's document vectors: it cannot add a projection "
                             "(dim=None)")
        self._doc_vectors: dict[str, np.ndarray] = {}
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be a positive number of dimensions (or None for no projection), got {self.dim}")
        doc_encoder = None
        if not self.shared_encoder:
            if ours:
                doc_encoder = load_encoder(Path(model_name) / "doc_encoder", **model_kwargs)
            elif self.frozen_docs:  # the checkpoint's whole encoder, whatever num_layers gives the query side
                doc_encoder = load_hf_model(AutoModel, model_name, None, strict=False, **model_kwargs)
            else:
                doc_encoder = copy.deepcopy(encoder)
            if self.frozen_docs:
                doc_encoder.requires_grad_(False)
                # the query side learns to map queries into the frozen document space; its token embeddings (most
                # of a small encoder's weights, and a vocabulary the two sides share) stay as they are too
                words = getattr(getattr(encoder, "embeddings", None), "word_embeddings", None)
                if words is not None:
                    words.requires_grad_(False)
        self._finish(_DotModel(encoder, doc_encoder, self.pooling, self.dim, self.normalize), ours)

    # --- frozen documents -------------------------------------------------------------------------------
    def precompute_docs(self, docs: Iterable[dict] | Sequence[str], *, batch_size: int | None = None) -> int:
        """Encode documents (dicts with the text field, or texts) ahead of queries, so that re-ranking them encodes
        only queries (``frozen_docs=True`` models; each distinct text once). Returns the number of vectors kept."""
        if not self.frozen_docs:
            raise ValueError("precompute_docs needs a DotEncoder with frozen_docs=True (otherwise training would "
                             "make stored document vectors stale)")
        texts = [d if isinstance(d, str) else str(d[self.text_field]) for d in docs]
        self.encode_docs(texts, batch_size)
        return len(self._doc_vectors)

    @property
    def doc_vectors(self) -> dict[str, np.ndarray]:
        """The frozen document vectors computed so far, by text (``frozen_docs=True`` models)."""
        return self._doc_vectors

    def share_doc_vectors(self, store: dict[str, np.ndarray]) -> DotEncoder:
        """Keep frozen document vectors in ``store``, a dict shared with other models of the same frozen document
        encoder (e.g. students cut from one checkpoint, or the ``doc_vectors`` of one of them), so that each document
        is encoded once for all of them; returns self."""
        if not self.frozen_docs:
            raise ValueError("share_doc_vectors needs a DotEncoder with frozen_docs=True (otherwise training would "
                             "make shared document vectors stale)")
        self._doc_vectors = store
        return self

    def _frozen_doc_vectors(self, texts: Sequence[str], batch_size: int | None) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._doc_vectors]
        if missing:
            if len(self._doc_vectors) + len(missing) > self.doc_cache_size:
                self._doc_vectors.clear()
            bar = pt.tqdm(total=len(missing), desc="documents", unit="doc",
                          disable=not (self.verbose and len(missing) > 1000))
            for start in range(0, len(missing), 4096):
                part = missing[start:start + 4096]
                self._doc_vectors.update(zip(part, self._encode_side(part, "doc", batch_size)))
                bar.update(len(part))
            bar.close()
        return np.stack([self._doc_vectors[t] for t in texts]) if len(texts) else np.zeros((0, self._width()))

    def _neural_train_scores(self, queries: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        if not self.frozen_docs:
            return super()._neural_train_scores(queries, texts)
        return self._frozen_train_scores(queries, texts)[0]

    def _frozen_train_scores(self, queries: Sequence[str],
                             texts: Sequence[str]) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Differentiable scores of (query, text) pairs against the frozen document vectors, the distinct queries
        and their (differentiable) vectors, from one forward pass of the query encoder."""
        unique = {q: i for i, q in enumerate(dict.fromkeys(str(q) for q in queries))}
        vectors = self.train_query_vectors(list(unique))
        query_vecs = vectors[[unique[str(q)] for q in queries]]
        doc_vecs = torch.from_numpy(self._frozen_doc_vectors([str(t) for t in texts], None)).to(query_vecs)
        return (query_vecs * doc_vecs).sum(-1), list(unique), vectors

    def train_query_vectors(self, queries: Sequence[str]) -> torch.Tensor:
        """Differentiable query vectors ``[len(queries), dim]`` from the query encoder (for training)."""
        if len(queries) == 0:
            raise ValueError("train_query_vectors got no queries")
        items = self._query_tok.singles([str(q) for q in queries])
        runs = length_buckets([len(ids) for ids, _ in items])  # short and long queries padded apart
        if len(runs) == 1:
            runs = [list(range(len(items)))]  # one forward pass, in the given order
        vectors = [self.model.embed(self._to_device({f"query_{k}": v for k, v in pad(
            [items[i] for i in run], self._tok.pad_id).items()}), "query") for run in runs]
        if len(runs) == 1:
            return vectors[0]
        position = torch.argsort(torch.tensor([i for run in runs for i in run]))
        return torch.cat(vectors)[position.to(vectors[0].device)]

    def target_query_vectors(self, queries: Sequence[str]) -> torch.Tensor:
        """The alignment targets of query texts (``frozen_docs=True`` models): the vectors the frozen document
        encoder gives them, the full model's query vectors (kept with the document vectors, computed once)."""
        if not self.frozen_docs:
            raise ValueError(f"alignment needs a DotEncoder with frozen_docs=True, whose frozen document encoder gives "
                             f"the target vectors; {self!r} trains its document side too")
        return torch.from_numpy(self._frozen_doc_vectors([str(q) for q in queries], None)).to(self.torch_device)

    def train_scores_and_query_vectors(self, queries: Sequence[str], texts: Sequence[str],
                                       first_stage: Sequence[float] | None = None
                                       ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """``train_scores`` and, from the same forward pass, the distinct queries and their differentiable vectors
        (``frozen_docs=True`` models: training with an alignment term costs no second pass)."""
        if not self.frozen_docs:
            raise ValueError(f"alignment needs a DotEncoder with frozen_docs=True; {self!r} trains its document side")
        neural, unique, vectors = self._frozen_train_scores(queries, texts)
        return self._mix_train_scores(neural, first_stage), unique, vectors

    def _quantized_part(self) -> torch.nn.Module:
        # frozen documents keep the checkpoint's fp32 vectors (computed once, ahead of queries, where their cost
        # does not count): only the query encoder becomes int8
        return self.model.encoder if self.frozen_docs else self.model

    def _width(self) -> int:
        return self.dim or self.model.encoder.config.hidden_size

    # --- scoring ----------------------------------------------------------------------------------------
    def score_pairs(self, queries: Sequence[str], texts: Sequence[str], *, batch_size: int | None = None,
                    desc: str | None = None) -> np.ndarray:
        """Scores of (query, text) pairs in input order: each distinct query and text (per ``chunk_size`` pairs) is
        encoded once, then pairs are scored by dot product — re-ranking k candidates of many queries over one
        corpus encodes each document once, not once per query. With ``frozen_docs`` the document vectors are kept
        across calls, and each distinct query of the call is encoded once, before the chunks."""
        if len(queries) != len(texts):
            raise ValueError(f"got {len(queries)} queries but {len(texts)} texts; they must pair up one to one")
        scores = np.empty(len(queries), dtype=np.float64)
        bar = pt.tqdm(total=len(queries), desc=desc or type(self).__name__, unit="pair", disable=not self.verbose)
        queries, texts = [str(q) for q in queries], [str(t) for t in texts]
        # pairs sorted by text: a chunk then holds few distinct documents, each encoded about once per call
        order = np.asarray(sorted(range(len(texts)), key=texts.__getitem__), dtype=np.int64)
        # frozen document vectors are kept across calls, so a chunk costs only its queries: encode each distinct
        # query of the call once, not once in every chunk its documents fall in
        every_query = ({q: i for i, q in enumerate(dict.fromkeys(queries))} if self.frozen_docs and len(queries)
                       else None)
        every_vec = self.encode_queries(list(every_query), batch_size) if every_query is not None else None
        try:
            for start in range(0, len(queries), self.chunk_size):
                rows = order[start:start + self.chunk_size]
                chunk_q = [queries[i] for i in rows]
                chunk_t = [texts[i] for i in rows]
                if every_query is not None:
                    query_ids, query_vecs = every_query, every_vec
                else:
                    query_ids = {q: i for i, q in enumerate(dict.fromkeys(chunk_q))}
                    query_vecs = self.encode_queries(list(query_ids), batch_size)
                text_ids = {t: i for i, t in enumerate(dict.fromkeys(chunk_t))}
                doc_vecs = self.encode_docs(list(text_ids), batch_size)
                rows_q = query_vecs[[query_ids[q] for q in chunk_q]]
                rows_d = doc_vecs[[text_ids[t] for t in chunk_t]]
                scores[rows] = np.einsum("ij,ij->i", rows_q, rows_d)
                bar.update(len(chunk_q))
        finally:
            bar.close()
        return scores

    # --- encoding ---------------------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Query vectors, float32 ``[len(texts), dim]``."""
        return self._encode(texts, "query", batch_size)

    def encode_docs(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Document vectors, float32 ``[len(texts), dim]``."""
        return self._encode(texts, "doc", batch_size)

    def _encode(self, texts: Sequence[str], side: str, batch_size: int | None) -> np.ndarray:
        if side == "doc" and self.frozen_docs:
            return self._frozen_doc_vectors([str(t) for t in texts], batch_size)
        return self._encode_side(texts, side, batch_size)

    def _query_sequences(self, queries: Sequence[str]) -> list:
        return self._query_tok.singles(queries)

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        return config if self.query_max_length is None else {**config, "query_max_length": self.query_max_length}

    def _repr_extra(self) -> list[str]:
        extra = super()._repr_extra()
        return extra if self.query_max_length is None else [*extra, f"query_max_length={self.query_max_length}"]

    def _encode_side(self, texts: Sequence[str], side: str, batch_size: int | None) -> np.ndarray:
        sequences = (self._query_tok if side == "query" else self._tok).singles([str(t) for t in texts])
        vectors = np.empty((len(sequences), self._width()), dtype=np.float32)
        self._run_by_length(sequences, [len(ids) for ids, _ in sequences],
                            lambda items: {f"{side}_{k}": v for k, v in pad(items, self._tok.pad_id).items()},
                            lambda batch: self.model.embed(batch, side), vectors, batch_size or self.batch_size)
        return vectors

    # --- pre-computed documents (docstore) -------------------------------------------------------------------
    def _doc_side(self) -> tuple[list, dict[str, Any]]:
        encoder = getattr(self.model, "doc_encoder", self.model.encoder)
        projection = [self.model.projection] if self.model.projection is not None else []
        return [encoder, *projection], {"pooling": self.pooling, "dim": self.dim, "normalize": self.normalize,
                                        "max_length": self.max_length}

    def doc_width(self) -> int:
        return self._width()

    def doc_representations(self, texts: Sequence[str]) -> list[np.ndarray]:
        return list(self._encode_side(texts, "doc", None)[:, None, :])

    def score_stored(self, queries: Sequence[str], docs: Sequence[np.ndarray]) -> np.ndarray:
        unique = {q: i for i, q in enumerate(dict.fromkeys(str(q) for q in queries))}
        query_vecs = self._encode_side(list(unique), "query", None)[[unique[str(q)] for q in queries]]
        doc_vecs = np.concatenate([np.asarray(d) for d in docs]) if len(docs) else np.zeros((0, self._width()))
        return np.einsum("ij,ij->i", query_vecs, doc_vecs).astype(np.float64)

    # --- dense retrieval (pyterrier-dr) ------------------------------------------------------------------
    def query_encoder(self, verbose: bool | None = None, batch_size: int | None = None) -> pt.Transformer:
        """A transformer that adds ``query_vec`` to a frame with ``query`` (pyterrier-dr's ``BiQueryEncoder``)."""
        import pyterrier_dr  # imported on use: it takes seconds to import

        return pyterrier_dr.BiQueryEncoder(self, verbose=verbose, batch_size=batch_size)

    def doc_encoder(self, verbose: bool | None = None, batch_size: int | None = None) -> pt.Transformer:
        """A transformer that adds ``doc_vec`` to a frame with ``text`` (pyterrier-dr's ``BiDocEncoder``)."""
        import pyterrier_dr

        return pyterrier_dr.BiDocEncoder(self, verbose=verbose, batch_size=batch_size)

    def index(self, docs: Iterable[dict], path: str | os.PathLike, *, overwrite: bool = False):
        """Encode ``docs`` (dicts with ``docno`` and the text field) once into a pyterrier-dr FlexIndex at ``path``;
        returns the ``FlexIndex``. Like ``Collection.bm25``, a second call reuses the index it built — but only when
        this model's weights built it (a digest is stored beside it); an index of other weights is refused (its
        vectors would be stale) unless ``overwrite=True`` rebuilds it."""
        import pyterrier_dr

        from pyterrier_marginkd.models.identity import describe

        stamp_file = Path(path) / INDEX_STAMP
        stamp = describe(self)
        index = pyterrier_dr.FlexIndex(str(path), verbose=self.verbose)
        if index.built() and not overwrite:
            if stamp_file.exists() and stamp_file.read_text() == stamp:
                return index
            raise ValueError(f"the index at {str(path)!r} was built by other weights (or without a record of them): "
                             "its vectors would not match this model; pass overwrite=True to rebuild it")
        (self.doc_encoder() >> index.indexer(mode="overwrite" if overwrite else "create")).index(docs)
        stamp_file.write_text(stamp)
        return index

    def retriever(self, index: Any, *, num_results: int = 1000) -> pt.Transformer:
        """Dense retrieval from a FlexIndex (or its path) built by ``index``: ``qid, query`` in, the top
        ``num_results`` documents of each query by dot product out (``docno, score, rank``)."""
        import pyterrier_dr

        if not isinstance(index, pyterrier_dr.FlexIndex):
            if not (Path(index) / "pt_meta.json").exists():
                raise ValueError(f"no dense index at {str(index)!r}; build one with DotEncoder.index(docs, path)")
            index = pyterrier_dr.FlexIndex(str(index), verbose=self.verbose)
        return self.query_encoder() >> index.np_retriever(num_results=num_results, drop_query_vec=True)
