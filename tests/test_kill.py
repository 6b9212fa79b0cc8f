"""Kill tests: `marginkd train` SIGKILLed mid-epoch or mid-checkpoint-write, then rerun, ends with exactly the
weights of an uninterrupted run, says where it resumed, tidies the half-written checkpoint and keeps a sound
teacher cache."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROJECT, CountingTeacher, save_kill_test_models
from safetensors.torch import load_file

from pyterrier_marginkd import _files
from pyterrier_marginkd.training.teacher_cache import TeacherScores, teacher_key


@pytest.fixture(scope="module")
def train_command(cranfield, tiny_bert_dir, tmp_path_factory):
    """The `marginkd train` command line of a small run (2 epochs of 15 steps, a checkpoint every 2 steps)."""
    root = tmp_path_factory.mktemp("kill")
    save_kill_test_models(root, tiny_bert_dir, student_length=24, teacher_length=24)
    cranfield.bm25(root / "cranfield.pisa")

    def command(output: Path) -> list[str]:
        return [sys.executable, "-m", "pyterrier_marginkd.cli", "train", "--data", cranfield.data,
                "--index", str(root / "cranfield.pisa"), "--k", "10", "--num-queries", "12",
                "--student", str(root / "student"), "--teacher", str(root / "teacher"), "--max-length", "24",
                "--batch-size", "2", "--epochs", "2", "--save-steps", "2", "--seed", "3", "--lr", "1e-3",
                "--output", str(output)]
    return command


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT)


def finish(process: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    assert process.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.fixture(scope="module")
def reference(train_command, tmp_path_factory):
    """An uninterrupted run, started at once so that it overlaps the killed runs; call to wait for its folder."""
    output = tmp_path_factory.mktemp("reference") / "run"
    process = start(train_command(output), output.parent / "log.txt")

    def wait() -> Path:
        if process.returncode is None:
            finish(process, output.parent / "log.txt")
        return output
    yield wait
    if process.poll() is None:
        process.kill()
        process.wait()


def kill_when(process: subprocess.Popen, condition, timeout: float = 240) -> None:
    """SIGKILL ``process`` the moment ``condition()`` holds (polled every half millisecond)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill the run"
        time.sleep(0.0005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def checkpoints_written(folder: Path, count: int):
    """A condition that holds once ``count`` versions of the checkpoint ``folder`` have been moved in."""
    seen = set()

    def condition() -> bool:
        try:
            stat = os.stat(folder)
        except FileNotFoundError:
            return False
        seen.add((stat.st_ino, stat.st_mtime_ns))  # each atomic replacement is a new folder
        return len(seen) >= count
    return condition


def leftovers(output: Path) -> list[str]:
    return sorted(p.name for p in output.glob(".checkpoint.*"))


def assert_same_weights(got: Path, expected: Path) -> None:
    got_tensors, expected_tensors = load_file(str(got)), load_file(str(expected))
    assert got_tensors.keys() == expected_tensors.keys()
    for key, value in expected_tensors.items():
        torch.testing.assert_close(got_tensors[key], value, rtol=0, atol=0, msg=f"{key} differs")


def cache_entries(output: Path) -> dict[tuple[str, str], float]:
    """All (query, docno) -> score entries of the run's teacher cache, after SQLite's own integrity check."""
    (db,) = (output / "teacher_cache").rglob("db.sqlite3")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        entries = {(g, k): v for g, k, v in conn.execute("SELECT [group], key, value FROM cache")}
    assert all(isinstance(v, float) and np.isfinite(v) for v in entries.values())
    return entries


def check_killed_cache(output: Path, reference: Path) -> None:
    """Right after the kill, the teacher cache holds only complete, correct entries."""
    expected = cache_entries(reference)
    assert all(expected[key] == value for key, value in cache_entries(output).items())


def check_resumed_run(log: str, output: Path, reference: Path) -> int:
    match = re.search(r"resuming from the checkpoint at step (\d+)", log)
    assert match, log[-3000:]
    assert leftovers(output) == []
    assert_same_weights(output / "student" / "model.safetensors", reference / "student" / "model.safetensors")
    # both runs completed: their resume checkpoints are deleted (the student above holds the final weights)
    assert not (output / "checkpoint").exists() and not (reference / "checkpoint").exists()
    assert cache_entries(output) == cache_entries(reference)
    return int(match.group(1))


@pytest.mark.slow
def test_kill_mid_epoch_then_resume(train_command, reference, tmp_path):
    output, log = tmp_path / "run", tmp_path / "log.txt"
    process = start(train_command(output), log)
    kill_when(process, checkpoints_written(output / "checkpoint", 3))  # right after the checkpoint of step 6
    assert not (output / "student").exists()
    check_killed_cache(output, reference())
    step = check_resumed_run(finish(start(train_command(output), log), log), output, reference())
    assert 6 <= step < 30


@pytest.mark.slow
def test_kill_mid_checkpoint_write_then_resume(train_command, reference, tmp_path):
    output, log = tmp_path / "run", tmp_path / "log.txt"
    state = output / "checkpoint" / "trainer_state.pt"
    process = start(train_command(output), log)
    # the second or a later checkpoint, so that a complete one exists to resume from
    kill_when(process, lambda: state.exists() and any(p.name.startswith(".checkpoint.tmp-")
                                                      for p in os.scandir(output)))
    assert leftovers(output), "the kill came after the checkpoint write had finished"
    assert (output / "checkpoint" / "trainer_state.pt").exists()  # the last complete checkpoint is untouched
    check_killed_cache(output, reference())
    check_resumed_run(finish(start(train_command(output), log), log), output, reference())


def test_kill_between_the_two_renames_keeps_the_old_checkpoint(tmp_path):
    """The narrowest window of io.atomic_dir: the old version moved aside, the new one not yet moved in."""
    target = tmp_path / "checkpoint"
    (tmp_path / ".checkpoint.old-999999999").mkdir()
    (tmp_path / ".checkpoint.old-999999999" / "step.txt").write_text("6")
    (tmp_path / ".checkpoint.tmp-999999999-x1").mkdir()
    (tmp_path / ".checkpoint.tmp-999999999-x1" / "step.txt").write_text("8, maybe incomplete")
    _files.recover_dir(target)
    assert (target / "step.txt").read_text() == "6"
    assert leftovers(tmp_path) == []
    alive = tmp_path / f".checkpoint.tmp-{os.getpid()}-x2"  # a write in progress elsewhere is left alone
    alive.mkdir()
    _files.recover_dir(target)
    assert alive.exists()


def test_teacher_cache_of_a_run_killed_while_creating_it_is_made_again(tmp_path):
    """pyterrier-caching writes pt_meta.json after creating the (empty) database: a kill in between left a folder
    that it refuses to open."""
    teacher = CountingTeacher()
    half_made = tmp_path / "teacher_cache" / teacher_key(teacher)
    half_made.mkdir(parents=True)
    sqlite3.connect(half_made / "db.sqlite3").close()
    pairs = pd.DataFrame({"qid": ["1", "1"], "query": ["wing flutter"] * 2, "docno": ["d1", "d2"],
                          "text": ["wing flutter at speed", "boundary layer"]})
    cache = TeacherScores(teacher, tmp_path / "teacher_cache")
    try:
        assert cache.scores(pairs) == {("1", "d1"): 2.0, ("1", "d2"): -2.0}
    finally:
        cache.close()
    assert (half_made / "pt_meta.json").exists()
