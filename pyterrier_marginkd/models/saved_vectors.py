"""Frozen document vectors kept on disk between runs, for the DotEncoders that share them
(:meth:`DotEncoder.share_doc_vectors`)."""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np


def text_digest(text: str) -> bytes:
    """The key a saved vector is found by: the SHA-256 of its document's text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class SavedDocVectors(dict):
    """Frozen document vectors by text (what :meth:`DotEncoder.share_doc_vectors` takes), with the vectors that an
    earlier run of the same document encoder saved to ``path``.

    ``identity`` names the encoder (e.g. :func:`~pyterrier_marginkd.models.identity.describe` of the model, which
    digests its weights): a file saved under another identity, or one that cannot be read, is not used (``note``
    says why) and is replaced by the next :meth:`save`. Saved vectors are found by the SHA-256 of their text, so a
    document whose text changed is encoded again rather than given a stale vector. :meth:`save` writes every vector
    known so far, atomically, when there are new ones."""

    def __init__(self, path: str | os.PathLike, identity: str):
        super().__init__()
        self.path = Path(path)
        self.identity = str(identity)
        self._saved: dict[bytes, np.ndarray] = {}
        self.note: str | None = None  #: what loading found, for a log line (None: no file yet)
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as saved:
                    saved_identity = str(saved["identity"])
                    digests, vectors = saved["digests"], saved["vectors"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                self.note = f"{self.path} could not be read ({error}); encoding the documents again"
            else:
                if saved_identity != self.identity:
                    self.note = f"{self.path} holds another document encoder's vectors; encoding the documents again"
                elif digests.ndim != 2 or digests.shape[1] != 32 or len(digests) != len(vectors):
                    self.note = (f"{self.path} is damaged ({digests.shape} digests for {len(vectors)} vectors); "
                                 "encoding the documents again")
                else:
                    self._saved = {row.tobytes(): vector for row, vector in zip(digests, vectors)}
                    self.note = f"reusing {len(self._saved)} document vectors in {self.path}"
        self._saved_count = len(self._saved)

    @property
    def saved(self) -> int:
        """How many vectors the file holds (as loaded, or as last saved)."""
        return self._saved_count

    def __contains__(self, text: object) -> bool:
        return dict.__contains__(self, text) or (isinstance(text, str) and text_digest(text) in self._saved)

    def __missing__(self, text: str) -> np.ndarray:
        vector = self._saved[text_digest(text)]  # a KeyError for a text nobody encoded, as a dict's
        self[text] = vector
        return vector

    def save(self) -> bool:
        """Write every vector known so far to ``path`` (a temporary file, then renamed: a reader never sees half a
        file) when some are not saved yet; returns whether it wrote."""
        merged = dict(self._saved)
        merged.update((text_digest(text), vector) for text, vector in self.items())
        if len(merged) == self._saved_count:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f"{self.path.name}.tmp")
        with open(temporary, "wb") as file:
            np.savez(file, identity=np.array(self.identity),
                     digests=np.frombuffer(b"".join(merged), dtype=np.uint8).reshape(len(merged), 32),
                     vectors=np.stack(list(merged.values())).astype(np.float32, copy=False))
        os.replace(temporary, self.path)
        self._saved, self._saved_count = merged, len(merged)
        return True
