"""Speed paths must not change scores: first-token-only last layer, and the throughput benchmark's plumbing."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pyterrier_marginkd.models.hf import lean_inference

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def _tokens_seen_by_last_feed_forward(model, seen: list):
    return model.bert.encoder.layer[-1].intermediate.register_forward_hook(
        lambda module, args, out: seen.append(out.shape[1]))


def _batch(ce, frame):
    return ce._collate(ce._prepare(frame["query"].tolist(), frame["text"].tolist()))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_lean_inference_keeps_scores_and_skips_the_rest_of_the_last_layer(tiny_ce, small_results, attention):
    batch, model = _batch(tiny_ce, small_results), tiny_ce.model
    model.set_attn_implementation(attention)
    assert (batch["attention_mask"] == 0).any()  # padding, so the attention mask matters
    last = model.bert.encoder.layer[-1]
    acts = [layer.intermediate.intermediate_act_fn for layer in model.bert.encoder.layer]
    seen, queries = [], []
    handles = [_tokens_seen_by_last_feed_forward(model, seen),
               last.attention.self.query.register_forward_hook(lambda m, args, out: queries.append(out.shape[1]))]
    with torch.inference_mode():
        full = model(**batch).logits[:, 0]
        with lean_inference(model):
            fast = model(**batch).logits[:, 0]
        again = model(**batch).logits[:, 0]
    for handle in handles:
        handle.remove()
    width = batch["input_ids"].shape[1]
    assert seen == [width, 1, width] and queries == [width, 1, width]
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, full)
    assert [layer.intermediate.intermediate_act_fn for layer in model.bert.encoder.layer] == acts
    assert "forward" not in vars(last.attention.self)
    np.testing.assert_allclose(tiny_ce.score_pairs(small_results["query"].tolist(), small_results["text"].tolist()),
                               full.numpy(), rtol=1e-5, atol=1e-6)


def test_lean_inference_still_differentiates(tiny_ce, small_results):
    batch, model = _batch(tiny_ce, small_results), tiny_ce.model
    full = torch.autograd.grad(model(**batch).logits.sum(), model.classifier.weight)[0]
    with lean_inference(model):
        lean = torch.autograd.grad(model(**batch).logits.sum(), model.classifier.weight)[0]
    torch.testing.assert_close(lean, full, rtol=1e-5, atol=1e-6)


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_train_scores_skip_the_rest_of_the_last_layer_with_the_same_scores_and_gradients(tiny_ce, small_results):
    """Training reads the last layer's first token only: with dropout off, the scores and every gradient are those of
    the whole model's forward pass."""
    model = tiny_ce.model
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    batch = _batch(tiny_ce, small_results)
    full = model(**batch).logits[:, 0]
    full.sum().backward()
    expected = _grads(model)
    model.zero_grad()
    seen = []
    handle = _tokens_seen_by_last_feed_forward(model, seen)
    scores = tiny_ce.train_scores(small_results["query"].tolist(), small_results["text"].tolist())
    handle.remove()
    assert seen == [1]
    # train_scores sorts nothing: rows follow the input
    torch.testing.assert_close(scores, full, rtol=1e-5, atol=1e-6)
    scores.sum().backward()
    got = _grads(model)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert "forward" not in vars(model.bert.encoder.layer[-1].attention.self)


def test_models_whose_head_may_pool_all_tokens_are_left_alone(tiny_ce, small_results):
    tiny_ce.model.config.model_type = "modernbert"
    seen = []
    handle = _tokens_seen_by_last_feed_forward(tiny_ce.model, seen)
    with torch.inference_mode(), lean_inference(tiny_ce.model):
        tiny_ce.model(**_batch(tiny_ce, small_results))
    handle.remove()
    assert seen[0] > 1


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_times_every_system_and_keeps_their_scores(benchmark):
    queries, texts = ["a", "b", "c"], ["x", "yy", "zzz"]
    systems = {"len": lambda q, t: np.array([len(x) for x in t], dtype=float),
               "zero": lambda q, t: np.zeros(len(q))}
    out = benchmark.compare(systems, queries, texts, repeats=2, warmup=1)
    assert set(out) == {"len", "zero"}
    assert out["len"]["scores"].tolist() == [1.0, 2.0, 3.0]
    assert all(len(r["seconds"]) == 2 and r["pairs_per_s"] > 0 for r in out.values())


def test_pair_flops_follow_the_model_dimensions(benchmark):
    from transformers import BertConfig

    config = BertConfig(hidden_size=384, intermediate_size=1536)
    flops = benchmark.pair_flops(config, 6, np.array([204]))
    # about 4.7 GFLOP for a 204-token pair through MiniLM-L6 (21 MFLOP per token + attention)
    assert 4.5e9 < flops[0] < 4.9e9


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_real_pairs(benchmark, cranfield, minilm_dir, tmp_path):
    out = tmp_path / "throughput.json"
    report = benchmark.main(["--data", str(cranfield.path), "--model", str(minilm_dir), "--num-layers", "1",
                             "--lengths", "64", "--pairs", "8", "--batch-size", "4", "--repeats", "1",
                             "--systems", "ours", "int8", "st", "ort", "ort-int8", "hf", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(report["results"]))
    rows = {row["system"]: row for row in report["results"]}
    onnx = {"ONNX Runtime", "ONNX Runtime int8"} if importlib.util.find_spec("onnxruntime") else set()
    expected = {"ours", "ours int8", "ST", "HF unsorted"} | onnx
    assert set(rows) == expected
    assert all(rows[name]["max_abs_diff_vs_ours"] < 1e-4 for name in expected - {"ours"} if "int8" not in name)
    assert all(rows[name]["vs_ours"] > 0 for name in expected)
    assert not report["notes"]  # int8 rows differ from fp32 by design: no disagreement note
    assert "| ours |" in out.with_suffix(".md").read_text() and "| ours int8 |" in out.with_suffix(".md").read_text()
