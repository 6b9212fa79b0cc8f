"""pyterrier-marginkd: distilled neural re-ranking for PyTerrier (Margin-MSE knowledge distillation).

The public names are imported on first use (PEP 562), so that ``import pyterrier_marginkd`` (which PyTerrier does at
start-up through its ``pyterrier.modules`` entry point) and ``marginkd --help`` import neither torch nor PyTerrier.
Submodules are attributes as usual (``pyterrier_marginkd.losses``, ``pyterrier_marginkd.collection.Collection``);
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
    "TK": "tk",
    "Cascade": "cascade",
    "ColBERT": "colbert",
    "Collection": "collection",
    "CrossEncoder": "cross_encoder",
    "Distiller": "distill",
    "DocPairs": "docpairs",
    "DocumentStore": "docstore",
    "DotEncoder": "dot",
    "Ensemble": "ensemble",
    "FirstStageScore": "ensemble",
    "PreTT": "pretts",
    "ScoreFile": "scorefiles",
    "clean_query": "collection",
    "default_model": "cli",
    "load": "io",
    "losses": None,
    "normalize_scores": "ensemble",
    "pseudo_qrels": "pseudo",
    "pseudo_queries": "pseudo",
    "read_score_file": "scorefiles",
    "report": "report",
    "spread_layers": "_hf",
    "unmap_large_blocks": "_training",
    "write_score_file": "scorefiles",
}

__all__ = [
    "TK",
    "Cascade",
    "ColBERT",
    "Collection",
    "CrossEncoder",
    "Distiller",
    "DocPairs",
    "DocumentStore",
    "DotEncoder",
    "Ensemble",
    "FirstStageScore",
    "PreTT",
    "ScoreFile",
    "clean_query",
    "default_model",
    "load",
    "losses",
    "normalize_scores",
    "pseudo_qrels",
    "pseudo_queries",
    "read_score_file",
    "report",
    "spread_layers",
    "unmap_large_blocks",
    "write_score_file",
]

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from pyterrier_marginkd import losses
    from pyterrier_marginkd._hf import spread_layers
    from pyterrier_marginkd._training import unmap_large_blocks
    from pyterrier_marginkd.cascade import Cascade
    from pyterrier_marginkd.cli import default_model
    from pyterrier_marginkd.colbert import ColBERT
    from pyterrier_marginkd.collection import Collection, clean_query
    from pyterrier_marginkd.cross_encoder import CrossEncoder
    from pyterrier_marginkd.distill import Distiller
    from pyterrier_marginkd.docpairs import DocPairs
    from pyterrier_marginkd.docstore import DocumentStore
    from pyterrier_marginkd.dot import DotEncoder
    from pyterrier_marginkd.ensemble import Ensemble, FirstStageScore, normalize_scores
    from pyterrier_marginkd.io import load
    from pyterrier_marginkd.pretts import PreTT
    from pyterrier_marginkd.pseudo import pseudo_qrels, pseudo_queries
    from pyterrier_marginkd.report import report
    from pyterrier_marginkd.scorefiles import ScoreFile, read_score_file, write_score_file
    from pyterrier_marginkd.tk import TK


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name] or name}")
        value = module if _EXPORTS[name] is None else getattr(module, name)
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
