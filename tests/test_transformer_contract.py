"""The contract every re-ranker keeps, one suite over every architecture (CrossEncoder, DotEncoder, ColBERT, PreTT,
TK, and the settings that change their code paths): PyTerrier's conventions, bad input named, invariances,
differentiable training scores, save and load."""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
from conftest import BUILDERS, build, tiny_encoder_folder

import pyterrier_marginkd as mkd


@pytest.fixture(params=list(BUILDERS))
def student(request, tiny_bert_dir):
    return build(request.param, tiny_bert_dir)


def scores_by_pair(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index(["qid", "docno"])["score"]


def test_transform_adds_score_and_rank_keeps_columns(student, small_results):
    out = student(small_results.assign(score=100.0, rank=7))
    assert len(out) == len(small_results)
    assert {"qid", "query", "docno", "text", "extra", "score", "rank"} <= set(out.columns)
    assert np.isfinite(out["score"]).all() and (out["score"] != 100.0).all()
    for _, group in out.groupby("qid"):
        assert sorted(group["rank"]) == list(range(len(group)))
        assert group.sort_values("rank")["score"].is_monotonic_decreasing
        assert group.sort_values("rank").iloc[0]["score"] == group["score"].max()
    merged = out.merge(small_results, on=["qid", "docno"], suffixes=("", "_in"))
    assert (merged["extra"] == merged["extra_in"]).all() and (merged["text"] == merged["text_in"]).all()


def test_empty_input_gives_empty_output_with_columns(student, small_results):
    out = student(small_results.iloc[:0])
    assert len(out) == 0
    assert {"score", "rank", "extra"} <= set(out.columns)


@pytest.mark.parametrize("column", ["qid", "query", "docno", "text"])
def test_missing_column_is_named(student, small_results, column):
    with pytest.raises(KeyError, match=column) as err:
        student(small_results.drop(columns=[column]))
    if column == "text":
        assert "get_text" in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, None, 42, b"bytes"])
def test_non_string_text_names_the_row(student, small_results, bad):
    frame = small_results.astype({"text": object})
    frame.at[4, "text"] = bad
    with pytest.raises(ValueError, match=r"column 'text'.*row 4.*d4"):
        student(frame)


def test_missing_query_is_refused(student, small_results):
    frame = small_results.astype({"query": object})
    frame.at[0, "query"] = None
    with pytest.raises(ValueError, match="column 'query'"):
        student(frame)


def test_scores_do_not_depend_on_batch_size_or_row_order(student, small_results):
    base = None
    for batch_size in (1, 2, 5, 64):
        student.batch_size = batch_size
        scores = scores_by_pair(student(small_results))
        base = scores if base is None else base
        np.testing.assert_allclose(scores.loc[base.index], base, rtol=1e-4, atol=1e-5)
    shuffled = scores_by_pair(student(small_results.sample(frac=1.0, random_state=3)))
    np.testing.assert_allclose(shuffled.loc[base.index], base, rtol=1e-4, atol=1e-5)


def test_train_scores_are_differentiable_and_match_inference(student, small_results):
    queries, texts = small_results["query"].tolist(), small_results["text"].tolist()
    inference = student.score_pairs(queries, texts)
    student.model.eval()
    train = student.train_scores(queries, texts)
    assert train.shape == (len(queries),) and train.requires_grad
    np.testing.assert_allclose(train.detach().numpy(), inference, rtol=1e-4, atol=1e-5)
    train.sum().backward()
    with_grad = [name for name, p in student.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("embed" in name for name in with_grad)
    assert len(with_grad) > len(list(student.model.parameters())) // 2


def test_save_load_round_trip_identical(student, small_results, tmp_path):
    before = student(small_results)["score"].to_numpy()
    student.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").rglob("*")}
    assert {"marginkd.json", "pt_meta.json"} <= files
    assert ("model.safetensors" if isinstance(student, mkd.CrossEncoder) else "marginkd.safetensors") in files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in files)
    loaded_all = (type(student).from_pretrained(tmp_path / "m"), mkd.load(tmp_path / "m"),
                  pt.Artifact.load(str(tmp_path / "m")))
    for loaded in loaded_all:
        assert type(loaded) is type(student) and loaded._config() == student._config()
        assert loaded.max_length == student.max_length
        np.testing.assert_allclose(loaded(small_results)["score"].to_numpy(), before, rtol=1e-5, atol=1e-6)
    assert repr(loaded_all[0]) == repr(student).replace(repr(student.model_name), repr(str(tmp_path / "m")))
    assert not list(tmp_path.glob(".m.tmp-*"))


def test_saved_folder_refuses_other_architectures_and_settings(student, tmp_path):
    student.save_pretrained(tmp_path / "m")
    other = mkd.TK if not isinstance(student, mkd.TK) else mkd.DotEncoder
    with pytest.raises(ValueError, match=f"holds a '{student.ARCHITECTURE}' model"):
        other.from_pretrained(tmp_path / "m")
    fixed = {"dot": ("dim", 4), "colbert": ("dim", 4), "pretts": ("num_separate_layers", 0), "tk": ("num_heads", 1)}
    if student.ARCHITECTURE in fixed:  # a cross-encoder's settings are all free to change
        name, value = fixed[student.ARCHITECTURE]
        with pytest.raises(ValueError, match=f"saved with {name}="):
            type(student).from_pretrained(tmp_path / "m", **{name: value})


def test_repr_and_schematic_are_short(student):
    assert repr(student).startswith(f"{type(student).__name__}(")
    assert len(student.schematic()["label"]) <= 20


@functools.lru_cache(maxsize=None)
def _tiny_dir() -> str:
    return tiny_encoder_folder(num_layers=2)


TestCrossEncoderIsATransformer = pt.testing.transformer_test_class(lambda: build("cross_encoder", _tiny_dir()))
TestDotEncoderIsATransformer = pt.testing.transformer_test_class(lambda: build("dot", _tiny_dir()))
TestColBERTIsATransformer = pt.testing.transformer_test_class(lambda: build("colbert", _tiny_dir()))
TestPreTTIsATransformer = pt.testing.transformer_test_class(lambda: build("pretts", _tiny_dir()))
TestTKIsATransformer = pt.testing.transformer_test_class(lambda: build("tk", _tiny_dir()))
