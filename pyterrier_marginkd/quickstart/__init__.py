"""The quickstart (``marginkd quickstart``): one collection, a teacher, distilled students and the label-only
baseline in one report. ``recipe`` says what it spends, ``stages`` keeps what it trains, ``run`` runs it."""
from pyterrier_marginkd.quickstart.recipe import (
                                                  ARCHITECTURE_RECIPES,
                                                  ARCHITECTURES,
                                                  DEFAULT_DATA,
                                                  DEFAULT_OUTPUT,
                                                  FAST,
                                                  FULL,
                                                  STUDENT_LOSSES,
                                                  ArchitectureRecipe,
                                                  Recipe,
)
from pyterrier_marginkd.quickstart.run import (
                                                  DEPLOYED_FILE,
                                                  DOC_VECTORS_FILE,
                                                  TEACHER_FILE,
                                                  TIMINGS_FILE,
                                                  VS_LABELS_FILE,
                                                  quickstart,
)
from pyterrier_marginkd.quickstart.stages import FUSION_FILE

__all__ = ["ARCHITECTURES", "ARCHITECTURE_RECIPES", "ArchitectureRecipe", "DEFAULT_DATA", "DEFAULT_OUTPUT",
           "DEPLOYED_FILE", "DOC_VECTORS_FILE", "FAST", "FULL", "FUSION_FILE", "STUDENT_LOSSES",
           "TEACHER_FILE", "TIMINGS_FILE", "VS_LABELS_FILE", "Recipe", "quickstart"]
