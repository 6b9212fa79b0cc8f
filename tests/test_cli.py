"""The marginkd command line: names of evaluated models, start-up without heavy imports, option checks."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from conftest import PROJECT

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.report import CSV_FILE


def test_unique_names_are_the_shortest_distinguishing_path_suffixes():
    assert cli.unique_names(["runs/kd/student", "runs/labels/student"]) == ["kd/student", "labels/student"]
    assert cli.unique_names(["runs/kd/student", "other"]) == ["student", "other"]
    assert cli.unique_names(["student", "x/student"]) == ["student", "x/student"]
    assert cli.unique_names(["a/kd/student/", "b/kd/student"]) == ["a/kd/student", "b/kd/student"]
    assert cli.unique_names(["cross-encoder/ms-marco-MiniLM-L6-v2"]) == ["ms-marco-MiniLM-L6-v2"]
    assert cli.unique_names(["runs/BM25"]) == ["runs/BM25"]  # never the baseline's name
    with pytest.raises(SystemExit, match="given twice"):
        cli.unique_names(["runs/kd/student", "./runs/kd/student"])


def test_evaluate_names_two_students_apart_in_the_report(cranfield, tiny_bert_dir, tmp_path):
    for run in ("kd", "labels"):
        shutil.copytree(tiny_bert_dir, tmp_path / "runs" / run / "student")
    common = ["evaluate", "--data", str(cranfield.path), "--k", "3", "--num-queries", "2", "--output", str(tmp_path)]
    models = [str(tmp_path / "runs" / "kd" / "student"), str(tmp_path / "runs" / "labels" / "student")]
    cli.main([*common, *models, "--report", str(tmp_path / "report")])
    assert list(pd.read_csv(tmp_path / "report" / CSV_FILE)["name"]) == ["BM25", "kd/student", "labels/student"]
    cli.main([*common, *models, "--csv", str(tmp_path / "table.csv")])
    assert list(pd.read_csv(tmp_path / "table.csv")["name"]) == ["BM25", "kd/student", "labels/student"]
    with pytest.raises(SystemExit, match="used twice"):
        cli.main([*common, *models, "--names", "a", "a"])
    with pytest.raises(SystemExit, match="used twice"):
        cli.main([*common, models[0], "--names", "BM25"])


# Imports pyterrier_marginkd.cli without running the package's __init__ (which imports every model, hence torch),
# runs `marginkd ARGS` and prints which heavy modules were imported.
STUB_DRIVER = textwrap.dedent("""
    import json, sys, types
    package = types.ModuleType("pyterrier_marginkd")
    package.__path__ = [sys.argv[1]]
    sys.modules["pyterrier_marginkd"] = package
    from pyterrier_marginkd import cli
    try:
        cli.main(sys.argv[2:])
        code = None
    except SystemExit as exit:
        code = exit.code
    heavy = [m for m in ("torch", "transformers", "pyterrier", "pandas", "ir_datasets") if m in sys.modules]
    print(json.dumps({"code": code, "heavy": heavy}))
