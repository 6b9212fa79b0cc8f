"""Document representations computed once, stored on disk (memory-mapped) and reused by every query.

The efficient students — DotEncoder (one vector), ColBERT (token vectors), PreTT (the states after its separate
layers) — read a document without the query, so what they compute for a document can be kept. ``student.build_store(
docs, path)`` writes it once; ``student.with_store(path)`` re-ranks from it, encoding only queries (and any candidate
the store lacks). A store records a digest of the weights its document side used: a student whose document side
differs is refused. It is written into a temporary folder that replaces ``path`` only when complete, so a killed build
leaves nothing that could be read as a store (the next build tidies up and starts again).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyterrier as pt
import torch
from torch.nn.utils.rnn import pad_sequence

from pyterrier_marginkd import _files
from pyterrier_marginkd.data.frames import RecordsTransformer
from pyterrier_marginkd.models.hf import pad

#: the store's description (written last: a folder without it is not a store)
STORE_FILE = "marginkd_store.json"
FORMAT = 1
_FILES = {"offsets": "offsets.npy", "docnos": "docnos.npy", "hashes": "text_hashes.npy"}
#: how a store may keep its rows, and the file each dtype's rows go to (float16: half the disk and page cache, scores
#: within about 1e-3 of float32's; rows are read back as float32)
DTYPES = {"float32": "vectors.f32", "float16": "vectors.f16"}


def text_hash(texts: Sequence[str]) -> np.ndarray:
    """A 64-bit digest of each text (a stored document is used only for the text it was computed from)."""
    return np.array([int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                                    "little") for t in texts], dtype=np.uint64)


class DocumentStore:
    """A built store, opened read-only: per document (by ``docno``) a float32 array ``[rows, width]`` (kept as
    ``dtype``, float32 or float16).

    ``model`` is the digest of the document side that built it (see ``StoredDocs.doc_digest``), ``text_field`` the
    column its texts came from.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / STORE_FILE
        if not meta_file.exists():
            raise FileNotFoundError(f"no document store at {str(path)!r} (no {STORE_FILE}: never built, or its build "
                                    "was interrupted); build one with student.build_store(docs, path)")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"the document store at {str(path)!r} has format {self.meta.get('format')!r}; this "
                             f"version reads format {FORMAT}: build it again (overwrite=True)")
        self.offsets = np.load(self.path / _FILES["offsets"])
        self.hashes = np.load(self.path / _FILES["hashes"])
        docnos = np.load(self.path / _FILES["docnos"], allow_pickle=False)
        rows, width = int(self.offsets[-1]), int(self.meta["width"])
        if self.dtype not in DTYPES:
            raise ValueError(f"the document store at {str(path)!r} keeps its rows as {self.dtype!r}; this version "
                             f"reads {sorted(DTYPES)}: build it again (overwrite=True)")
        self.vectors = (np.memmap(self.path / DTYPES[self.dtype], dtype=self.dtype, mode="r", shape=(rows, width))
                        if rows else np.zeros((0, width), dtype=self.dtype))
        self._rows = pd.Series(np.arange(len(docnos)), index=pd.Index(docnos.astype(str)))
        if self._rows.index.has_duplicates:
            raise ValueError(f"the document store at {str(path)!r} holds docno(s) twice "
                             f"({self._rows.index[self._rows.index.duplicated()][:3].tolist()}); build it again")

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def dtype(self) -> str:
        """How the rows are kept: ``"float32"`` or ``"float16"`` (stores built before the setting: float32)."""
        return self.meta.get("dtype", "float32")

    @property
    def text_field(self) -> str:
        return self.meta["text_field"]

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"DocumentStore({str(self.path)!r}, {len(self)} documents, {self.meta['architecture']})"

    def positions(self, docnos: Sequence[Any]) -> np.ndarray:
        """The store's position of each docno (compared as strings), -1 where absent."""
        found = self._rows.reindex(pd.Index([str(d) for d in docnos]))
        return np.array(found.fillna(-1), dtype=np.int64)

    def get(self, position: int) -> np.ndarray:
        """The stored ``[rows, width]`` array of the document at ``position``, as float32."""
        return np.array(self.vectors[self.offsets[position]:self.offsets[position + 1]], dtype=np.float32)

    def check(self, digest: str, architecture: str) -> None:
        """Raise a ValueError unless this store was built by a document side with ``digest``."""
        if self.meta["architecture"] != architecture or self.meta["model"] != digest:
            raise ValueError(f"the document store at {str(self.path)!r} was built by other weights or settings "
                             f"({self.meta['architecture']}, {self.meta['model'][:12]}... vs {architecture}, "
                             f"{digest[:12]}...): its representations would be stale; rebuild it with "
                             "student.build_store(docs, path, overwrite=True)")


