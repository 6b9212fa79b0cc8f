"""pyterrier-marginkd: distilled neural re-ranking for PyTerrier (Margin-MSE knowledge distillation)."""
from pyterrier_marginkd import losses
from pyterrier_marginkd.collection import Collection, clean_query, shared_data_dir
from pyterrier_marginkd.cross_encoder import CrossEncoder
from pyterrier_marginkd.distill import Distiller
from pyterrier_marginkd.ensemble import Ensemble
from pyterrier_marginkd.io import load

__version__ = "0.1.0"

__all__ = ["Collection", "CrossEncoder", "Distiller", "Ensemble", "losses", "clean_query", "load", "shared_data_dir"]
