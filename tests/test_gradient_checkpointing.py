"""Distiller(gradient_checkpointing=True): layers recompute their activations in the backward pass, training ends at
the same weights, the models are left as they were, and students without a Hugging Face encoder are refused."""
from __future__ import annotations

import pytest
import torch
from conftest import CountingTeacher

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.hf import layer_list
from pyterrier_marginkd.training.checkpoints import checkpointable_models

STUDENTS = {
    "CrossEncoder": lambda path: mkd.CrossEncoder.from_pretrained(path, max_length=48),
    "DotEncoder": lambda path: mkd.DotEncoder.from_pretrained(path, max_length=48),
    "ColBERT": lambda path: mkd.ColBERT.from_pretrained(path, max_length=48, query_length=8),
    "PreTT": lambda path: mkd.PreTT.from_pretrained(path, max_length=48),
}


def _fit(make_student, path, small_results, folder, checkpointing: bool):
    """Fit a freshly seeded student for 3 steps; return its weights and how often its first layer's feed-forward
    ran (forward passes, plus recomputations in the backward pass)."""
    torch.manual_seed(0)
    student = make_student(path)
    encoder = checkpointable_models(student.model)[0]
    runs = []
    handle = layer_list(encoder)[0].intermediate.register_forward_hook(lambda *_: runs.append(1))
    distiller = mkd.Distiller(student, CountingTeacher(), batch_size=2, num_negatives=2, epochs=3, lr=1e-3,
                              seed=0, output_dir=folder, gradient_checkpointing=checkpointing)
    qrels = small_results[["qid", "docno"]].assign(label=[1, 0, 0, 1, 0, 0])
    distiller.fit(small_results, qrels)
    handle.remove()
    assert len(distiller.history) == 3
    assert not any(getattr(m, "gradient_checkpointing", False) for m in student.model.modules())  # switched off
    return {k: v.clone() for k, v in student.model.state_dict().items()}, len(runs)


@pytest.mark.parametrize("name", list(STUDENTS))
def test_gradient_checkpointing_recomputes_and_trains_to_the_same_weights(name, tiny_bert_dir, small_results,
                                                                          tmp_path):
    plain, plain_runs = _fit(STUDENTS[name], tiny_bert_dir, small_results, tmp_path / "plain", False)
    saved, saved_runs = _fit(STUDENTS[name], tiny_bert_dir, small_results, tmp_path / "checkpointed", True)
    assert plain_runs > 0 and saved_runs == 2 * plain_runs  # every training forward ran again in the backward pass
    assert plain.keys() == saved.keys()
    for key in plain:  # same dropout masks in the recomputation: the same training, step for step
        torch.testing.assert_close(saved[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)


def test_gradient_checkpointing_is_checked_at_construction(tiny_bert_dir, tmp_path):
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=32)
    with pytest.raises(ValueError, match="gradient_checkpointing must be True or False"):
        mkd.Distiller(student, CountingTeacher(), gradient_checkpointing="yes")
    tk = mkd.TK.from_pretrained(tiny_bert_dir, max_length=32)
    with pytest.raises(ValueError, match="needs a student built on a Hugging Face encoder"):
        mkd.Distiller(tk, CountingTeacher(), gradient_checkpointing=True)