""")
HEAVY = ("torch", "transformers", "pyterrier")


def _run_cli_module_alone(*args: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", STUB_DRIVER, str(PROJECT / "pyterrier_marginkd"), *args],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT)
    *lines, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(lines) + done.stderr


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["score-teacher", "-h"],
                                  ["quickstart", "--help"], ["rerank", "--help"], ["train"], ["evaluate"], ["rerank"],
                                  ["train", "--epochs", "x"]])
def test_help_and_argument_errors_import_nothing_heavy(args):
    result, output = _run_cli_module_alone(*args)
    assert result["code"] == (0 if "--help" in args or "-h" in args else 2), output
    assert result["heavy"] == [], f"marginkd {' '.join(args)} imported {result['heavy']}"
    assert "usage: marginkd" in output


def test_the_installed_command_answers_help_without_heavy_imports():
    code = ("import sys; from pyterrier_marginkd import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n"
            f"    pass\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _command_parser(name: str) -> argparse.ArgumentParser:
    return _commands()[name]


def _options():
    for name, sub in _commands().items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                yield name, sub, action


def test_every_option_has_help_and_shows_its_default():
    for command, sub, action in _options():
        option = f"marginkd {command} {'/'.join(action.option_strings) or action.dest}"
        if action.help == argparse.SUPPRESS:
            assert action.option_strings == ["--out"], f"{option} is hidden"
            continue
        assert action.help, f"{option} has no help text"
        text = "".join(sub.format_help().split())  # without the line wrapping
        if action.default not in (None, False):
            assert "".join(f"(default: {action.default})".split()) in text, f"{option} does not show its default"
    help_text = " ".join(_command_parser("train").format_help().split())
    assert "(default: 3e-05)" in help_text and "(default: margin-mse)" in help_text


def test_evaluate_writes_the_table_with_csv_and_hides_the_old_out():
    parser = cli.build_parser()
    assert parser.parse_args(["evaluate", "m", "--csv", "t.csv"]).csv == "t.csv"
    assert parser.parse_args(["evaluate", "m", "--out", "t.csv"]).out == "t.csv"  # deprecated, still accepted
    evaluate = _command_parser("evaluate").format_help()
    assert "--csv" in evaluate and "--output" in evaluate and not re.search(r"--out\b(?!put)", evaluate)


def test_the_parser_copies_of_library_constants_agree_with_the_library(monkeypatch, tmp_path):
    from pyterrier_marginkd import losses, quickstart
    from pyterrier_marginkd.data import collection, scorefiles

    assert cli.FORMATS == scorefiles.FORMATS
    assert cli.LOSS_NAMES == tuple(sorted(losses.LOSSES))
    assert (cli.QUICKSTART_DATA, cli.QUICKSTART_OUTPUT) == (quickstart.DEFAULT_DATA, quickstart.DEFAULT_OUTPUT)
    # every command defaults to the same public collection; nothing in the library points at this repository's
    # data layout (../shared/data is for the tests, examples and benchmarks)
    assert _command_parser("train").get_default("data") == cli.DEFAULT_DATA == cli.QUICKSTART_DATA
    assert not hasattr(collection, "shared_data_dir") and "shared_data_dir" not in dir(mkd)
    for command in ("train", "evaluate", "score-teacher", "quickstart", "rerank"):
        assert "shared" not in _command_parser(command).format_help()
    with pytest.raises(FileNotFoundError, match="docs.jsonl.gz, topics.<split>.tsv") as error:
        collection.Collection(tmp_path)
    assert "shared" not in str(error.value)
    # the model defaults live in the library (the quickstart and the benchmarks import them there); the CLI uses them
    from pyterrier_marginkd.cli import commands
    from pyterrier_marginkd.models import io

    assert cli.default_model is io.default_model and commands.load_reranker is io.load_reranker


def test_load_model_names_a_missing_folder_without_asking_the_hub(tmp_path, monkeypatch):
    from pyterrier_marginkd.cli import commands
    from pyterrier_marginkd.models.cross_encoder import CrossEncoder

    def no_hub(*args, **kwargs):
        raise AssertionError("a missing local folder was looked up as a hub id")
    monkeypatch.setattr(CrossEncoder, "from_pretrained", classmethod(no_hub))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/teacher/student", "./teacher", str(tmp_path / "nothing")):
        with pytest.raises(FileNotFoundError, match=f"model folder {re.escape(repr(name))} does not exist"):
            commands.load_reranker(name)


def test_quickstart_flags_reach_the_recipe(monkeypatch):
    import pyterrier_marginkd.quickstart as quickstart_module

    seen = {}
    monkeypatch.setattr(quickstart_module, "quickstart", lambda *a, recipe, **kw: seen.update(recipe=recipe))
    cli.main(["quickstart", "--fast", "--query-words-per-step", "512", "--align-steps", "7", "--teacher-steps", "9"])
    recipe = seen["recipe"]
    assert (recipe.query_words_per_step, recipe.align_steps, recipe.teacher_steps) == (512, 7, 9)
    cli.main(["quickstart", "--fast", "--query-words-per-step", "0"])
    assert seen["recipe"].query_words_per_step is None and seen["recipe"].batch_size == 32
    cli.main(["quickstart", "--fast", "--students-start", "model"])
    assert seen["recipe"].students_from_tuned is False
    cli.main(["quickstart", "--fast", "--students-start", "tuned"])
    assert seen["recipe"].students_from_tuned is True
    cli.main(["quickstart", "--fast", "--amp"])
    assert seen["recipe"].amp is True
    assert seen["recipe"].query_max_length == 64  # --fast cuts queries (only paragraph-long ones) to 64 tokens
    cli.main(["quickstart", "--fast", "--query-max-length", "128"])
    assert seen["recipe"].query_max_length == 128 and seen["recipe"].query_length == 128
    cli.main(["quickstart", "--fast", "--query-max-length", "0"])
    assert seen["recipe"].query_max_length is None and seen["recipe"].query_length is None
    cli.main(["quickstart", "--fast", "--max-length", "48"])
    assert seen["recipe"].query_length is None  # never beyond the documents' max_length
    cli.main(["quickstart", "--fast", "--no-amp"])
    assert seen["recipe"].amp is False
    cli.main(["quickstart", "--fast", "--kl-temperature", "0.5"])
    assert seen["recipe"].kl_temperature == 0.5
    cli.main(["quickstart", "--fast"])
    assert seen["recipe"] == quickstart_module.FAST
