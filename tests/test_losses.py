"""Losses: hand-computed values, gradient signs, invariances, shape errors, combination."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from pyterrier_marginkd import losses

S = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0]])
T = torch.tensor([[3.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
L = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])

ALL = [losses.MarginMSE(), losses.MSE(), losses.KLDiv(), losses.KLDiv(temperature=2.0),
       losses.KLDiv(normalize="zscore"), losses.KLDiv(normalize="minmax", normalize_on="teacher"),
       losses.PlackettLuce(), losses.PlackettLuce(temperature=2.0, normalize="zscore"),
       losses.PlackettLuce(positives_first=False), losses.CPRD(), losses.CPRD(k=1), losses.CPRD(normalize="minmax"),
       losses.RankNet(), losses.Hinge(), losses.Hinge(margin=0.5),
       losses.MarginMSE() + 0.5 * losses.RankNet(), losses.PlackettLuce() + losses.Hinge(), losses.ListwiseCE(),
       losses.JudgedOnly(losses.RankNet()), losses.KLDiv(normalize="zscore") + losses.JudgedOnly(losses.ListwiseCE())]


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


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


def test_listwise_ce_value():
    expected = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 1))
                - math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(1.5) + math.exp(-1)))) / 2
    assert losses.ListwiseCE()(S) == pytest.approx(expected, rel=1e-5)


def test_judged_only_reads_the_judged_groups_alone():
    term = losses.JudgedOnly(losses.RankNet())
    judged = torch.tensor([True, False])
    # the first row alone, weighted by its share (1 of 2) of the batch
    assert term(S, labels=L, judged=judged) == pytest.approx(0.5 * float(losses.RankNet()(S[:1], labels=L[:1])))
    assert term(S, labels=L) == pytest.approx(float(losses.RankNet()(S, labels=L)))  # no flags: every group judged
    none = term(S.clone().requires_grad_(), labels=L, judged=torch.tensor([False, False]))
    assert float(none) == 0.0 and none.requires_grad
    # in a sum, the distillation term reads every group and the label term the judged ones
    combined = losses.KLDiv() + 2.0 * term
    expected = float(losses.KLDiv()(S, T)) + 2.0 * float(term(S, labels=L, judged=judged))
    assert combined(S, T, L, judged) == pytest.approx(expected)
    # a judged group's gradient moves the student; an unjudged group's rows get none from the label term
    s = S.clone().requires_grad_()
    term(s, labels=L, judged=judged).backward()
    assert s.grad[0].abs().sum() > 0 and s.grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match=r"judged of shape \(2,\)"):
        term(S, labels=L, judged=torch.tensor([True]))
    with pytest.raises(TypeError, match="wraps one loss"):
        losses.JudgedOnly(term)


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
    with pytest.raises(ValueError, match="unknown loss 'listnet'.*margin-mse"):
        losses.by_name("listnet")


def test_every_command_line_name_builds_its_loss():
    for name, factory in losses.LOSSES.items():
        made = losses.by_name(name)
        assert isinstance(made, factory) if isinstance(factory, type) else repr(made) == repr(factory())
    assert repr(losses.by_name("judged-ranknet")) == "JudgedOnly(RankNet())"
    assert repr(losses.resolve_loss("kl+judged_listwise_ce")) == "KLDiv(temperature=1.0) + JudgedOnly(ListwiseCE())"
    combined = losses.by_name("plackett-luce+hinge")
    assert repr(combined) == "PlackettLuce(temperature=1.0) + Hinge(margin=1.0)"
    assert combined.needs_teacher and combined.needs_labels


# --- list-wise options ------------------------------------------------------------------------------------

def test_normalize_scores_values():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    z = math.sqrt(1.5)
    torch.testing.assert_close(losses.normalize_scores(x, "zscore"), torch.tensor([[-z, 0.0, z]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(losses.normalize_scores(x, "minmax"), torch.tensor([[0.0, 0.5, 1.0]]), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("loss_class", [losses.KLDiv, losses.PlackettLuce, losses.CPRD])
def test_normalized_listwise_losses_ignore_the_student_scale(loss_class):
    for method in ("zscore", "minmax"):
        loss = loss_class(normalize=method)
        assert loss(3.0 * S + 7.0, T, L) == pytest.approx(float(loss(S, T, L)), rel=1e-4)
    # without normalisation the scale matters
    assert loss_class()(3.0 * S, T, L) != pytest.approx(float(loss_class()(S, T, L)), rel=1e-3)


def test_normalize_on_one_side_only():
    teacher_only = losses.KLDiv(normalize="zscore", normalize_on="teacher")
    expected = losses.KLDiv()(S, losses.normalize_scores(T, "zscore"))
    assert teacher_only(S, T) == pytest.approx(float(expected))
    student_only = losses.KLDiv(normalize="minmax", normalize_on="student")
    assert student_only(S, T) == pytest.approx(float(losses.KLDiv()(losses.normalize_scores(S, "minmax"), T)))
    assert repr(teacher_only) == "KLDiv(temperature=1.0, normalize='zscore', normalize_on='teacher')"


def test_temperature_divides_both_sides():
    pl = losses.PlackettLuce(temperature=2.0)
    assert pl(S, T, L) == pytest.approx(float(losses.PlackettLuce()(S / 2, T / 2, L)))


# --- Plackett-Luce ------------------------------------------------------------------------------------------

def test_teacher_order_puts_positives_first():
    assert losses.teacher_order(T, L).tolist() == [[0, 2, 1], [0, 1, 2]]
    assert losses.teacher_order(torch.tensor([[0.0, 5.0, 1.0]])).tolist() == [[0, 1, 2]]
    assert losses.teacher_order(torch.tensor([[0.0, 5.0, 1.0]]), positives_first=False).tolist() == [[1, 2, 0]]
    graded = torch.tensor([[3.0, 1.0, 0.0, 0.0]])
    assert losses.teacher_order(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), graded).tolist() == [[0, 1, 3, 2]]


def test_plackett_luce_value():
    # row 0: order (0, 2, 1), weights softmax(3, 0, 1) taken in that order, student (2, 0, 1) in that order
    z0 = math.exp(3) + 1 + math.e
    row0 = math.exp(3) / z0 * (lse(2, 0, 1) - 2) + math.e / z0 * (lse(0, 1) - 0)
    # row 1: order (0, 1, 2), weights softmax(1, 1, 0), student (0.5, 1.5, -1)
    z1 = 2 * math.e + 1
    row1 = math.e / z1 * (lse(0.5, 1.5, -1) - 0.5) + math.e / z1 * (lse(1.5, -1) - 1.5)
    assert losses.PlackettLuce()(S, T, L) == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # without labels, column 0 is the positive: the same order here
    assert losses.PlackettLuce()(S, T) == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_plackett_luce_is_minimal_when_the_student_orders_like_the_teacher():
    teacher = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    values = [1.5, -2.0, 0.0, 4.0]
    loss = losses.PlackettLuce(positives_first=False)
    by_perm = {perm: float(loss(torch.tensor([perm]), teacher)) for perm in itertools.permutations(values)}
    best = min(by_perm, key=by_perm.get)
    # the teacher's order is (2, 0, 3, 1): the student's largest value goes to column 2, and so on
    assert best == (1.5, -2.0, 4.0, 0.0)


def test_plackett_luce_is_translation_invariant_and_pushes_the_positive_up():
    assert losses.PlackettLuce()(S + 4.0, T, L) == pytest.approx(float(losses.PlackettLuce()(S, T, L)), rel=1e-5)
    student = torch.zeros(1, 3, requires_grad=True)
    losses.PlackettLuce()(student, torch.tensor([[2.0, 1.0, 0.0]])).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 2]


# --- CPRD -----------------------------------------------------------------------------------------------------

def test_cprd_value():
    # row 0: hard negatives by teacher: column 2 (1.0) then column 1 (0.0); row 1: column 1 then column 2
    row0 = (lse(2, 1, 0) - 2) + (lse(0, 1) - 0)
    row1 = (lse(0.5, 1.5, -1) - 0.5) + (lse(1.5, -1) - 1.5)
    assert losses.CPRD()(S, T) == pytest.approx((row0 + row1) / 2, rel=1e-5)
    assert losses.CPRD(weight=0.5)(S, T) == pytest.approx((row0 + row1 - 0.5 * (lse(0, 1) + lse(1.5, -1) - 1.5)) / 2,
                                                          rel=1e-5)
    # k=1: nothing to order among the hard negatives, only the contrastive term
    contrastive = (lse(2, 1, 0) - 2 + lse(0.5, 1.5, -1) - 0.5) / 2
    assert losses.CPRD(k=1)(S, T) == pytest.approx(contrastive, rel=1e-5)


def test_cprd_ignores_the_order_of_easy_negatives_only():
    teacher = torch.tensor([[5.0, 4.0, 3.0, 1.0, 0.0]])      # hard (k=2): columns 1, 2; easy: 3, 4
    student = torch.tensor([[2.0, 1.0, 0.5, -1.0, -2.0]])
    loss = losses.CPRD(k=2)
    base = float(loss(student, teacher))
    easy_swapped = student[:, [0, 1, 2, 4, 3]]
    assert loss(easy_swapped, teacher) == pytest.approx(base, rel=1e-6)
    hard_swapped = student[:, [0, 2, 1, 3, 4]]
    assert loss(hard_swapped, teacher) > base
    # a full Plackett-Luce sees the easy negatives' order
    assert losses.PlackettLuce()(easy_swapped, teacher) > losses.PlackettLuce()(student, teacher)


def test_cprd_gradient_signs():
    student = torch.zeros(1, 4, requires_grad=True)
    losses.CPRD(k=2)(student, torch.tensor([[3.0, 2.0, 1.0, 0.0]])).backward()
    grad = student.grad[0]
    assert grad[0] < 0 < grad[3]          # positive up, easy negative down
    assert grad[1] < grad[2]              # the harder negative is pushed above the next one


# --- Hinge ----------------------------------------------------------------------------------------------------

def test_hinge_value_and_gradient():
    # row 0: margins 1 and 2 -> 0 loss; row 1: margins -1 and 1.5 -> 2 and 0
    assert losses.Hinge()(S, labels=L) == pytest.approx(2 / 4)
    assert losses.Hinge(margin=2.0)(S, labels=L) == pytest.approx((1 + 0 + 3 + 0.5) / 4)
    student = torch.tensor([[0.0, 0.5, -3.0]], requires_grad=True)
    losses.Hinge()(student, labels=torch.tensor([[1.0, 0.0, 0.0]])).backward()
    assert student.grad[0].tolist() == pytest.approx([-0.5, 0.5, 0.0])   # separated pair (0, 2): no gradient


def test_new_loss_errors():
    with pytest.raises(ValueError, match="normalize must be None or one of"):
        losses.PlackettLuce(normalize="l2")
    with pytest.raises(ValueError, match="normalize_on"):
        losses.KLDiv(normalize="zscore", normalize_on="neither")
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        losses.CPRD(k=0)
    with pytest.raises(ValueError, match="margin"):
        losses.Hinge(margin=-1)
    with pytest.raises(ValueError, match="needs relevance labels"):
        losses.Hinge()(S, T)
    with pytest.raises(ValueError, match="PlackettLuce needs teacher scores"):
        losses.PlackettLuce()(S, labels=L)
