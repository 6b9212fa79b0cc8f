"""``import pyterrier_marginkd`` (and so ``marginkd --help`` and PyTerrier's start-up) imports neither
torch nor PyTerrier; the public names, submodule attributes and ``mkd.report`` (the function) work as before."""
from __future__ import annotations

import json
import subprocess
import sys
import types

from conftest import PROJECT

import pyterrier_marginkd as mkd

HEAVY = ("torch", "transformers", "pyterrier", "pandas")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_package_imports_nothing_heavy():
    code = f"import sys, json, pyterrier_marginkd\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    assert json.loads(_run(code)) == []


def test_every_public_name_resolves_and_all_is_complete():
    assert {"FirstStageScore", "normalize_scores", "report", "losses", "load", "CrossEncoder"} <= set(mkd.__all__)
    assert sorted(mkd.__all__) == sorted(mkd._EXPORTS)
    for name in mkd.__all__:
        assert getattr(mkd, name) is not None, name
    from pyterrier_marginkd.models.ensemble import FirstStageScore, normalize_scores

    assert mkd.FirstStageScore is FirstStageScore and mkd.normalize_scores is normalize_scores
    assert isinstance(mkd.losses, types.ModuleType) and mkd.losses.MarginMSE
    assert set(mkd.__all__) <= set(dir(mkd))


def test_report_stays_the_function_after_its_module_is_imported():
    code = ("import json, pyterrier_marginkd as mkd\nimport pyterrier_marginkd.report\n"
            "from pyterrier_marginkd.report import CSV_FILE\n"
            "first = callable(mkd.report) and not isinstance(mkd.report, type(mkd))\n"
            "import pyterrier_marginkd as again\n"
            "print(json.dumps([first, again.report.__name__, again.report.__module__]))")
    assert json.loads(_run(code)) == [True, "report", "pyterrier_marginkd.report"]
    assert callable(mkd.report) and mkd.report.__module__ == "pyterrier_marginkd.report"


def test_submodules_are_attributes_and_unknown_names_are_attribute_errors():
    assert mkd.collection.DERIVED_SPLITS == ("train", "test")
    assert isinstance(mkd.data, types.ModuleType) and isinstance(mkd.io, types.ModuleType)
    try:
        mkd.no_such_name
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_pyterrier_exposes_the_package_through_its_entry_point():
    code = "import pyterrier as pt, pyterrier_marginkd as mkd\nprint(pt.marginkd.CrossEncoder is mkd.CrossEncoder)"
    assert _run(code) == "True"
