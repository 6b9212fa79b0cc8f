"""Loading untrusted artifacts: weights only from safetensors, trainer state without pickled objects, and a damaged
or mismatched saved folder refused with an error that names the file."""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CountingTeacher
from safetensors.torch import load_file, save_file

import pyterrier_marginkd as mkd
from pyterrier_marginkd import _files
from pyterrier_marginkd.training.checkpoints import STATE_FILE

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}

#: a tiny model of every architecture, and the safetensors files its saved folder holds
ARCHITECTURES = {
    "cross_encoder": (lambda path: mkd.CrossEncoder(path, max_length=32), ["model.safetensors"]),
    "dot": (lambda path: mkd.DotEncoder(path, pooling="mean", dim=8, shared_encoder=False, max_length=32),
            ["model.safetensors", "marginkd.safetensors", "doc_encoder/model.safetensors"]),
    "colbert": (lambda path: mkd.ColBERT(path, dim=16, max_length=32), ["model.safetensors", "marginkd.safetensors"]),
    "pretts": (lambda path: mkd.PreTT(path, max_length=32), ["model.safetensors", "marginkd.safetensors"]),
    "tk": (lambda path: mkd.TK(path, num_layers=1, num_heads=2, ff_dim=16, max_length=32), ["marginkd.safetensors"]),
}


