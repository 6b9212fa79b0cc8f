"""Choosing which transformer layers a small student keeps: the first k, or given layer indices (spread_layers)."""
import argparse

import numpy as np
import pytest
import torch
from conftest import tiny_encoder_folder

import pyterrier_marginkd as mkd
from pyterrier_marginkd.cli import _layers
from pyterrier_marginkd.models.hf import layer_list


def test_spread_layers_keeps_both_ends():
    assert mkd.spread_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    assert mkd.spread_layers(6, 4) == [0, 1, 4, 5]
    assert mkd.spread_layers(6, 3) == [0, 4, 5]
    assert mkd.spread_layers(6, 2) == [0, 5]
    assert mkd.spread_layers(6, 1) == [5]
    assert mkd.spread_layers(12, 4) == [0, 1, 10, 11]
    for total in range(1, 25):
        for k in range(1, total + 1):
            kept = mkd.spread_layers(total, k)
            assert len(kept) == k and kept == sorted(set(kept)) and kept[-1] == total - 1
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        mkd.spread_layers(6, 7)
    with pytest.raises(ValueError, match="cannot keep 0 of 6"):
        mkd.spread_layers(6, 0)


@pytest.fixture(scope="module")
def four_layer_dir():
    torch.manual_seed(0)
    return tiny_encoder_folder(num_layers=4)


def _layer_weights(layers):
    return [torch.cat([p.detach().flatten() for p in layer.parameters()]) for layer in layers]


@pytest.mark.parametrize("make", [
    lambda path, keep: mkd.CrossEncoder.from_pretrained(path, num_layers=keep, max_length=64),
    lambda path, keep: mkd.DotEncoder.from_pretrained(path, num_layers=keep, frozen_docs=True, max_length=64),
    lambda path, keep: mkd.ColBERT.from_pretrained(path, num_layers=keep, max_length=64),
], ids=["cross_encoder", "dot_frozen_docs", "colbert"])
def test_listed_layers_are_the_kept_ones_and_survive_save_load(make, four_layer_dir, small_results, tmp_path):
    full = mkd.DotEncoder.from_pretrained(four_layer_dir, max_length=64)
    originals = _layer_weights(layer_list(full.model.encoder))
    torch.manual_seed(0)
    student = make(four_layer_dir, [0, 3])
    model = getattr(student.model, "encoder", student.model)
    kept = _layer_weights(layer_list(model))
    assert len(kept) == 2 and model.config.num_hidden_layers == 2
    assert torch.equal(kept[0], originals[0]) and torch.equal(kept[1], originals[3])
    assert "num_layers=[0, 3]" in repr(student)
    before = student(small_results)["score"].to_numpy()
    student.save_pretrained(tmp_path / "student")
    after = mkd.load(tmp_path / "student", max_length=64)(small_results)["score"].to_numpy()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep, problem", [([3, 1], "must increase"), ([0, 4], "0..3"), ([], "non-empty"),
                                           ([0, 0], "must increase"), ([True], "layer indices"), (0, "between 1")])
def test_bad_layer_choices_are_refused(keep, problem, four_layer_dir):
    with pytest.raises(ValueError, match=problem):
        mkd.CrossEncoder.from_pretrained(four_layer_dir, num_layers=keep)


def test_cli_parses_a_count_or_indices():
    assert _layers("4") == 4
    assert _layers("0,1,4,5") == [0, 1, 4, 5]
    with pytest.raises(argparse.ArgumentTypeError, match="layer count"):
        _layers("first")
