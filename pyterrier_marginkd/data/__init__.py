"""Training data and collections: groups of a query's passages (:mod:`.groups`), streamed teacher-score files
(:mod:`.scorefiles`) and docpairs (:mod:`.docpairs`), pseudo-queries (:mod:`.pseudo`), collections (:mod:`.collection`)
and the frame checks that models share (:mod:`.frames`). Data imports no models, losses or training.
"""
from __future__ import annotations

from pyterrier_marginkd.data.groups import (
    NEGATIVE_SAMPLING,
    AnnotatedGroups,
    Group,
    GroupSource,
    TeacherRankedExamples,
    TrainingExamples,
    validate_qrels,
    validate_training_results,
)

__all__ = ["NEGATIVE_SAMPLING", "AnnotatedGroups", "Group", "GroupSource", "TeacherRankedExamples",
           "TrainingExamples", "validate_qrels", "validate_training_results"]
