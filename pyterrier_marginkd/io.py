"""Saving and loading models: our JSON config beside Hugging Face files, atomic writes, PyTerrier artifacts."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

CONFIG_NAME = "marginkd.json"
ARTIFACT_TYPE = "marginkd_model"
FORMAT_VERSION = 1

#: architecture name (as written in marginkd.json) -> "module:Class" of the model that loads it
ARCHITECTURES = {
    "cross_encoder": "pyterrier_marginkd.cross_encoder:CrossEncoder",
}


def model_class(architecture: str) -> type:
    """The model class registered for ``architecture``."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r} in {CONFIG_NAME}; known: {sorted(ARCHITECTURES)}")
    module, name = ARCHITECTURES[architecture].split(":")
    return getattr(importlib.import_module(module), name)


def read_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """Our config of a saved model folder, or None when the folder has none (e.g. a plain Hugging Face model)."""
    path = Path(path)
    file = path / CONFIG_NAME
    if not file.exists():
        return None
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); the folder is damaged — save the model again") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise ValueError(f"{file} has no 'architecture' entry; it was not written by pyterrier-marginkd")
    return config


def load(path: str | os.PathLike, **kwargs: Any):
    """Load any model saved by pyterrier-marginkd (``save_pretrained``), whatever its architecture."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no saved model folder at {str(path)!r}")
    config = read_config(path)
    if config is None:
        raise ValueError(f"{str(path)!r} has no {CONFIG_NAME}: it is not a pyterrier-marginkd model. A plain Hugging "
                         "Face checkpoint loads with e.g. CrossEncoder.from_pretrained(path).")
    return model_class(config["architecture"]).from_pretrained(path, **kwargs)


def load_artifact(path: str, **kwargs: Any):
    """Entry point for ``pt.Artifact.load(path)``."""
    return load(path, **kwargs)


def write_config(path: str | os.PathLike, architecture: str, settings: dict[str, Any]) -> None:
    """Write marginkd.json and PyTerrier's pt_meta.json into a model folder being saved."""
    path = Path(path)
    config = {"architecture": architecture, "format_version": FORMAT_VERSION, **settings}
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    meta = {"type": ARTIFACT_TYPE, "format": architecture, "package_hint": "pyterrier-marginkd"}
    (path / "pt_meta.json").write_text(json.dumps(meta))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target`` that replaces ``target`` only once the block succeeds.

    A crash or an exception inside the block leaves ``target`` as it was (old contents or absent).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
