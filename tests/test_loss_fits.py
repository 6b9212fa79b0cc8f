"""A short fit on tiny models per loss: every loss the command line offers trains a student through the Distiller."""
from __future__ import annotations

import pytest
import torch
from conftest import CountingTeacher

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses


@pytest.fixture(scope="module")
def fit_student_dir(tiny_bert_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("fits") / "student0"
    torch.manual_seed(0)
    mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64).save_pretrained(path)
    return path


# Losses on vectors (query alignment) need a frozen-document DotEncoder and no candidates: test_alignment fits them.
SCORE_LOSSES = sorted(name for name in losses.LOSSES if not losses.by_name(name).reads_vectors)


def test_every_name_is_fitted_here_or_in_test_alignment():
    assert set(losses.LOSSES) - set(SCORE_LOSSES) == {"query-alignment"}


@pytest.mark.parametrize("name", SCORE_LOSSES + ["margin-mse+ranknet", "margin-mse+hinge"])
def test_short_fit_lowers_the_loss(name, cranfield_train, fit_student_dir, tmp_path):
    res, qrels = cranfield_train
    loss = losses.by_name(name)
    teacher = CountingTeacher() if loss.needs_teacher else None
    distiller = mkd.Distiller(mkd.CrossEncoder.from_pretrained(fit_student_dir), teacher, loss=loss, epochs=4,
                              batch_size=4, lr=1e-2, num_negatives=3, seed=1, output_dir=tmp_path / "run")
    before = distiller.evaluate_loss(res, qrels)
    distiller.fit(res, qrels)
    assert distiller.evaluate_loss(res, qrels) < before