def build(student: Any, docs: Iterable[dict], path: str | os.PathLike, *, overwrite: bool = False,
          batch_size: int = 1024, verbose: bool | None = None, dtype: str = "float32") -> DocumentStore:
    """Compute ``student``'s document representations of ``docs`` (dicts with ``docno`` and its text field) into a
    store at ``path`` whose rows are kept as ``dtype`` (:data:`DTYPES`); an existing store of the same document side
    and dtype is reused, one of another side or dtype is refused unless ``overwrite``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = Path(path)
    digest, architecture = student.doc_digest(), student.ARCHITECTURE
    _files.recover_dir(path)  # what a killed build left behind
    if (path / STORE_FILE).exists():
        existing = DocumentStore(path)
        if not overwrite:
            existing.check(digest, architecture)
            if existing.dtype != dtype:
                raise ValueError(f"the document store at {str(path)!r} keeps its rows as {existing.dtype}, not "
                                 f"{dtype}: use it as it is, or rebuild it with overwrite=True")
            return existing
    elif path.exists() and any(path.iterdir()):
        raise ValueError(f"{str(path)!r} exists and is not a document store; choose another path")
    verbose = student.verbose if verbose is None else verbose
    field = student.text_field
    with _files.atomic_dir(path) as tmp:
        offsets, docnos, hashes, seen, width = [0], [], [], set(), None
        bar = pt.tqdm(desc="document store", unit="doc", disable=not verbose)
        with open(tmp / DTYPES[dtype], "wb") as out:
            for part in _batches(docs, batch_size):
                for d in part:
                    if "docno" not in d or field not in d:
                        raise ValueError(f"each document needs 'docno' and {field!r}; got keys {sorted(d)}")
                    if str(d["docno"]) in seen:
                        raise ValueError(f"docno {d['docno']!r} appears twice in the documents")
                    seen.add(str(d["docno"]))
                texts = [str(d[field]) for d in part]
                for array in student.doc_representations(texts):
                    width = array.shape[1] if width is None else width
                    out.write(np.ascontiguousarray(array, dtype=dtype).tobytes())
                    offsets.append(offsets[-1] + len(array))
                docnos += [str(d["docno"]) for d in part]
                hashes.append(text_hash(texts))
                bar.update(len(part))
        bar.close()
        np.save(tmp / _FILES["offsets"], np.asarray(offsets, dtype=np.int64))
        np.save(tmp / _FILES["docnos"], np.asarray(docnos, dtype=str))
        np.save(tmp / _FILES["hashes"], np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64))
        meta = {"format": FORMAT, "architecture": architecture, "model": digest, "text_field": field,
                "width": int(width or student.doc_width()), "documents": len(docnos), "rows": offsets[-1],
                "dtype": dtype}
        (tmp / STORE_FILE).write_text(json.dumps(meta, indent=1))
    return DocumentStore(path)


def _batches(docs: Iterable[dict], size: int) -> Iterable[list[dict]]:
    part = []
    for d in docs:
        part.append(d)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


class StoredReranker(RecordsTransformer, pt.Transformer):
    """``student`` re-ranking from a document store: ``qid, query, docno`` (and optionally the text) in, the rows
    with ``score`` and ``rank`` out, as ``student`` itself would score them.

    A candidate the store lacks — or, when the input has the text column, whose text differs from the one stored —
    is computed on the fly from its text (``self.computed`` counts them); without the text column it is an error.
    """

    def __init__(self, student: Any, store: DocumentStore | str | os.PathLike):
        self.student = student
        self.store = store if isinstance(store, DocumentStore) else DocumentStore(store)
        self.computed = 0
        self._checked: int | None = None

    def __repr__(self) -> str:
        return f"{self.student!r}.with_store({str(self.store.path)!r})"

    def schematic(self, *, input_columns=None):
        return {"label": f"{self.student.schematic_label} (stored)"[:20], "help_url": None}

    def _check_weights(self) -> None:
        version = self.student.doc_version()
        if version != self._checked:  # the document side changed (or was never checked) since the last call
            self.store.check(self.student.doc_digest(), self.student.ARCHITECTURE)
            self._checked = version

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Score each (query, docno) row from the store; return the rows with ``score`` and ``rank``."""
        from pyterrier_marginkd.data.frames import add_scores, check_id_columns, check_text_column

        pt.validate.result_frame(inp, extra_columns=["query"])
        student, field = self.student, self.student.text_field
        if len(inp) == 0:
            return add_scores(inp, np.zeros(0))
        check_id_columns(inp)
        check_text_column(inp, "query")
        self._check_weights()
        positions = self.store.positions(inp["docno"].tolist())
        if field in inp.columns:
            check_text_column(inp, field)
            found = positions >= 0
            stale = np.zeros(len(inp), dtype=bool)
            stale[found] = text_hash(inp[field].to_numpy()[found].tolist()) != self.store.hashes[positions[found]]
            positions[stale] = -1
        missing = np.flatnonzero(positions < 0)
        if len(missing) and field not in inp.columns:
            raise ValueError(f"{len(missing)} candidate(s) are not in the document store {str(self.store.path)!r} "
                             f"(e.g. docno {inp['docno'].iloc[missing[0]]!r}) and the input has no {field!r} column "
                             "to compute them from: add the text (pt.text.get_text) or build the store over the "
                             "whole collection")
        docs: list[np.ndarray | None] = [self.store.get(p) if p >= 0 else None for p in positions]
        if len(missing):
            texts = inp[field].to_numpy()[missing].tolist()
            for i, array in zip(missing, student.doc_representations(texts)):
                docs[i] = array
            self.computed += len(missing)
        neural = student.score_stored(inp["query"].tolist(), docs)
        return add_scores(inp, student.mix_first_stage(inp, neural))


