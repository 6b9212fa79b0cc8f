"""Kill tests with a teacher that scores in padded batches (a tiny BERT cross-encoder through ``pt.apply``): a fit
SIGKILLed while the teacher scores, or while the student trains, then run again on the same ``output_dir``, ends
with exactly the weights of an uninterrupted fit.

Such a teacher's float score of a pair depends on the other pairs of its batch in the last bits (padding to the
longest one), so a resumed run must ask it for the same pairs in the same calls as an uninterrupted run; and a
teacher that draws random numbers must not shift the student's dropout.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import PROJECT, CountingTeacher, save_kill_test_models
from safetensors.torch import load_file

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data import Group
from pyterrier_marginkd.training.steps import step_batches
from pyterrier_marginkd.training.teacher_cache import TeacherScores

BATCH_SIZE = 2
PREFETCH_STEPS = 16  # training.steps.step_batches scores the teacher pairs of 16 steps at a time
SAVE_STEPS = 3

#: the fit run in a subprocess; MKD_HOLD="step:N" stops it for the kill before its step N+1, "teacher:N" in the
#: teacher's first call once N steps are done (it writes MKD_HELD, then sleeps until killed)
SCRIPT = r"""
import os, sys, time
from pathlib import Path
import pandas as pd, pyterrier as pt, torch
import pyterrier_marginkd as mkd
from pyterrier_marginkd.data import Group
from pyterrier_marginkd.training.teacher_cache import TeacherScores

data, student, teacher_dir, output = sys.argv[1:5]
hold = os.environ.get("MKD_HOLD")
kind, when = hold.split(":") if hold else (None, -1)
done = 0

def held():
    Path(os.environ["MKD_HELD"]).write_text(hold)
    time.sleep(600)

ce = mkd.CrossEncoder.from_pretrained(teacher_dir, max_length=512, batch_size=4)

def teacher_scores(frame):
    if kind == "teacher" and done >= int(when):
        held()
    torch.rand(3)  # a teacher that draws from torch's random stream (dropout left on, sampling, ...)
    return ce.score_pairs(frame["query"].tolist(), frame["text"].tolist())

from pyterrier_marginkd.training import run as training_run
step = training_run.optimizer_step
def counted_step(*args, **kwargs):
    global done
    if kind == "step" and done == int(when):
        held()
    loss = step(*args, **kwargs)
    done += 1
    return loss
training_run.optimizer_step = counted_step

results, qrels = pd.read_pickle(data)
distiller = mkd.Distiller(mkd.CrossEncoder.from_pretrained(student),
                          pt.apply.doc_score(teacher_scores, batch_size=16), teacher_id="tiny-teacher",
                          epochs=2, batch_size=%d, save_steps=%d, seed=7, lr=1e-3, output_dir=output)
