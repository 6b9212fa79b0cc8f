"""Folders saved by release 0.1.0 (tests/saved_0.1.0, written by its make.py before the package took its layered
layout) still load, through ``mkd.load`` and PyTerrier's artifact entry points, to the scores they gave then."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyterrier as pt
import pytest

import pyterrier_marginkd as mkd

SAVED = Path(__file__).parent / "saved_0.1.0"
EXPECTED = json.loads((SAVED / "expected.json").read_text())


@pytest.mark.parametrize("architecture", sorted(EXPECTED["scores"]))
def test_a_folder_saved_by_the_previous_release_loads_to_its_scores(architecture):
    for model in (mkd.load(SAVED / architecture), pt.Artifact.load(str(SAVED / architecture))):
        assert isinstance(model, mkd.io.model_class(architecture))
        scores = model.score_pairs(EXPECTED["queries"], EXPECTED["texts"])
        np.testing.assert_allclose(scores, EXPECTED["scores"][architecture], rtol=1e-5, atol=1e-6)