class StoredDocs:
    """What a student whose document side reads no query adds (mixed into DotEncoder, ColBERT, PreTT and TK):
    ``build_store``/``with_store``, and the hooks the store uses.

    A subclass names the modules and settings its document side depends on (``_doc_side``) and, unless it overrides
    ``doc_representations``/``score_stored`` wholesale, turns a padded batch into per-sequence tensors
    (``_stored_rows(batch, side)``) and scores padded query and document tensors (``_stored_scores``).
    """

    def build_store(self, docs: Iterable[dict], path: str | os.PathLike, *, overwrite: bool = False,
                    batch_size: int = 1024, verbose: bool | None = None, dtype: str = "float32") -> DocumentStore:
        """Compute this student's document representations of ``docs`` (dicts with ``docno`` and the text field)
        once into a memory-mapped store at ``path``; a store this document side built is reused, one of other
        weights refused unless ``overwrite=True``. ``dtype="float16"`` keeps the rows in half the space (scores
        within about 1e-3). Returns the store (re-rank from it with ``with_store``)."""
        return build(self, docs, path, overwrite=overwrite, batch_size=batch_size, verbose=verbose, dtype=dtype)

    def with_store(self, store: DocumentStore | str | os.PathLike) -> StoredReranker:
        """This student as a re-ranker that reads documents from ``store`` (a path or ``DocumentStore``) and
        encodes only queries; refused if the store was built by another document side."""
        reranker = StoredReranker(self, store)
        reranker._check_weights()
        return reranker

    # --- what the store needs ------------------------------------------------------------------------------
    def _doc_side(self) -> tuple[list, dict[str, Any]]:
        """The modules and settings the document representations depend on."""
        raise NotImplementedError(f"{type(self).__name__} keeps no document store: it must define _doc_side")

    def doc_digest(self) -> str:
        """A digest of the document side: its weights (as saved), settings and tokenizer."""
        modules, settings = self._doc_side()
        digest = hashlib.sha256()
        with self._fp32_model():
            for number, module in enumerate(modules):
                for name, tensor in module.state_dict().items():
                    digest.update(f"{number}.{name}".encode())
                    digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy()
                                  .tobytes())
        settings = {**settings, "quantize": self.quantization, "tokenizer": [type(self.tokenizer).__name__,
                                                                            len(self.tokenizer)]}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    def doc_version(self) -> tuple:
        """Changes whenever a weight of the document side is replaced or modified in place (cheap to read)."""
        return tuple((id(p), p._version) for m in self._doc_side()[0] for p in m.parameters())

    def doc_width(self) -> int:
        """The width of a stored row."""
        raise NotImplementedError(f"{type(self).__name__} keeps no document store: it must define doc_width")

    def doc_representations(self, texts: Sequence[str]) -> list[np.ndarray]:
        """What the store keeps of each text: a float32 array ``[rows, width]``."""
        out: list[np.ndarray] = [np.zeros((0, self.doc_width()), dtype=np.float32)] * len(texts)
        for idx, rows in self._side_batches(self._doc_sequences([str(t) for t in texts]), "doc"):
            for i, row in zip(idx, rows):
                out[i] = row.float().cpu().numpy()
        return out

    def score_stored(self, queries: Sequence[str], docs: Sequence[np.ndarray]) -> np.ndarray:
        """Neural scores of (query, stored document) pairs, in input order: each distinct query is encoded once."""
        scores = np.empty(len(queries), dtype=np.float64)
        unique = {q: i for i, q in enumerate(dict.fromkeys(str(q) for q in queries))}
        query_rows: list[torch.Tensor] = [None] * len(unique)  # type: ignore[list-item]
        for idx, rows in self._side_batches(self._query_sequences(list(unique)), "query"):
            for i, row in zip(idx, rows):
                query_rows[i] = row
        which = [unique[str(q)] for q in queries]
        order = np.argsort([-(len(query_rows[w]) + len(d)) for w, d in zip(which, docs)], kind="stable")
        with self._inference():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                q, q_mask = _padded([query_rows[which[i]] for i in idx])
                d, d_mask = _padded([torch.from_numpy(np.asarray(docs[i])) for i in idx])
                scored = self._stored_scores(q, q_mask.to(q.device), d.to(q), d_mask.to(q.device))
                scores[idx] = scored.float().cpu().numpy()
        return scores

    def _side_batches(self, sequences: list, side: str) -> Iterable[tuple[np.ndarray, list[torch.Tensor]]]:
        """(positions, per-sequence tensors) for length-sorted batches of ``side`` token sequences."""
        order = np.argsort([-len(ids) for ids, _ in sequences], kind="stable")
        with self._inference():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = {f"{side}_{k}": v for k, v in pad([sequences[i] for i in idx], self._tok.pad_id).items()}
                yield idx, self._stored_rows(self._to_device(batch), side)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """The model in eval mode under ``torch.inference_mode()`` (the base's ``eval_mode``: training mode restored
        after)."""
        with self.eval_mode(), torch.inference_mode():
            yield

    def _stored_rows(self, batch: dict[str, torch.Tensor], side: str) -> list[torch.Tensor]:
        """Per-sequence tensors (the rows kept) of a padded ``side`` batch."""
        raise NotImplementedError(f"{type(self).__name__} keeps no document store: it must define _stored_rows")

    def _stored_scores(self, queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
                       doc_mask: torch.Tensor) -> torch.Tensor:
        """Scores of pairs from padded query and document tensors and their masks."""
        raise NotImplementedError(f"{type(self).__name__} keeps no document store: it must define _stored_scores")


def _padded(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[n_i, width]`` padded to ``[len(rows), max n_i, width]`` and their ``[len(rows), max n_i]`` mask."""
    lengths = torch.tensor([len(r) for r in rows])
    mask = (torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return pad_sequence(list(rows), batch_first=True), mask