distiller.fit(results, qrels)
print("report", distiller.report)
""" % (BATCH_SIZE, SAVE_STEPS)


@pytest.fixture(scope="module")
def setup(cranfield, cranfield_bm25, tiny_bert_dir, tmp_path_factory):
    """The fit's data (BM25 top 10 of 40 Cranfield training queries), student and teacher folders, and its steps per
    epoch."""
    root = tmp_path_factory.mktemp("kill_real_teacher")
    results = (cranfield_bm25 % 10 >> cranfield.get_text())(cranfield.topics("train").head(40))
    qrels = cranfield.qrels("train")
    qrels = qrels[qrels["qid"].isin(set(results["qid"]))]
    import pandas as pd
    pd.to_pickle((results, qrels), root / "data.pkl")
    save_kill_test_models(root, tiny_bert_dir, student_length=48, teacher_length=512)
    groups = mkd.data.TrainingExamples(results, qrels, seed=7).num_groups()
    return root, groups


def start(setup, output: Path, hold: str | None = None) -> subprocess.Popen:
    root = setup[0]
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", MKD_HELD=str(output.parent / "held"))
    env.pop("MKD_HOLD", None)
    if hold is not None:
        env["MKD_HOLD"] = hold
    log = open(output.parent / "log.txt", "ab")
    with log:
        return subprocess.Popen([sys.executable, "-c", SCRIPT, str(root / "data.pkl"), str(root / "student"),
                                 str(root / "teacher"), str(output)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=PROJECT)


def finish(process: subprocess.Popen, output: Path, timeout: float = 240) -> str:
    log = output.parent / "log.txt"
    assert process.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    return log.read_text()


def kill_when_held(process: subprocess.Popen, output: Path, timeout: float = 240) -> None:
    held = output.parent / "held"
    deadline = time.monotonic() + timeout
    while not held.exists():
        assert process.poll() is None, (output.parent / "log.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill the run"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    held.unlink()


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "student" / "model.safetensors"))


@pytest.mark.slow
def test_killed_while_the_teacher_scores_or_the_student_trains_then_resumed_gives_identical_weights(setup,
                                                                                                   tmp_path):
    groups_per_epoch = setup[1]
    steps_per_epoch = math.ceil(groups_per_epoch / BATCH_SIZE)
    # epoch 1 (0-based) needs new teacher pairs (other negatives), scored in chunks of 16 steps; epoch 0's are all
    # scored up front by teacher_scale="auto" (at most 256 groups)
    assert 2 * PREFETCH_STEPS < steps_per_epoch and groups_per_epoch <= 256
    epoch1 = steps_per_epoch
    kills = {
        # in the teacher's call for steps 16-31 of epoch 1; the last checkpoint is within steps 0-15
        "teacher": [f"teacher:{epoch1 + PREFETCH_STEPS}"],
        # before step 3, the first checkpoint (the fit starts over and finds epoch 0's teacher scores in the cache);
        # then before step 13 of epoch 1 (16-31 not yet scored), after a checkpoint within steps 0-12
        "training": ["step:2", f"step:{epoch1 + 12}"],
    }
    for holds in kills.values():
        for hold in holds:
            done = int(hold.split(":")[1])
            last_checkpoint = max(done - done % SAVE_STEPS, epoch1 if done >= epoch1 else 0)
            assert last_checkpoint < SAVE_STEPS or (last_checkpoint - epoch1) % PREFETCH_STEPS, "an aligned resume"

    folders = {name: tmp_path / name / "run" for name in ["reference", *kills]}
    for output in folders.values():
        output.parent.mkdir()
    processes = {name: start(setup, folders[name], kills[name][0] if name in kills else None) for name in folders}
    try:
        for name, holds in kills.items():
            for following in [*holds[1:], None]:
                kill_when_held(processes[name], folders[name])
                assert not (folders[name] / "student").exists()
                processes[name] = start(setup, folders[name], following)
        logs = {name: finish(process, folders[name]) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert f"'groups_per_epoch': {groups_per_epoch}," in logs["reference"]
    assert "resuming from the checkpoint at step" in logs["teacher"]
    assert logs["training"].count("resuming from the checkpoint at step") == 1  # the first kill came before any
    expected = weights(folders["reference"])
    differences = []
    for name in kills:
        got = weights(folders[name])
        assert got.keys() == expected.keys()
        differ = [key for key in expected if not torch.equal(got[key], expected[key])]
        if differ:
            largest = max((got[key] - expected[key]).abs().max().item() for key in differ)
            differences.append(f"killed during {name}: {len(differ)} of {len(expected)} tensors differ, by up to "
                               f"{largest:.3g}")
    assert not differences, "; ".join(differences)


class _Recorder:
    """Stands in for the teacher cache: records the groups of each fill call."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def fill(self, groups):
        self.calls.append([g.qid for g in groups])


