"""Loading untrusted artifacts: weights only from safetensors, trainer state without pickled objects, and a damaged
or mismatched saved folder refused with an error that names the file."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CountingTeacher
from safetensors.torch import load_file, save_file

import pyterrier_marginkd as mkd
from pyterrier_marginkd.distill import STATE_FILE

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


class Exploit:
    """Unpickling this creates a file: proof that a loader ran pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def saved(tiny_bert_dir, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("saved") / "model"
    mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(saved, small_results_module, tmp_path_factory) -> Path:
    """Output folder of a short Distiller run: checkpoint/, student/, teacher_cache/."""
    output = tmp_path_factory.mktemp("trained") / "run"
    qrels = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d4"], "label": [1, 1]})
    mkd.Distiller(mkd.CrossEncoder.from_pretrained(saved), CountingTeacher(), batch_size=1, epochs=2,
                  output_dir=output).fit(small_results_module, qrels)
    return output


@pytest.fixture(scope="module")
def small_results_module() -> pd.DataFrame:
    return pd.DataFrame({"qid": ["q1"] * 3 + ["q2"] * 2, "query": ["wing flutter"] * 3 + ["heat transfer"] * 2,
                         "docno": ["d1", "d2", "d3", "d1", "d4"],
                         "text": ["flutter of a wing", "heat transfer", "supersonic flow", "flutter of a wing",
                                  "heat transfer in a boundary layer"]})


def test_saved_weights_are_safetensors_only(saved, trained):
    for folder in (saved, trained / "student", trained / "checkpoint"):
        names = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in names
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


def _truncate(path: Path) -> None:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:len(data) // 2])


def _without_head(path: Path) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("classifier")}, str(path / "model.safetensors"),
              metadata={"format": "pt"})


def _edit_json(name: str, **changes):
    def edit(path: Path) -> None:
        config = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps({**config, **changes}))
    return edit


def _pickle_instead(path: Path) -> None:
    (path / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": Exploit(path / "exploited")}, path / "pytorch_model.bin")


DAMAGE = {
    "marginkd.json missing": (lambda p: (p / "marginkd.json").unlink(), ValueError, "marginkd.json"),
    "marginkd.json not JSON": (lambda p: (p / "marginkd.json").write_text("{"), ValueError, "marginkd.json"),
    "unknown architecture": (_edit_json("marginkd.json", architecture="no_such_arch"), ValueError, "no_such_arch"),
    "config.json missing": (lambda p: (p / "config.json").unlink(), ValueError, "config.json"),
    "config.json not JSON": (lambda p: (p / "config.json").write_text("{"), OSError, "config.json"),
    "config.json of another size": (_edit_json("config.json", hidden_size=64, intermediate_size=128), ValueError,
                                    "config.json"),
    "model.safetensors missing": (lambda p: (p / "model.safetensors").unlink(), ValueError, "model.safetensors"),
    "model.safetensors truncated": (_truncate, ValueError, "model.safetensors"),
    "model.safetensors empty": (lambda p: (p / "model.safetensors").write_bytes(b""), ValueError, "model.safetensors"),
    "score head missing": (_without_head, ValueError, r"model.safetensors.*classifier"),
    "pickle instead of safetensors": (_pickle_instead, ValueError, "model.safetensors"),
    "tokenizer missing": (lambda p: (p / "tokenizer.json").unlink(), ValueError, "tokenizer.json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_folder_is_refused_naming_the_file(saved, tmp_path, damage):
    change, error, pattern = DAMAGE[damage]
    path = tmp_path / "model"
    shutil.copytree(saved, path)
    change(path)
    with pytest.raises(error, match=pattern):
        mkd.load(path)
    if (path / "marginkd.json").exists():  # the class itself refuses too, not only mkd.load
        with pytest.raises(error, match=pattern):
            mkd.CrossEncoder.from_pretrained(path)
    assert not (path / "exploited").exists()


def test_the_intact_folder_loads(saved):
    assert isinstance(mkd.load(saved), mkd.CrossEncoder)
    assert not os.path.exists(saved / "exploited")
