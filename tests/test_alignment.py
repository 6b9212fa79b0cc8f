"""Alignment distillation (QueryAlignment): a DotEncoder's query vectors against its frozen document encoder's."""
import pandas as pd
import pytest
import torch
from conftest import CountingTeacher

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses

TEXTS = ["wing flutter at transonic speed", "boundary layer heat transfer", "supersonic flow over a cone",
         "laminar flow on a flat plate", "shock wave interaction", "buckling of thin cylindrical shells",
         "heat transfer in hypersonic flow", "stability of a boundary layer", "lift of a slender wing",
         "pressure distribution on an airfoil", "vibration of a panel", "creep of metals at high temperature"]


def frozen(path, **kw):
    torch.manual_seed(0)
    return mkd.DotEncoder(path, frozen_docs=True, max_length=64, batch_size=4, **kw)


def alignment(student, texts=TEXTS, metric="mse"):
    student.model.eval()
    with torch.no_grad():
        vectors = (student.train_query_vectors(texts), student.target_query_vectors(texts))
        return float(losses.QueryAlignment(metric)(vectors=vectors))


def perturb(student, scale=0.05, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.model.encoder.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * scale)


@pytest.mark.parametrize("metric", ["mse", "cosine"])
def test_alignment_is_zero_for_a_student_equal_to_its_teacher(tiny_bert_dir, metric):
    student = frozen(tiny_bert_dir)  # all layers: the query encoder is the frozen document encoder's copy
    assert alignment(student, metric=metric) == pytest.approx(0.0, abs=1e-6)
    perturb(student)
    assert alignment(student, metric=metric) > 1e-4


def test_fit_texts_trains_a_perturbed_student_back(tiny_bert_dir, tmp_path, small_results):
    reference = frozen(tiny_bert_dir)
    student = frozen(tiny_bert_dir)
    perturb(student)
    before = alignment(student)
    reference.model.eval()
    distance = lambda: float((student.transform(small_results)["score"].to_numpy()  # noqa: E731
                              - reference.transform(small_results)["score"].to_numpy()).__abs__().mean())
    scores_before = distance()
    distiller = mkd.Distiller(student, loss=losses.QueryAlignment(), epochs=40, batch_size=12, lr=3e-3,
                              warmup_ratio=0.0, output_dir=tmp_path / "align")
    distiller.fit_texts(TEXTS + ["", TEXTS[0]])  # an empty text and a repeat are dropped and counted
    assert distiller.report["alignment_texts"] == len(TEXTS)
    assert distiller.report["texts_dropped_empty_or_repeated"] == 2
    assert len(distiller.history) == 40
    assert alignment(student) < 0.25 * before
    assert distance() < 0.5 * scores_before  # closer queries: closer scores against the same document vectors


def test_alignment_beside_a_ranking_loss_adds_to_it(tiny_bert_dir, small_results, tmp_path):
    teacher = CountingTeacher()
    qrels = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d4"], "label": [1, 1]})
    kl = mkd.Distiller(frozen(tiny_bert_dir), teacher, loss=losses.KLDiv(), num_negatives=2,
                       output_dir=tmp_path / "kl")
    both = mkd.Distiller(frozen(tiny_bert_dir), teacher, loss=losses.KLDiv() + 0.5 * losses.QueryAlignment(),
                         num_negatives=2, output_dir=tmp_path / "both")
    # a student equal to its teacher's encoder adds nothing to the ranking loss; a perturbed one adds its distance
    assert both.evaluate_loss(small_results, qrels) == pytest.approx(kl.evaluate_loss(small_results, qrels))
    perturb(kl.student)
    perturb(both.student)
    queries = small_results["query"].drop_duplicates().tolist()
    assert both.evaluate_loss(small_results, qrels) == pytest.approx(
        kl.evaluate_loss(small_results, qrels) + 0.5 * alignment(both.student, queries), rel=1e-5)
    both.settings = both.settings.replace(epochs=2, batch_size=2)
    both.fit(small_results, qrels)
    assert len(both.history) == 2


def test_scores_and_vectors_come_from_one_pass_and_match_train_scores(tiny_bert_dir):
    student = frozen(tiny_bert_dir, num_layers=1)
    student.model.eval()
    queries, texts = ["wing flutter", "wing flutter", "heat transfer"], ["a wing", "the flutter", "heat"]
    with torch.no_grad():
        scores, unique, vectors = student.train_scores_and_query_vectors(queries, texts)
        assert unique == ["wing flutter", "heat transfer"] and vectors.shape == (2, 32)
        assert torch.allclose(scores, student.train_scores(queries, texts))


def test_alignment_refuses_what_it_cannot_train(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="frozen_docs=True"):
        mkd.Distiller(mkd.DotEncoder(tiny_bert_dir, max_length=64), loss=losses.QueryAlignment())
    with pytest.raises(ValueError, match="frozen_docs=True"):
        mkd.Distiller(mkd.CrossEncoder.from_pretrained(tiny_bert_dir), loss="kl+query-alignment")
    with pytest.raises(ValueError, match="every term of the loss must be an alignment"):
        mkd.Distiller(frozen(tiny_bert_dir), loss="kl+query-alignment").fit_texts(TEXTS)
    with pytest.raises(ValueError, match="no text to align"):
        mkd.Distiller(frozen(tiny_bert_dir), loss=losses.QueryAlignment(), output_dir=tmp_path).fit_texts(["", " "])
    with pytest.raises(TypeError, match="not one string"):
        mkd.Distiller(frozen(tiny_bert_dir), loss=losses.QueryAlignment(), output_dir=tmp_path).fit_texts("wing")
    with pytest.raises(TypeError, match="JudgedOnly wraps"):
        losses.JudgedOnly(losses.QueryAlignment())
    with pytest.raises(ValueError, match="metric must be one of"):
        losses.QueryAlignment("l1")
    with pytest.raises(ValueError, match="reads the student's query vectors"):
        losses.QueryAlignment()(torch.zeros(2, 3))
    assert not (tmp_path / "student").exists()  # nothing trained, nothing saved


def test_alignment_has_a_name_and_sums():
    assert isinstance(losses.resolve_loss("query-alignment"), losses.QueryAlignment)
    combined = losses.resolve_loss("kl+QueryAlignment")
    assert combined.reads_vectors and combined.reads_scores and not combined.needs_labels
    assert repr(losses.QueryAlignment("cosine")) == "QueryAlignment(metric='cosine')"