class Exploit:
    """Unpickling this creates a file: proof that a loader ran pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def saved_models(tiny_bert_dir, tmp_path_factory):
    """architecture -> folder of a saved tiny model of it (each built on first use)."""
    folders: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in folders:
            torch.manual_seed(0)
            folders[architecture] = tmp_path_factory.mktemp(architecture) / "model"
            ARCHITECTURES[architecture][0](tiny_bert_dir).save_pretrained(folders[architecture])
        return folders[architecture]
    return get


@pytest.fixture(scope="module")
def saved(saved_models) -> Path:
    return saved_models("cross_encoder")


@pytest.fixture(scope="module")
def trained(saved, small_results_module, tmp_path_factory) -> Path:
    """Output folder of a short Distiller run: checkpoint/, student/, teacher_cache/."""
    output = tmp_path_factory.mktemp("trained") / "run"
    qrels = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d4"], "label": [1, 1]})
    mkd.Distiller(mkd.CrossEncoder.from_pretrained(saved), CountingTeacher(), batch_size=1, epochs=2,
                  output_dir=output, keep_checkpoint=True).fit(small_results_module, qrels)
    return output


@pytest.fixture(scope="module")
def small_results_module() -> pd.DataFrame:
    return pd.DataFrame({"qid": ["q1"] * 3 + ["q2"] * 2, "query": ["wing flutter"] * 3 + ["heat transfer"] * 2,
                         "docno": ["d1", "d2", "d3", "d1", "d4"],
                         "text": ["flutter of a wing", "heat transfer", "supersonic flow", "flutter of a wing",
                                  "heat transfer in a boundary layer"]})


def test_saved_weights_are_safetensors_only(saved_models, trained):
    folders = [saved_models(a) for a in ARCHITECTURES] + [trained / "student", trained / "checkpoint"]
    for folder in folders:
        names = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert any(n.endswith(".safetensors") for n in names)
        pickles = {n for n in names if Path(n).suffix in PICKLE_SUFFIXES} - {STATE_FILE}
        assert not pickles, f"{folder} holds pickled files {pickles}"


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return {str(k) for k in value} | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, (list, tuple)):
        return {k for v in value for k in _keys(v)}
    return set()


def test_trainer_state_holds_training_state_not_the_model(trained):
    state = torch.load(trained / "checkpoint" / STATE_FILE, weights_only=True)  # what resume does
    assert {"optimizer", "scheduler", "rng", "step", "fingerprint"} <= set(state)
    weights = load_file(str(trained / "checkpoint" / "model.safetensors"))
    assert not _keys(state) & set(weights), "model weights are pickled in the trainer state"
    assert len(state["optimizer"]["state"]) == len(weights)  # AdamW moments per parameter


def test_a_pickled_object_in_the_trainer_state_is_refused_unrun(saved, trained, small_results_module, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(trained, output)
    marker = tmp_path / "exploited"
    state = torch.load(output / "checkpoint" / STATE_FILE, weights_only=True)
    torch.save({**state, "step": Exploit(marker)}, output / "checkpoint" / STATE_FILE)
    qrels = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d4"], "label": [1, 1]})
    distiller = mkd.Distiller(mkd.CrossEncoder.from_pretrained(saved), CountingTeacher(), batch_size=1, epochs=2,
                              output_dir=output)
    with pytest.raises(ValueError, match=STATE_FILE):
        distiller.fit(small_results_module, qrels)
    assert not marker.exists()


def _truncate(name: str):
    def change(path: Path) -> None:
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[:len(data) // 2])
    return change


def _without_head(path: Path) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("classifier")}, str(path / "model.safetensors"),
              metadata={"format": "pt"})


def _edit_json(name: str, **changes):
    def edit(path: Path) -> None:
        config = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps({**config, **changes}))
    return edit


def _pickle_instead(name: str):
    def change(path: Path) -> None:
        (path / name).unlink()
        torch.save({"embeddings.word_embeddings.weight": Exploit(path / "exploited")},
                   (path / name).with_name("pytorch_model.bin"))
    return change


def _damages(architecture: str) -> dict[str, tuple]:
    """What can go wrong with a saved folder of ``architecture``: (change, error type, pattern of the message)."""
    files = ARCHITECTURES[architecture][1]
    cases = {
        "marginkd.json missing": (lambda p: (p / "marginkd.json").unlink(), ValueError, "marginkd.json"),
        "marginkd.json not JSON": (lambda p: (p / "marginkd.json").write_text("{"), ValueError, "marginkd.json"),
        "unknown architecture": (_edit_json("marginkd.json", architecture="no_such_arch"), ValueError,
                                 "no_such_arch"),
        "tokenizer missing": (lambda p: (p / "tokenizer.json").unlink(), ValueError, "tokenizer.json"),
    }
    for name in files:
        cases[f"{name} missing"] = (lambda p, n=name: (p / n).unlink(), ValueError, Path(name).name)
        cases[f"{name} truncated"] = (_truncate(name), ValueError, Path(name).name)
        cases[f"{name} empty"] = (lambda p, n=name: (p / n).write_bytes(b""), ValueError, Path(name).name)
    if "model.safetensors" in files:
        cases["config.json missing"] = (lambda p: (p / "config.json").unlink(), ValueError, "config.json")
        cases["config.json not JSON"] = (lambda p: (p / "config.json").write_text("{"), (OSError, ValueError),
                                         "config.json")
        cases["config.json of another size"] = (_edit_json("config.json", hidden_size=64, intermediate_size=128),
                                                ValueError, "config.json")
        cases["pickle instead of model.safetensors"] = (_pickle_instead("model.safetensors"), ValueError,
                                                        "model.safetensors")
    if architecture == "cross_encoder":
        cases["score head missing"] = (_without_head, ValueError, r"model.safetensors.*classifier")
    if architecture == "tk":
        cases["weights of another TK"] = (_edit_json("marginkd.json", ff_dim=32), ValueError, "marginkd.safetensors")
    return cases


@pytest.mark.parametrize(("architecture", "damage"), [(a, d) for a in ARCHITECTURES for d in sorted(_damages(a))])
def test_a_damaged_folder_is_refused_naming_the_file(saved_models, tmp_path, architecture, damage):
    change, error, pattern = _damages(architecture)[damage]
    path = tmp_path / "model"
    shutil.copytree(saved_models(architecture), path)
    change(path)
    with pytest.raises(error, match=pattern):
        mkd.load(path)
    if (path / "marginkd.json").exists():  # the class itself refuses too, not only mkd.load
        with pytest.raises(error, match=pattern):
            mkd.io.model_class(architecture).from_pretrained(path)
    assert not (path / "exploited").exists()


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_the_intact_folder_loads_to_the_same_scores(saved_models, small_results_module, architecture):
    model = mkd.load(saved_models(architecture))
    assert isinstance(model, mkd.io.model_class(architecture))
    again = mkd.load(saved_models(architecture))
    np.testing.assert_allclose(model(small_results_module)["score"], again(small_results_module)["score"])


@pytest.fixture()
def umask():
    """Run a test under a chosen umask (the process's is restored afterwards)."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                             (0o002, 0o775, 0o664)])
def test_saved_folders_follow_the_umask(umask, tmp_path, mask, dir_mode, file_mode):
    umask(mask)
    target = tmp_path / "model"
    for _ in range(2):  # a new folder, then one replacing it
        with _files.atomic_dir(target) as tmp:
            (tmp / "plain.json").write_text("{}")
            fd, private = tempfile.mkstemp(dir=tmp)  # what writers that rename a temporary file leave: 0600
            os.close(fd)
            os.replace(private, tmp / "weights.safetensors")
            sub = Path(tempfile.mkdtemp(dir=tmp))  # 0700
            (sub / "inner.txt").write_text("x")
            script = tmp / "run.sh"
            script.write_text("#!/bin/sh\n")
            script.chmod(0o700)
        assert _mode(target) == dir_mode
        for file in ("plain.json", "weights.safetensors", next(target.glob("tmp*")) / "inner.txt"):
            assert _mode(target / file) == file_mode, file
        assert _mode(next(target.glob("tmp*"))) == dir_mode
        assert _mode(target / "run.sh") == dir_mode  # executable stays executable


def test_a_saved_model_folder_is_readable_by_others_under_umask_022(umask, tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=32).save_pretrained(tmp_path / "saved")
    assert _mode(tmp_path / "saved") == 0o755
    assert {f.name: _mode(f) for f in (tmp_path / "saved").iterdir()} == \
        {f.name: 0o644 for f in (tmp_path / "saved").iterdir()}


@pytest.mark.parametrize("name", ["/no/such/model", "./missing", "../missing-model", "~/no-such-model-here",
                                  "runs/teacher", "a/b/c", ".", "runs/kd/student/"])
def test_a_missing_local_model_folder_is_named_at_once(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    if name == ".":
        mkd.io.check_model_path(name)  # exists
        return
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mkd.io.check_model_path(name)


@pytest.mark.parametrize("name", ["cross-encoder/ms-marco-MiniLM-L6-v2", "bert-base-uncased", "org/name"])
def test_hub_ids_are_left_to_the_hub(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mkd.io.check_model_path(name)
    mkd.io.check_model_path(Path(tmp_path))  # an existing folder passes too
