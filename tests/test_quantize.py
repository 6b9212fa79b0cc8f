"""int8 inference (``quantize="int8"``): every architecture scores close to fp32, saves, loads and scores as before
saving; an int8 model is not trained."""
from __future__ import annotations

import json

import numpy as np
import pyterrier as pt
import pytest
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.identity import describe
from pyterrier_marginkd.models.quantize import is_quantized

#: tiny models of every architecture, each built the same way every time (new heads are random)
BUILDERS = {
    "cross_encoder": lambda path, **kw: mkd.CrossEncoder(path, max_length=64, batch_size=4, **kw),
    "dot": lambda path, **kw: mkd.DotEncoder(path, pooling="mean", dim=8, max_length=64, batch_size=4, **kw),
    "dot-frozen-docs": lambda path, **kw: mkd.DotEncoder(path, frozen_docs=True, num_layers=1, max_length=64,
                                                         batch_size=4, **kw),
    "colbert": lambda path, **kw: mkd.ColBERT(path, dim=16, query_length=8, max_length=64, batch_size=4, **kw),
    "pretts": lambda path, **kw: mkd.PreTT(path, max_length=64, batch_size=4, **kw),
    "tk": lambda path, **kw: mkd.TK(path, num_layers=1, num_heads=2, ff_dim=16, max_length=64, batch_size=4, **kw),
}


def tolerance(fp32: np.ndarray) -> float:
    """How far an int8 score may be from the fp32 one: 1% of the largest fp32 score's magnitude (at least 0.01)."""
    return 0.01 * max(1.0, float(np.abs(fp32).max()))


@pytest.fixture(params=list(BUILDERS))
def saved_fp32(request, tiny_bert_dir, tmp_path):
    """(architecture, folder of a saved fp32 tiny model): every load from it has the same weights."""
    torch.manual_seed(0)
    BUILDERS[request.param](tiny_bert_dir).save_pretrained(tmp_path / "fp32")
    return request.param, tmp_path / "fp32"


def pairs(frame):
    return frame["query"].tolist(), frame["text"].tolist()


def test_int8_scores_close_to_fp32_and_save_load_score_the_same(saved_fp32, small_results, tmp_path):
    _, folder = saved_fp32
    fp32 = mkd.load(folder)
    int8 = mkd.load(folder, quantize="int8")
    assert int8.quantization == "int8" and fp32.quantization is None
    assert is_quantized(int8.model) and not is_quantized(fp32.model)
    assert "quantize='int8'" in repr(int8) and "quantize" not in repr(fp32)
    assert int8.num_parameters() == fp32.num_parameters()
    fp32_scores, int8_scores = fp32.score_pairs(*pairs(small_results)), int8.score_pairs(*pairs(small_results))
    assert np.abs(int8_scores - fp32_scores).max() <= tolerance(fp32_scores)
    assert not np.array_equal(int8_scores, fp32_scores)  # int8 arithmetic really ran

    int8.save_pretrained(tmp_path / "int8")
    assert json.loads((tmp_path / "int8" / "marginkd.json").read_text())["quantize"] == "int8"
    for loaded in (mkd.load(tmp_path / "int8"), pt.Artifact.load(str(tmp_path / "int8"))):
        assert loaded.quantization == "int8" and is_quantized(loaded.model)
        np.testing.assert_array_equal(loaded.score_pairs(*pairs(small_results)), int8_scores)
    # the folder holds the dequantized fp32 weights: as fp32 they score like the int8 model too
    np.testing.assert_allclose(mkd.load(folder).score_pairs(*pairs(small_results)), fp32_scores)


def test_quantize_method_equals_loading_quantized(saved_fp32, small_results):
    _, folder = saved_fp32
    model = mkd.load(folder)
    assert model.quantize("int8") is model and model.quantize("int8") is model  # in place; twice is once
    np.testing.assert_array_equal(model.score_pairs(*pairs(small_results)),
                                  mkd.load(folder, quantize="int8").score_pairs(*pairs(small_results)))
    attributes = pt.inspect.transformer_attributes(model, strict=False)  # (model_kwargs are not attributes)
    assert {a.name: a.value for a in attributes}["quantize"] == "int8"


