"""pyterrier-marginkd: distilled neural re-ranking for PyTerrier (Margin-MSE knowledge distillation)."""
from pyterrier_marginkd import losses
from pyterrier_marginkd.collection import Collection, clean_query, shared_data_dir
from pyterrier_marginkd.cross_encoder import CrossEncoder
from pyterrier_marginkd.distill import Distiller
from pyterrier_marginkd.io import load
from pyterrier_marginkd.pseudo import pseudo_queries
from pyterrier_marginkd.report import report

__version__ = "0.1.0"

__all__ = [
    "Collection",
    "CrossEncoder",
    "Distiller",
    "clean_query",
    "load",
    "losses",
    "pseudo_queries",
    "report",
    "shared_data_dir",
]
