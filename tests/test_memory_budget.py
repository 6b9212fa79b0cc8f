"""memory_budget: the estimate of a training step's activations, the switch to gradient checkpointing (and unmapped
large blocks) when it exceeds the budget, the report, the one warning, and the setting's checks."""
from __future__ import annotations

import warnings

import pytest
from conftest import BUILDERS, CountingTeacher, build, tiny_encoder_folder

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data.groups import Group
from pyterrier_marginkd.models.hf import layer_list
from pyterrier_marginkd.training import checkpoints, memory
from pyterrier_marginkd.training.checkpoints import checkpointable_models


@pytest.fixture(autouse=True)
def unmap_calls(monkeypatch):
    """unmap_large_blocks changes glibc for the whole process: recorded here instead."""
    calls = []
    monkeypatch.setattr(checkpoints, "unmap_large_blocks", lambda: calls.append(1) or True)
    monkeypatch.setattr(checkpoints, "_unmapping", False)
    return calls


def _fit(student, small_results, folder, **settings):
    """Fit ``student`` for 3 steps; return the Distiller, the memory warnings and how often its first layer's
    feed-forward ran (twice per pass under gradient checkpointing)."""
    encoder = checkpointable_models(student.model)[0]
    runs = []
    handle = layer_list(encoder)[0].intermediate.register_forward_hook(lambda *_: runs.append(1))
    distiller = mkd.Distiller(student, CountingTeacher(), batch_size=2, num_negatives=2, epochs=3, lr=1e-3,
                              seed=0, output_dir=folder, **settings)
    qrels = small_results[["qid", "docno"]].assign(label=[1, 0, 0, 1, 0, 0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distiller.fit(small_results, qrels)
    handle.remove()
    assert len(distiller.history) == 3
    said = [w for w in caught if "training step" in str(w.message)]
    return distiller, said, len(runs)


def test_a_step_over_the_budget_trains_with_checkpointing_and_says_so_once(tiny_ce, tiny_bert_dir, small_results,
                                                                          tmp_path, unmap_calls):
    roomy, roomy_said, roomy_runs = _fit(tiny_ce, small_results, tmp_path / "roomy", memory_budget=1e15)
    assert roomy.report["memory"]["checkpointing"] is False and roomy.report["memory"]["unmapped"] is False
    assert roomy_said == [] and unmap_calls == []
    tight, said, runs = _fit(mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64), small_results,
                             tmp_path / "tight", memory_budget=1000)
    assert tight.report["memory"] == {"estimate_bytes": roomy.report["memory"]["estimate_bytes"],
                                      "budget_bytes": 1000, "checkpointing": True, "unmapped": True}
    assert tight.report["memory"]["estimate_bytes"] > 1000
    assert runs == 2 * roomy_runs  # every layer recomputed in the backward pass
    assert unmap_calls == [1]
    assert len(said) == 1  # once for the fit, not per step or epoch
    message = str(said[0].message)
    assert "gradient checkpointing" in message and "unmap_large_blocks" in message and "memory_budget=None" in message
    assert "more than the budget of 0.0 GiB (memory_budget)" in message and "still above the budget" in message
    assert not any(getattr(m, "gradient_checkpointing", False) for m in tight.student.model.modules())  # off again


def test_auto_is_half_the_available_memory(tiny_ce, small_results, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 2000)
    distiller, said, _ = _fit(tiny_ce, small_results, tmp_path / "auto")
    assert distiller.memory_budget == "auto"
    assert distiller.report["memory"]["budget_bytes"] == 1000 and distiller.report["memory"]["checkpointing"]
    assert len(said) == 1 and "50% of the available memory" in str(said[0].message)
    monkeypatch.setattr(memory, "available_memory", lambda: None)  # unknown: no budget
    assert memory.resolve_budget("auto") is None


def test_none_never_switches_nor_estimates(tiny_ce, small_results, tmp_path, monkeypatch, unmap_calls):
    monkeypatch.setattr(memory, "available_memory", lambda: 2)
    monkeypatch.setattr(memory, "step_stacks", lambda *a, **k: pytest.fail("estimated without a budget"))
    distiller, said, _ = _fit(tiny_ce, small_results, tmp_path / "none", memory_budget=None)
    assert distiller.report["memory"] == {"estimate_bytes": None, "budget_bytes": None, "checkpointing": False,
                                          "unmapped": False}
    assert said == [] and unmap_calls == []


def test_forced_checkpointing_is_not_announced(tiny_ce, small_results, tmp_path, unmap_calls):
    distiller, said, _ = _fit(tiny_ce, small_results, tmp_path / "forced", memory_budget=1,
                              gradient_checkpointing=True)
    assert distiller.report["memory"]["checkpointing"] is True and said == [] and unmap_calls == []


def test_a_student_that_cannot_checkpoint_trains_and_says_the_budget_cannot_be_kept(tiny_bert_dir, small_results,
                                                                                    tmp_path, unmap_calls):
    tk = build("tk", tiny_bert_dir)
    distiller = mkd.Distiller(tk, CountingTeacher(), batch_size=2, num_negatives=2, max_steps=1, seed=0,
                              output_dir=tmp_path / "tk", memory_budget=1)
    qrels = small_results[["qid", "docno"]].assign(label=[1, 0, 0, 1, 0, 0])
    with pytest.warns(UserWarning, match="no Hugging Face encoder to checkpoint, so the budget cannot be kept"):
        distiller.fit(small_results, qrels)
    assert distiller.report["memory"]["checkpointing"] is False and distiller.report["memory"]["estimate_bytes"] > 1
    assert unmap_calls == []


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf"), True, "big", "8GB", [1]])
def test_memory_budget_is_checked(tiny_ce, budget):
    with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
        mkd.Distiller(tiny_ce, CountingTeacher(), memory_budget=budget)


@pytest.mark.parametrize("budget", [None, "auto", 1, 8e9])
def test_memory_budget_accepts(tiny_ce, budget):
    assert mkd.Distiller(tiny_ce, CountingTeacher(), memory_budget=budget).memory_budget == budget


def _groups(query: str, num: int = 3, size: int = 3) -> list[Group]:
    texts = ["boundary layer transition on a flat plate " * 10] * size
    return [Group(str(i), query, [f"d{j}" for j in range(size)], texts, None) for i in range(num)]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_architecture_has_an_estimate_that_grows_with_the_batch(name, tiny_bert_dir):
    student = build(name, tiny_bert_dir)
    groups = _groups("wing flutter")
    small, large = (memory.activation_bytes(memory.step_stacks(student, groups, n)) for n in (2, 4))
    assert 0 < small < large <= 2 * small


def test_long_queries_cost_pretts_its_joint_layers(tmp_path):
    """PreTT's joint layers read query and document as one sequence: long queries cost attention maps of (query +
    document)^2; under checkpointing one chunk of CHECKPOINT_ROWS sequences of one layer is held at a time."""
    pretts = mkd.PreTT(tiny_encoder_folder(4, tmp_path, intermediate_size=64, seed=0), max_length=64)
    short = memory.StepShape(groups=16, group_size=5, query_length=6, doc_length=63, pair_length=69)
    long = memory.StepShape(groups=16, group_size=5, query_length=64, doc_length=63, pair_length=127)
    stacks = memory.student_stacks(pretts, long)
    # 2 separate layers (distinct queries, documents), 1 joint layer on the pairs (the last reads [CLS] alone)
    assert [(s.sequences, s.length, s.layers) for s in stacks] == [(16, 64, 2), (80, 63, 2), (80, 127, 1)]
    joint = stacks[2]
    assert joint.layer_bytes() == memory.CALIBRATION * 4 * 80 * 127 * (2 * 127 + 32 + 64)
    assert memory.activation_bytes(stacks) > 1.5 * memory.activation_bytes(memory.student_stacks(pretts, short))
    checkpointed = memory.activation_bytes(stacks, checkpointing=True)
    assert checkpointed == int(sum(s.input_bytes() for s in stacks) + joint.layer_bytes(16))
    assert memory.CHECKPOINT_ROWS == 16 and checkpointed < memory.activation_bytes(stacks) / 3


def test_the_step_shape_reads_the_tokens_the_student_makes(tiny_bert_dir):
    pretts = build("pretts", tiny_bert_dir)  # max_length 64
    short = memory.step_shape(pretts, _groups("wing flutter"), 16)
    long = memory.step_shape(pretts, _groups("the pressure distribution on a swept wing " * 20), 16)
    assert (short.groups, short.group_size, short.doc_length) == (16, 3, 63)  # the document's [CLS] is dropped
    assert short.query_length == 4 and long.query_length == 64  # [CLS] wing flutter [SEP]; cut at max_length
    cross = build("cross_encoder", tiny_bert_dir)
    assert memory.step_shape(cross, _groups("wing flutter"), 16).pair_length == 64
    stacks = memory.student_stacks(cross, memory.step_shape(cross, _groups("wing flutter"), 16))
    assert [(s.sequences, s.length, s.layers) for s in stacks] == [(48, 64, 1)]  # last layer: first token only


def test_texts_to_align_count_the_query_encoder_alone(tiny_bert_dir):
    dot = mkd.DotEncoder(tiny_bert_dir, frozen_docs=True, max_length=64)
    texts = [Group(str(i), "the boundary layer of a flat plate", [], [], None) for i in range(3)]
    shape = memory.step_shape(dot, texts, 8)
    assert (shape.groups, shape.group_size, shape.query_length) == (8, 0, 9)
    assert [(s.sequences, s.length, s.layers) for s in memory.student_stacks(dot, shape)] == [(8, 9, 2)]
    docs = memory.student_stacks(dot, memory.step_shape(dot, _groups("wing flutter"), 8))
    assert [s.sequences for s in docs] == [8]  # the frozen document encoder keeps no activations
