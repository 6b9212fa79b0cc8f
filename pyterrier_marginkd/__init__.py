"""pyterrier-marginkd: distilled neural re-ranking for PyTerrier (Margin-MSE knowledge distillation)."""
from pyterrier_marginkd import losses
from pyterrier_marginkd.cascade import Cascade
from pyterrier_marginkd.colbert import ColBERT
from pyterrier_marginkd.collection import Collection, clean_query, shared_data_dir
from pyterrier_marginkd.cross_encoder import CrossEncoder
from pyterrier_marginkd.distill import Distiller
from pyterrier_marginkd.docpairs import DocPairs
from pyterrier_marginkd.dot import DotEncoder
from pyterrier_marginkd.ensemble import Ensemble
from pyterrier_marginkd.io import load
from pyterrier_marginkd.pretts import PreTT
from pyterrier_marginkd.pseudo import pseudo_qrels, pseudo_queries
from pyterrier_marginkd.report import report
from pyterrier_marginkd.scorefiles import ScoreFile, read_score_file, write_score_file
from pyterrier_marginkd.tk import TK

__version__ = "0.1.0"

__all__ = [
    "TK",
    "Cascade",
    "ColBERT",
    "Collection",
    "CrossEncoder",
    "Distiller",
    "DocPairs",
    "DotEncoder",
    "Ensemble",
    "PreTT",
    "ScoreFile",
    "clean_query",
    "load",
    "losses",
    "pseudo_qrels",
    "pseudo_queries",
    "read_score_file",
    "report",
    "shared_data_dir",
    "write_score_file",
]