def test_a_resumed_epoch_asks_the_teacher_for_the_chunks_of_an_uninterrupted_one():
    """Whatever step a fit resumes at, the teacher is asked for the same chunks (16 steps counted from the start of
    the epoch) as in an uninterrupted epoch, from the chunk holding the resumed step on; the steps are the same."""
    def groups():
        return [Group(str(i), "q", ["d1", "d2"], ["a", "b"], [1.0, 0.0]) for i in range(75)]  # 38 steps

    def steps(batches):
        return [[g.qid for g in step] for step in batches]
    uninterrupted = _Recorder()
    full = steps(step_batches(groups(), uninterrupted, groups_per_step=BATCH_SIZE))
    assert len(full) == 38 and len(uninterrupted.calls) == 3
    for resumed_at in (1, 10, 15, 16, 17, 31, 32, 37):
        resumed = _Recorder()
        assert steps(step_batches(groups(), resumed, groups_per_step=BATCH_SIZE, skip=resumed_at * BATCH_SIZE)) \
            == full[resumed_at:]
        assert resumed.calls == uninterrupted.calls[resumed_at // PREFETCH_STEPS:], resumed_at


def test_a_teacher_drawing_random_numbers_leaves_the_training_random_stream_alone(tmp_path, small_results):
    """A teacher that draws from torch's random stream (dropout left on, sampling) must not shift the student's
    dropout: a resumed run finds some of its pairs cached and would draw less."""
    class Drawing(CountingTeacher):
        def transform(self, inp):
            torch.rand(5)
            return super().transform(inp)

    cache = TeacherScores(Drawing(), tmp_path / "cache")
    try:
        torch.manual_seed(3)
        expected = torch.rand(4)
        torch.manual_seed(3)
        cache.scores(small_results)
        assert torch.equal(torch.rand(4), expected)
    finally:
        cache.close()


def test_the_cli_gives_a_student_without_a_score_head_the_same_new_head_for_a_seed(tiny_bert_dir, tmp_path):
    """`marginkd train --student <plain encoder>` makes a new random score head: --seed fixes it, so that a fit killed
    and run again (which resumes its own first run) started from the weights of an uninterrupted fit."""
    from pyterrier_marginkd import cli
    from pyterrier_marginkd.cli import commands

    def new_head(seed: int) -> torch.Tensor:
        args = cli.build_parser().parse_args(["train", "--student", str(tiny_bert_dir), "--teacher", "none",
                                              "--loss", "ranknet", "--seed", str(seed), "--output", str(tmp_path)])
        torch.rand(seed)  # whatever the process drew before
        return commands._distiller(args, tmp_path).student.model.classifier.weight.detach().clone()
    assert torch.equal(new_head(7), new_head(7))
    assert not torch.equal(new_head(7), new_head(8))


def test_score_teacher_gives_a_teacher_without_a_score_head_the_same_new_head_for_a_seed(tiny_bert_dir, tmp_path,
                                                                                        monkeypatch):
    """`marginkd score-teacher --teacher <plain encoder>` makes a new random score head: --seed fixes it, so that a
    score file resumed by a second run is scored by the same model."""
    from pyterrier_marginkd import cli
    from pyterrier_marginkd.cli import commands
    from pyterrier_marginkd.data import docpairs

    heads = []
    real_load = commands.load_reranker

    def load_and_record(*args, **kwargs):
        model = real_load(*args, **kwargs)
        heads.append(model.model.classifier.weight.detach().clone())
        return model

    def stop(*args, **kwargs):
        raise SystemExit(0)  # stop once the teacher is loaded: only its weights matter here

    monkeypatch.setattr(commands, "load_reranker", load_and_record)
    monkeypatch.setattr(docpairs, "DocPairs", stop)

    def new_head(seed: int) -> torch.Tensor:
        torch.rand(seed)  # whatever the process drew before
        with pytest.raises(SystemExit):
            cli.main(["score-teacher", "--docpairs", "marginkd-test/none", "--teacher", str(tiny_bert_dir),
                      "--seed", str(seed), "--output", str(tmp_path / "scores.tsv")])
        return heads[-1]
    assert torch.equal(new_head(7), new_head(7))
    assert not torch.equal(new_head(7), new_head(8))
