"""Losses: hand-computed values, gradient signs, invariances, shape errors, combination."""
from __future__ import annotations

import math

import pytest
import torch

from pyterrier_marginkd import losses

S = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0]])
T = torch.tensor([[3.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
L = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])

ALL = [losses.MarginMSE(), losses.MSE(), losses.KLDiv(), losses.KLDiv(temperature=2.0), losses.RankNet(),
       losses.MarginMSE() + 0.5 * losses.RankNet()]


def test_margin_mse_value():
    # student margins (1, 2), (-1, 1.5); teacher margins (3, 2), (0, 1)
    expected = ((1 - 3) ** 2 + (2 - 2) ** 2 + (-1 - 0) ** 2 + (1.5 - 1) ** 2) / 4
    assert losses.MarginMSE()(S, T) == pytest.approx(expected)


def test_margin_mse_invariant_to_a_constant_per_query():
    shift = torch.tensor([[10.0], [-3.0]])
    assert losses.MarginMSE()(S + shift, T) == pytest.approx(float(losses.MarginMSE()(S, T)))
    assert losses.MarginMSE()(S, T) > 0 and losses.MarginMSE()(T + shift, T) == pytest.approx(0.0, abs=1e-6)


def test_mse_value():
    assert losses.MSE()(S, T) == pytest.approx(float(((S - T) ** 2).mean()))


def test_kl_value_and_minimum():
    p = torch.softmax(T, 1)
    q = torch.softmax(S, 1)
    expected = float((p * (p.log() - q.log())).sum(1).mean())
    assert losses.KLDiv()(S, T) == pytest.approx(expected, rel=1e-5)
    assert losses.KLDiv()(T + 5.0, T) == pytest.approx(0.0, abs=1e-6)
    assert losses.KLDiv()(S, T) >= 0


def test_ranknet_value():
    # pairs (0,1), (0,2) in both rows: softplus(-(s0 - sj))
    sp = lambda x: math.log1p(math.exp(-x))  # noqa: E731
    expected = (sp(1.0) + sp(2.0) + sp(-1.0) + sp(1.5)) / 4
    assert losses.RankNet()(S, labels=L) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", ALL, ids=repr)
def test_every_loss_is_a_scalar_with_a_useful_gradient(loss):
    student = S.clone().requires_grad_(True)
    value = loss(student, T, L)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    # descending the gradient must lower the loss
    with torch.no_grad():
        stepped = student - 0.05 * student.grad
    assert loss(stepped, T, L) < value


@pytest.mark.parametrize("loss", ALL, ids=repr)
def test_every_loss_is_minimal_when_the_student_copies_the_teacher_order(loss):
    """A student equal to a perfect teacher has lower loss than one with the order reversed."""
    teacher = torch.tensor([[3.0, 1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    assert loss(teacher * 2, teacher, labels) < loss(teacher.flip(1), teacher, labels)


def test_ranknet_pushes_the_positive_up():
    student = torch.zeros(1, 2, requires_grad=True)
    losses.RankNet()(student, labels=torch.tensor([[1.0, 0.0]])).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]


def test_shape_errors_name_the_loss():
    with pytest.raises(ValueError, match=r"MarginMSE expects scores of shape \[Q, D\]"):
        losses.MarginMSE()(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="teacher_scores of shape"):
        losses.MarginMSE()(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs teacher scores"):
        losses.KLDiv()(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="needs relevance labels"):
        losses.RankNet()(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="temperature"):
        losses.KLDiv(temperature=0)


def test_combination_and_names():
    combined = losses.MarginMSE() + 0.5 * losses.RankNet()
    expected = losses.MarginMSE()(S, T) + 0.5 * losses.RankNet()(S, labels=L)
    assert combined(S, T, L) == pytest.approx(float(expected))
    assert repr(combined) == "MarginMSE() + 0.5 * RankNet()"
    assert combined.needs_teacher and combined.needs_labels
    assert isinstance(losses.by_name("margin-mse+ranknet"), losses.Combined)
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*margin-mse"):
        losses.by_name("hinge")