@pt.testing.transformer_test_class
def test_int8_cross_encoder_is_a_pyterrier_transformer():
    from conftest import tiny_encoder_folder

    return mkd.CrossEncoder.from_pretrained(tiny_encoder_folder(), quantize="int8")


def test_training_an_int8_model_is_refused(tiny_bert_dir, small_results, tmp_path):
    torch.manual_seed(0)
    student = BUILDERS["cross_encoder"](tiny_bert_dir, quantize="int8")
    with pytest.raises(ValueError, match="quantized .*cannot be trained"):
        mkd.Distiller(student, None, loss="ranknet", output_dir=tmp_path / "run")
    later = BUILDERS["cross_encoder"](tiny_bert_dir)
    distiller = mkd.Distiller(later, None, loss="ranknet", output_dir=tmp_path / "run")
    later.quantize("int8")
    qrels = small_results[["qid", "docno"]].assign(label=[1, 0, 0, 1, 0, 0])
    with pytest.raises(ValueError, match="quantized .*cannot be trained"):
        distiller.fit(small_results, qrels)


def test_bad_settings_are_refused(tiny_bert_dir):
    with pytest.raises(ValueError, match="quantize must be one of"):
        BUILDERS["cross_encoder"](tiny_bert_dir, quantize="int4")
    model = BUILDERS["cross_encoder"](tiny_bert_dir, quantize="int8")
    with pytest.raises(ValueError, match="CPU only"):
        model.to("cuda")
    with pytest.raises(ValueError, match="CPU only"):
        BUILDERS["cross_encoder"](tiny_bert_dir, quantize="int8", device="cuda")


def test_an_int8_teacher_is_another_teacher(saved_fp32):
    _, folder = saved_fp32
    fp32, int8 = mkd.load(folder), mkd.load(folder, quantize="int8")
    assert describe(int8) != describe(fp32)  # its scores differ, so its cached scores must not be mixed up
    assert describe(int8) == describe(mkd.load(folder, quantize="int8"))


@pytest.mark.slow
def test_real_minilm_int8_keeps_its_cosine_scores(minilm_dir, small_results):
    """all-MiniLM-L6-v2 (6 layers, hidden 384) as a bi-encoder: int8 cosines within 0.08 of fp32, correlated > 0.98."""
    fp32 = mkd.DotEncoder.from_pretrained(minilm_dir)
    int8 = mkd.DotEncoder.from_pretrained(minilm_dir, quantize="int8")
    fp32_scores, int8_scores = fp32.score_pairs(*pairs(small_results)), int8.score_pairs(*pairs(small_results))
    assert np.abs(int8_scores - fp32_scores).max() < 0.08
    assert np.corrcoef(int8_scores, fp32_scores)[0, 1] > 0.98


def test_int8_frozen_docs_keep_fp32_document_vectors(tiny_bert_dir, small_results):
    """Frozen document vectors are the checkpoint's, computed once ahead of queries: int8 makes only the query
    encoder int8, so a student sharing its teacher's stored vectors never writes other vectors beside them."""
    torch.manual_seed(0)
    fp32 = BUILDERS["dot-frozen-docs"](tiny_bert_dir)
    int8 = BUILDERS["dot-frozen-docs"](tiny_bert_dir, quantize="int8")
    texts = small_results["text"].drop_duplicates().tolist()
    np.testing.assert_array_equal(int8.encode_docs(texts), fp32.encode_docs(texts))
    assert is_quantized(int8.model.encoder) and not is_quantized(int8.model.doc_encoder)
    queries = small_results["query"].drop_duplicates().tolist()
    assert not np.array_equal(int8.encode_queries(queries), fp32.encode_queries(queries))
