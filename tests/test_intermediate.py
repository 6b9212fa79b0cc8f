"""Intermediate-layer distillation: the loss on hand-made tensors, a short fit that lowers it, clear errors."""
from __future__ import annotations

from types import SimpleNamespace

import pyterrier as pt
import pytest
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses
from pyterrier_marginkd.training.layer_distillation import scores_with_layer_loss


def config(layers: int, width: int, heads: int = 2) -> SimpleNamespace:
    return SimpleNamespace(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads)


def test_uniform_layer_map_and_projections():
    loss = losses.HiddenStateMSE()
    loss.configure(config(2, 32), config(6, 48))
    assert loss.pairs == [(1, 3), (2, 6)]
    assert sorted(loss.projections) == ["1", "2"] and loss.projections["1"].in_features == 32
    same_width = losses.HiddenStateMSE(layer_map={0: 0, 2: 4})
    same_width.configure(config(2, 32), config(4, 32))
    assert same_width.pairs == [(0, 0), (2, 4)] and len(same_width.projections) == 0
    with pytest.raises(ValueError, match="layer_map must pair student layers 0..2 with teacher layers 0..4"):
        losses.HiddenStateMSE(layer_map={3: 1}).configure(config(2, 32), config(4, 32))
    with pytest.raises(ValueError, match="not configured"):
        losses.HiddenStateMSE()([torch.zeros(1, 2, 4)], [torch.zeros(1, 2, 4)], torch.ones(1, 2))


def test_hidden_state_mse_value_ignores_padding():
    loss = losses.HiddenStateMSE(weight=2.0)
    loss.configure(config(1, 2), config(1, 2))
    mask = torch.tensor([[1, 1, 0]])
    student = [torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [0.0, 2.0], [99.0, 99.0]]])]
    teacher = [torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)]
    # layer 1 vs 1: squared errors 1 + 1 + 0 + 4 over 2 tokens x 2 dims; the padded token is ignored
    assert float(loss(student, teacher, mask)) == pytest.approx(2.0 * 6 / 4)
    assert float(loss(teacher, teacher, mask)) == 0.0


def test_attention_maps_are_compared_per_head_or_head_averaged():
    loss = losses.HiddenStateMSE(attention=True)
    loss.configure(config(1, 2, heads=2), config(1, 2, heads=1))
    hidden = [torch.zeros(1, 2, 2)] * 2
    mask = torch.ones(1, 2, dtype=torch.long)
    student_attention = [torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])]   # mean: all 0.5
    teacher_attention = [torch.full((1, 1, 2, 2), 0.5)]
    assert float(loss(hidden, hidden, mask, student_attention, teacher_attention)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="attention maps"):
        loss(hidden, hidden, mask)


def layer_loss(loss: losses.HiddenStateMSE, student: mkd.CrossEncoder, teacher: mkd.CrossEncoder, results, *,
               batch_size: int = 16) -> float:
    """Mean layer loss of the student over the (query, text) pairs of a result frame (no gradient, eval mode): what
    the fit test watches fall."""
    text_field = student.text_field
    queries, texts = results["query"].tolist(), results[text_field].tolist()
    was_training = student.model.training
    student.model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(queries), batch_size):
                part = slice(start, start + batch_size)
                _, value = scores_with_layer_loss(loss, student, teacher, queries[part], texts[part])
                total += float(value) * len(queries[part])
    finally:
        student.model.train(was_training)
    return total / max(len(queries), 1)


@pytest.fixture(scope="module")
def wide_teacher_dir(tmp_path_factory, tiny_bert_dir):
    """A 4-layer, hidden-48 random cross-encoder with the tiny student's vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(tiny_bert_dir)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=96, max_position_embeddings=512, num_labels=1)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("wide_teacher")
    BertForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("attention", [False, True], ids=["hidden", "hidden+attention"])
def test_fit_lowers_the_layer_loss_and_trains_the_projections(cranfield_train, tiny_bert_dir, wide_teacher_dir,
                                                              tmp_path, attention):
    res, qrels = cranfield_train
    torch.manual_seed(0)
    student = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    teacher = mkd.CrossEncoder.from_pretrained(wide_teacher_dir, max_length=64)
    intermediate = losses.HiddenStateMSE(attention=attention)
    distiller = mkd.Distiller(student, teacher, intermediate=intermediate, epochs=3, batch_size=4, lr=5e-3, seed=1,
                              output_dir=tmp_path / "run", keep_checkpoint=True)
    assert intermediate.pairs == [(1, 2), (2, 4)]
    projection = intermediate.projections["1"].weight.detach().clone()
    pairs = res.head(24)
    before = layer_loss(intermediate, student, teacher, pairs)
    distiller.fit(res, qrels)
    after = layer_loss(intermediate, student, teacher, pairs)
    assert after < 0.8 * before
    assert not torch.equal(projection, intermediate.projections["1"].weight.detach())
    assert "intermediate=HiddenStateMSE(" in repr(distiller)
    saved = torch.load(tmp_path / "run" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert "projections.1.weight" in saved["intermediate"]


def test_non_package_models_are_refused(tiny_ce):
    scorer = pt.apply.doc_score(lambda row: 1.0)
    with pytest.raises(TypeError, match="the teacher must be a pyterrier_marginkd CrossEncoder"):
        mkd.Distiller(tiny_ce, scorer, intermediate=losses.HiddenStateMSE())
    with pytest.raises(TypeError, match="the teacher must be a pyterrier_marginkd CrossEncoder"):
        mkd.Distiller(tiny_ce, None, loss=losses.RankNet(), intermediate=losses.HiddenStateMSE())


def test_layer_loss_scores_read_a_two_logit_head_as_the_model_does(tmp_path, minilm_dir, small_results):
    """With intermediate-layer distillation the training scores come from the layer-loss forward pass: a 2-logit
    student (monoBERT style) must be scored logit[1] - logit[0] there too, not by its first logit."""
    from test_checkpoint_heads import _classifier_dir

    from pyterrier_marginkd.training.layer_distillation import check_models

    student = mkd.CrossEncoder.from_pretrained(_classifier_dir(tmp_path / "s", minilm_dir, 2, seed=1), max_length=64)
    teacher = mkd.CrossEncoder.from_pretrained(_classifier_dir(tmp_path / "t", minilm_dir, 2, seed=2), max_length=64)
    loss = losses.HiddenStateMSE()
    check_models(student, teacher)
    loss.configure(student.model.config, teacher.model.config)
    queries, texts = small_results["query"].tolist(), small_results["text"].tolist()
    student.model.eval()
    with torch.no_grad():
        scores, value = scores_with_layer_loss(loss, student, teacher, queries, texts)
    expected = student.score_pairs(queries, texts)
    assert torch.allclose(scores.double(), torch.from_numpy(expected), atol=1e-4)
    assert float(value) > 0
