"""Train once into a folder, then reuse it: a finished fit leaves a record of its settings (``done.json``, written
atomically once the student is saved); a later call with the same settings loads the student instead of training,
and one with other settings is refused rather than mixed with the old run."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.io import load

if TYPE_CHECKING:
    from pyterrier_marginkd.training.distiller import Distiller

#: the record of a finished fit in its folder
DONE_FILE = "done.json"


def trained_already(folder: str | os.PathLike, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of the fit that finished in ``folder`` with these ``settings``, or None when none finished there;
    a record of other settings is a ValueError naming the settings that changed."""
    file = Path(folder) / DONE_FILE
    if not file.exists():
        return None
    done = json.loads(file.read_text())
    settings = _plain(settings)
    if done.get("settings") != settings:
        before = done.get("settings") or {}
        changed = sorted(k for k in set(settings) | set(before) if settings.get(k) != before.get(k))
        raise ValueError(f"{folder} holds a student trained with other settings (changed: {changed}); use another "
                         f"folder, or delete {folder} to train it again")
    return done


def fit_once(folder: str | os.PathLike, settings: Mapping[str, Any], fit: Callable[[Path], Distiller], *,
             label: str | None = None, verbose: bool = False,
             load_kwargs: Mapping[str, Any] | None = None) -> tuple[NeuralScorer, dict[str, Any]]:
    """The student that ``fit(folder)`` trains (a function that makes a Distiller with ``output_dir=folder`` and
    fits it) and the record of that fit, trained once: a later call with the same ``settings`` loads the saved
    student (with ``load_kwargs``) and the record instead. A killed fit leaves no record, so the next call trains
    (and the Distiller resumes its checkpoint). The record holds the settings, the Distiller's report and
    validation, the seconds the fit took and when it finished."""
    folder = Path(folder)
    label = label or folder.name
    done = trained_already(folder, settings)
    if done is not None:
        if verbose:
            print(f"{label}: reusing {folder / 'student'} (trained in {done['train_seconds']:.0f} s)", flush=True)
        return load(folder / "student", **(load_kwargs or {})), done
    if verbose:
        print(f"{label}: training in {folder}", flush=True)
    started = time.time()
    distiller = fit(folder)
    record = {"settings": _plain(settings), "report": distiller.report, "validation": distiller.validation,
              "train_seconds": time.time() - started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    partial = folder / f"{DONE_FILE}.tmp"
    partial.write_text(json.dumps(record, indent=2, default=float))
    os.replace(partial, folder / DONE_FILE)  # a killed run never leaves a half-written record
    return distiller.student, record


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as JSON gives them back (paths as strings, tuples as lists), so that records compare equal."""
    return json.loads(json.dumps(dict(settings), default=str))
