"""What pyproject.toml declares: the marginkd command's entry point and the library's dependencies."""
from __future__ import annotations

import importlib
import re

import pytest
from conftest import PROJECT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

#: how the library uses each declared dependency (an import name, or the text that uses it)
USES = {
    "pyterrier": "import pyterrier", "torch": "import torch", "transformers": "from transformers",
    "safetensors": "from safetensors", "numpy": "import numpy", "pandas": "import pandas",
    "tqdm": "pt.tqdm", "ir_datasets": "import ir_datasets", "ir_measures": "ir_measures",
    "pyterrier-pisa": "from pyterrier_pisa", "pyterrier-caching": "from pyterrier_caching",
    "pyterrier-dr": "import pyterrier_dr",
}


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)


def test_library_dependencies_are_ranges_and_all_used(project):
    sources = "\n".join(p.read_text() for p in (PROJECT / "pyterrier_marginkd").rglob("*.py"))
    for requirement in project["dependencies"]:
        assert "==" not in requirement, f"{requirement!r}: a library gives a range, not a pin"
        name = _name(requirement)
        assert name in USES, f"{name} is declared but this test does not know how the library uses it"
        assert USES[name] in sources, f"{name} is declared but never used ({USES[name]!r} is nowhere)"


def test_transformers_lower_bound_has_the_mask_function_pretts_calls(project):
    """create_bidirectional_mask appeared in transformers 5.0; its argument is inputs_embeds from 5.2 on."""
    transformers = next(r for r in project["dependencies"] if _name(r) == "transformers")
    bound = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", transformers).group(1).split("."))
    assert bound >= (5, 2), f"{transformers!r} allows releases without create_bidirectional_mask(inputs_embeds=)"


def test_the_marginkd_command_points_at_the_cli(project):
    module, function = project["scripts"]["marginkd"].split(":")
    assert callable(getattr(importlib.import_module(module), function))
