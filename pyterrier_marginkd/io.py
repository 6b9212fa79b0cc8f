"""Saving and loading models: our JSON config beside Hugging Face files, atomic writes, PyTerrier artifacts."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Iterator, Sequence

CONFIG_NAME = "marginkd.json"
ARTIFACT_TYPE = "marginkd_model"
FORMAT_VERSION = 1

#: architecture name (as written in marginkd.json) -> "module:Class" of the model that loads it
ARCHITECTURES = {
    "cross_encoder": "pyterrier_marginkd.cross_encoder:CrossEncoder",
    "dot": "pyterrier_marginkd.dot:DotEncoder",
    "colbert": "pyterrier_marginkd.colbert:ColBERT",
    "pretts": "pyterrier_marginkd.pretts:PreTT",
    "tk": "pyterrier_marginkd.tk:TK",
}
#: file holding the weights a model adds to its Hugging Face encoder (projections, score heads), or all of TK's
WEIGHTS_NAME = "marginkd.safetensors"


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


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(target: str | os.PathLike) -> None:
    """Tidy up after a process killed inside :func:`atomic_dir` for ``target``.

    Leftover ``.<name>.tmp-<pid>-*`` folders of dead processes (half-written, never used) are deleted; if ``target``
    itself is missing because the kill fell between moving the old version aside and moving the new one in, the old
    version (``.<name>.old-<pid>``, complete) is put back. Folders of processes still running are left alone.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)")
    stale = []
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _owner_alive(int(match.group(2))):
            stale.append((match.group(1), entry))
    olds = sorted((e for kind, e in stale if kind == "old"), key=lambda e: e.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for _, entry in stale:
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)


def _make_dir(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/prefix<random>`` made as ``mkdir`` makes one: its mode follows the user's umask (unlike
    ``tempfile.mkdtemp``, whose folders are always 0700)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a new temporary folder {prefix}* in {parent}")


def _follow_umask(file: Path, dir_mode: int) -> None:
    """Give ``file`` the mode a plain ``open`` would (0666, or 0777 for an executable, less the umask): writers that
    go through temporary files (e.g. safetensors files saved by Hugging Face) leave them 0600."""
    mode = stat.S_IMODE(file.stat().st_mode)
    wanted = dir_mode if mode & 0o111 else dir_mode & 0o666
    if mode != wanted:
        os.chmod(file, wanted)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target`` that replaces ``target`` only once the block succeeds.

    The folder and what it holds get the modes ``mkdir`` and ``open`` give under the user's umask (e.g. 0755 and
    0644 under umask 022), whatever the writers inside used.

    A crash or an exception inside the block leaves ``target`` as it was (old contents or absent); what a killed
    process left behind is tidied up by the next ``atomic_dir`` (or :func:`recover_dir`) for the same target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = _make_dir(target.parent, f".{target.name}.tmp-{os.getpid()}-")
    try:
        yield tmp
        dir_mode = stat.S_IMODE(tmp.stat().st_mode)  # what mkdir gives under the user's umask (and default ACLs)
        for file in tmp.rglob("*"):
            if file.is_symlink():
                continue
            if file.is_dir():
                os.chmod(file, dir_mode)
            elif file.is_file():
                _follow_umask(file, dir_mode)
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
