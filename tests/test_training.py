"""Training as parts: the settings object, the loop (steps, budgets, when to validate and save), the schedule,
gradient accumulation, the layer loss returned with the scores, and how training groups pick their negatives."""
from __future__ import annotations

import ast
import dataclasses
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CountingTeacher

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses
from pyterrier_marginkd.data import Group, TrainingExamples
from pyterrier_marginkd.training import loop, run, schedule, steps
from pyterrier_marginkd.training.settings import TrainSettings


# --- settings ------------------------------------------------------------------------------------------------------
def test_a_settings_object_and_keywords_are_the_same_settings(tiny_ce):
    given = mkd.Distiller(tiny_ce, CountingTeacher(), settings=mkd.TrainSettings(epochs=3, lr=1e-4, seed=7))
    keywords = mkd.Distiller(tiny_ce, CountingTeacher(), epochs=3, lr=1e-4, seed=7)
    assert given.settings == keywords.settings and (given.epochs, given.lr, given.seed) == (3, 1e-4, 7)
    changed = mkd.Distiller(tiny_ce, CountingTeacher(), settings=TrainSettings(epochs=3), lr=2e-4)
    assert (changed.settings.epochs, changed.settings.lr) == (3, 2e-4)
    with pytest.raises(TypeError, match=r"unknown training setting\(s\) \['epoch'\].*'epochs'"):
        mkd.Distiller(tiny_ce, CountingTeacher(), epoch=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.settings.lr = 1.0
    with pytest.raises(AttributeError, match="no_such_setting"):
        given.no_such_setting


@pytest.mark.parametrize(("setting", "value"), [
    ("warmup_ratio", 1.0), ("warmup_ratio", -0.1), ("weight_decay", -1.0), ("max_grad_norm", float("nan")),
    ("max_time", -5.0), ("head_lr", -1e-4), ("grad_accum_steps", 0), ("pseudo_positives", 0), ("graded", "yes"),
    ("resume", 1), ("teacher_scale", "big"), ("unjudged", "label"), ("epochs", 1.5),
])
def test_settings_are_checked_when_they_are_made(setting, value):
    with pytest.raises(ValueError, match=setting):
        TrainSettings(**{setting: value})


def test_the_loop_schedule_and_steps_know_no_dataframes_or_pyterrier():
    for module in (loop, schedule, steps):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {n.split(".")[0] for n in names} & {"pandas", "pyterrier"}, module.__name__


# --- the loop ------------------------------------------------------------------------------------------------------
def _run(budget: loop.Budget, *, batches_per_epoch: int | None = None) -> tuple[list, list, loop.LoopState, bool]:
    validated, saved, state = [], [], loop.LoopState()
    per_epoch = budget.steps_per_epoch if batches_per_epoch is None else batches_per_epoch

    def batches(epoch, step_in_epoch):
        return [[f"{epoch}.{i}"] for i in range(step_in_epoch, per_epoch)]

    stopped = loop.run_loop(budget, state, loop.Clock(), batches=batches, step=lambda batch: (1.0, 0.1),
                            save=saved.append, validate=validated.append)
    return validated, saved, state, stopped


def test_the_loop_validates_and_saves_on_time_and_ends_with_the_budget():
    budget = loop.Budget(groups_per_epoch=10, groups_per_step=2, steps_per_epoch=5, total_steps=7, eval_steps=3,
                         save_steps=4, max_time=None)
    validated, saved, state, stopped = _run(budget)
    assert validated == [0, 3, 5, 6, 7]  # the start, every eval_steps, the end of the epoch, the end of the run
    assert saved == [4, 7]  # every save_steps and the end of the run (not the end of an epoch: resumes mid-epoch)
    assert [h["step"] for h in state.history] == list(range(1, 8)) and state.step == 7 and not stopped
    assert [h["epoch"] for h in state.history] == [0] * 5 + [1] * 2


def test_a_run_whose_checkpoint_is_deleted_at_the_end_does_not_write_it_there():
    budget = loop.Budget(groups_per_epoch=10, groups_per_step=2, steps_per_epoch=5, total_steps=7, eval_steps=3,
                         save_steps=4, max_time=None)
    saved, state = [], loop.LoopState()
    loop.run_loop(budget, state, loop.Clock(), step=lambda batch: (1.0, 0.1), save=saved.append,
                  batches=lambda epoch, start: [[i] for i in range(start, 5)], save_at_end=False)
    assert saved == [4] and state.step == 7


def test_the_time_budget_stops_the_loop_after_a_validated_and_saved_step():
    budget = loop.Budget(groups_per_epoch=10, groups_per_step=2, steps_per_epoch=5, total_steps=10,
                         eval_steps=None, save_steps=100, max_time=0.0)
    validated, saved, state, stopped = _run(budget)
    assert (validated, saved, state.step, stopped) == ([0, 1], [1], 1, True)


def test_an_epoch_shorter_than_announced_is_an_error():
    budget = loop.Budget(groups_per_epoch=10, groups_per_step=2, steps_per_epoch=5, total_steps=10,
                         eval_steps=None, save_steps=100, max_time=None)
    with pytest.raises(ValueError, match="fewer groups than the 10 announced"):
        _run(budget, batches_per_epoch=0)


def test_the_learning_rate_warms_up_then_decays_to_zero():
    factors = [schedule.lr_factor(step / 100, 0.1, 100) for step in range(101)]
    assert factors[0] == 0.01 and factors[10] == pytest.approx(1.0) and factors[100] == 0.0
    assert factors[:11] == sorted(factors[:11]) and factors[10:] == sorted(factors[10:], reverse=True)
    assert schedule.lr_factor(0.0, 0.0, 100) == 1.0  # no warm-up


# --- steps ---------------------------------------------------------------------------------------------------------
def test_grad_accum_steps_makes_each_step_several_forward_passes(student_dir, small_results, tmp_path, monkeypatch):
    qrels = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d4"], "label": [1, 1]})
    results = pd.concat([small_results.assign(qid=small_results["qid"] + f"-{i}") for i in range(5)])
    qrels = pd.concat([qrels.assign(qid=qrels["qid"] + f"-{i}") for i in range(5)])
    step_sizes, pass_sizes = [], []
    original_step, original_tensors = run.optimizer_step, steps.BatchTensors.__call__

    def recorded_step(groups, *args, **kwargs):
        step_sizes.append(len(groups))
        return original_step(groups, *args, **kwargs)

    def recorded_tensors(self, part):
        pass_sizes.append(len(part))
        return original_tensors(self, part)

    monkeypatch.setattr(run, "optimizer_step", recorded_step)
    monkeypatch.setattr(steps.BatchTensors, "__call__", recorded_tensors)
    distiller = mkd.Distiller(mkd.CrossEncoder.from_pretrained(student_dir), CountingTeacher(), batch_size=2,
                              grad_accum_steps=2, output_dir=tmp_path / "run")
    assert distiller.fit(results, qrels) is distiller
    assert distiller.report["groups_per_epoch"] == 10 and distiller.report["total_steps"] == 3
    assert step_sizes == [4, 4, 2] and pass_sizes == [2, 2, 2, 2, 2]
    assert len(distiller.history) == 3


def test_the_layer_loss_comes_back_with_the_scores(tiny_ce, small_results):
    teacher = mkd.CrossEncoder.from_pretrained(tiny_ce.model_name, max_length=64)
    intermediate = losses.HiddenStateMSE()
    distiller = mkd.Distiller(tiny_ce, teacher, intermediate=intermediate)
    part = [Group("q1", "wing flutter", ["d1", "d2"], ["flutter of a wing", "heat transfer"], [1.0, 0.0])]
    student, _, labels, layer_loss, _, vectors = distiller.tensors(part)
    assert student.shape == (1, 2) and labels.shape == (1, 2)
    assert layer_loss is not None and layer_loss.requires_grad and layer_loss.dim() == 0
    assert vectors is None  # no alignment term asked for
    with torch.no_grad():
        assert distiller.tensors(part)[3] is None
    assert not any("layer" in name for name in vars(distiller))  # no side channel on the Distiller


def test_amp_runs_the_forward_pass_in_bfloat16_where_the_device_has_it(tiny_ce, monkeypatch):
    part = [Group("q1", "wing flutter", ["d1", "d2"], ["flutter of a wing", "heat transfer"], [1.0, 0.0])]
    seen = []
    monkeypatch.setattr(steps, "native_bf16", lambda device: seen.append(device.type) or True)
    encoder = tiny_ce.model.bert.encoder.layer[0].intermediate.dense
    dtypes = []
    hook = encoder.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    exact = mkd.Distiller(tiny_ce).tensors(part)[0]
    mixed = mkd.Distiller(tiny_ce, amp=True)
    scores = mixed.tensors(part)[0]
    hook.remove()
    # the encoder ran in bfloat16 under amp, the scores come back float32 and close to the float32 pass
    assert dtypes == [torch.float32, torch.bfloat16] and scores.dtype == torch.float32 and scores.requires_grad
    torch.testing.assert_close(scores, exact, atol=0.05, rtol=0.05)
    scores.sum().backward()
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())
               for p in tiny_ce.model.parameters())
    mixed.tensors(part)
    assert seen == ["cpu"]  # asked once per device
    # a device without native bfloat16: float32, and a warning says so once
    monkeypatch.setattr(steps, "native_bf16", lambda device: False)
    plain = mkd.Distiller(tiny_ce, amp=True)
    with pytest.warns(UserWarning, match="no native bfloat16 arithmetic.*training in float32"):
        assert plain.tensors(part)[0].dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.tensors(part)


