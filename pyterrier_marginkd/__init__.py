"""pyterrier-marginkd: distilled neural re-ranking for PyTerrier (Margin-MSE knowledge distillation).

The public names are imported on first use (PEP 562), so that ``import pyterrier_marginkd`` (which PyTerrier does at
start-up through its ``pyterrier.modules`` entry point) and ``marginkd --help`` import neither torch nor PyTerrier.
Submodules are attributes as usual (``pyterrier_marginkd.losses``, ``pyterrier_marginkd.data.collection.Collection``;
the modules of release 0.1.0 that moved into subpackages too, e.g. ``pyterrier_marginkd.collection``);
``pyterrier_marginkd.report`` is the function :func:`pyterrier_marginkd.report.report`.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> submodule that defines it (a name equal to its submodule's is the submodule itself, except report)
_EXPORTS = {
    "TK": "models.tk",
    "Cascade": "models.cascade",
    "ColBERT": "models.colbert",
    "Collection": "data.collection",
    "CrossFitted": "models.crossfit",
    "CrossEncoder": "models.cross_encoder",
    "Distiller": "training.distiller",
    "DocPairs": "data.docpairs",
    "DocumentStore": "models.docstore",
    "DotEncoder": "models.dot",
    "Ensemble": "models.ensemble",
    "FirstStageScore": "models.ensemble",
    "LuceneIndex": "data.lucene",
    "PreTT": "models.pretts",
    "ScoreFile": "data.scorefiles",
    "TrainSettings": "training.settings",
    "choose_teacher": "training.teachers",
    "clean_query": "data.collection",
    "default_model": "models.io",
    "find_java": "data.java",
    "fit_once": "training.once",
    "init_pyserini": "data.java",
    "load": "models.io",
    "losses": None,
    "normalize_scores": "models.ensemble",
    "pseudo_qrels": "data.pseudo",
    "pseudo_queries": "data.pseudo",
    "read_score_file": "data.scorefiles",
    "report": "report",
    "rerank_hits": "data.lucene",
    "spread_layers": "models.hf",
    "unmap_large_blocks": "training.checkpoints",
    "write_score_file": "data.scorefiles",
}

#: modules of release 0.1.0 that now live in a subpackage: still attributes of the package (``mkd.io.load``,
#: ``mkd.collection.Collection``); import them from their new place (``pyterrier_marginkd.models.io``)
_MOVED = {
    "cascade": "models.cascade",
    "colbert": "models.colbert",
    "collection": "data.collection",
    "cross_encoder": "models.cross_encoder",
    "distill": "training.distiller",
    "docpairs": "data.docpairs",
    "dot": "models.dot",
    "ensemble": "models.ensemble",
    "io": "models.io",
    "pretts": "models.pretts",
    "pseudo": "data.pseudo",
    "scorefiles": "data.scorefiles",
    "tk": "models.tk",
}

__all__ = [
    "TK",
    "Cascade",
    "ColBERT",
    "Collection",
    "CrossEncoder",
    "CrossFitted",
    "Distiller",
    "DocPairs",
    "DocumentStore",
    "DotEncoder",
    "Ensemble",
    "FirstStageScore",
    "LuceneIndex",
    "PreTT",
    "ScoreFile",
    "TrainSettings",
    "choose_teacher",
    "clean_query",
    "default_model",
    "find_java",
    "fit_once",
    "init_pyserini",
    "load",
    "losses",
    "normalize_scores",
    "pseudo_qrels",
    "pseudo_queries",
    "read_score_file",
    "report",
    "rerank_hits",
    "spread_layers",
    "unmap_large_blocks",
    "write_score_file",
]

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from pyterrier_marginkd import losses
    from pyterrier_marginkd.data.collection import Collection, clean_query
    from pyterrier_marginkd.data.docpairs import DocPairs
    from pyterrier_marginkd.data.java import find_java, init_pyserini
    from pyterrier_marginkd.data.lucene import LuceneIndex, rerank_hits
    from pyterrier_marginkd.data.pseudo import pseudo_qrels, pseudo_queries
    from pyterrier_marginkd.data.scorefiles import ScoreFile, read_score_file, write_score_file
    from pyterrier_marginkd.models.cascade import Cascade
    from pyterrier_marginkd.models.colbert import ColBERT
    from pyterrier_marginkd.models.cross_encoder import CrossEncoder
    from pyterrier_marginkd.models.crossfit import CrossFitted
    from pyterrier_marginkd.models.docstore import DocumentStore
    from pyterrier_marginkd.models.dot import DotEncoder
    from pyterrier_marginkd.models.ensemble import Ensemble, FirstStageScore, normalize_scores
    from pyterrier_marginkd.models.hf import spread_layers
    from pyterrier_marginkd.models.io import default_model, load
    from pyterrier_marginkd.models.pretts import PreTT
    from pyterrier_marginkd.models.tk import TK
    from pyterrier_marginkd.report import report
    from pyterrier_marginkd.training.checkpoints import unmap_large_blocks
    from pyterrier_marginkd.training.distiller import Distiller
    from pyterrier_marginkd.training.once import fit_once
    from pyterrier_marginkd.training.settings import TrainSettings
    from pyterrier_marginkd.training.teachers import choose_teacher


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name] or name}")
        value = module if _EXPORTS[name] is None else getattr(module, name)
    elif name in _MOVED:
        value = importlib.import_module(f"{__name__}.{_MOVED[name]}")
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # a submodule, e.g. pyterrier_marginkd.data
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """This package's module type: importing the submodule ``pyterrier_marginkd.report`` does not rebind the package
    attribute ``report`` (the function) to that module, as the import system otherwise would."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "report" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