# --- negatives -----------------------------------------------------------------------------------------------------
def _ranked() -> tuple[pd.DataFrame, pd.DataFrame]:
    docnos = [f"d{i}" for i in range(6)]
    results = pd.DataFrame({"qid": "q", "query": "wing", "docno": docnos, "text": [f"text {d}" for d in docnos],
                            "rank": range(6)})
    qrels = pd.DataFrame({"qid": "q", "docno": ["d0", "d2"], "label": [2, 1]})
    return results, qrels


def test_top_negative_sampling_takes_the_highest_ranked_negatives_every_epoch():
    results, qrels = _ranked()
    examples = TrainingExamples(results, qrels, num_negatives=2, negative_sampling="top", seed=3)
    for epoch in range(3):
        assert {g.docnos[0]: g.docnos[1:] for g in examples.groups(epoch)} == {"d0": ["d1", "d3"],
                                                                             "d2": ["d1", "d3"]}
    randomly = TrainingExamples(results, qrels, num_negatives=2, seed=3)
    drawn = {tuple(g.docnos[1:]) for epoch in range(10) for g in randomly.groups(epoch)}
    assert len(drawn) > 1 and all(set(d) <= {"d1", "d3", "d4", "d5"} for d in drawn)


def test_graded_negatives_include_lower_grades_of_relevant_documents():
    results, qrels = _ranked()
    flat = TrainingExamples(results, qrels, num_negatives=4, negative_sampling="top")
    graded = TrainingExamples(results, qrels, num_negatives=4, negative_sampling="top", graded=True)
    assert {g.docnos[0]: g.docnos[1:] for g in flat.groups(0)} == {"d0": ["d1", "d3", "d4", "d5"],
                                                                   "d2": ["d1", "d3", "d4", "d5"]}
    by_positive = {g.docnos[0]: g for g in graded.groups(0)}
    assert by_positive["d0"].docnos[1:] == ["d1", "d2", "d3", "d4"]  # the grade-1 document is below grade 2
    assert by_positive["d0"].labels == [2.0, 0.0, 1.0, 0.0, 0.0]
    assert by_positive["d2"].docnos[1:] == ["d1", "d3", "d4", "d5"]  # nothing graded is below grade 1
