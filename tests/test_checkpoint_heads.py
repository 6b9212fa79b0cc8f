"""MS MARCO-style checkpoints load as they are — 2-logit heads (monoBERT/monoELECTRA:
score = logit[1] - logit[0]), 1-logit heads unchanged, plain encoders get a new 1-output head; a local model path
that does not exist is named at once instead of being asked of the hub."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

import pyterrier_marginkd as mkd


def _classifier_dir(path, minilm_dir, num_labels: int, *, architectures: bool = True, seed: int = 3):
    """A tiny random BertForSequenceClassification with ``num_labels`` outputs, saved with MiniLM's vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=num_labels)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # a head whose logits clearly differ from each other
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.normal_(0.0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if not architectures:  # older checkpoints carry no "architectures" entry
        config_file = path / "config.json"
        config_json = json.loads(config_file.read_text())
        config_json.pop("architectures", None)
        config_file.write_text(json.dumps(config_json))
    return path


def _hf_logits(path, frame: pd.DataFrame, max_length: int = 64) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(frame["query"].tolist(), frame["text"].tolist(), truncation=True, max_length=max_length, padding=True,
              return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.numpy()


@pytest.fixture()
def two_logit_dir(tmp_path, minilm_dir):
    return _classifier_dir(tmp_path / "mono2", minilm_dir, 2)


def test_a_two_logit_checkpoint_loads_and_scores_the_logit_difference(two_logit_dir, small_results):
    ce = mkd.CrossEncoder.from_pretrained(two_logit_dir, max_length=64)
    assert ce.model.config.num_labels == 2 and ce.head == "two_logit"
    scores = ce(small_results)["score"].to_numpy()
    logits = _hf_logits(two_logit_dir, small_results)
    np.testing.assert_allclose(scores, logits[:, 1] - logits[:, 0], rtol=1e-4, atol=1e-5)
    # ranks like softmax P(relevant)
    probability = torch.softmax(torch.tensor(logits), dim=1)[:, 1].numpy()
    assert list(np.argsort(scores)) == list(np.argsort(probability))
    # the differentiable training scores are the same difference
    ce.model.eval()
    train = ce.train_scores(small_results["query"].tolist(), small_results["text"].tolist())
    np.testing.assert_allclose(train.detach().numpy(), scores, rtol=1e-4, atol=1e-5)


def test_a_two_logit_model_saves_and_loads_to_the_same_scores(two_logit_dir, small_results, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    ce = mkd.CrossEncoder.from_pretrained(two_logit_dir, max_length=64)
    before = ce(small_results)["score"].to_numpy()
    ce.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "marginkd.json").read_text())["head"] == "two_logit"
    for loaded in (mkd.load(tmp_path / "saved"), mkd.CrossEncoder.from_pretrained(tmp_path / "saved")):
        assert loaded.head == "two_logit" and loaded.model.config.num_labels == 2
        np.testing.assert_allclose(loaded(small_results)["score"].to_numpy(), before, rtol=1e-5, atol=1e-6)
    # still a plain Hugging Face / sentence-transformers checkpoint with its 2-logit head
    logits = _hf_logits(tmp_path / "saved", small_results)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], before, rtol=1e-4, atol=1e-5)
    st = STCrossEncoder(str(tmp_path / "saved"), device="cpu")
    assert st.max_seq_length == 64  # truncates where we do (the long text of small_results is cut)
    st_logits = np.asarray(st.predict(list(zip(small_results["query"], small_results["text"]))))
    assert st_logits.shape == (len(small_results), 2)
    np.testing.assert_allclose(st_logits[:, 1] - st_logits[:, 0], before, rtol=1e-4, atol=1e-5)


def test_a_two_logit_student_trains_and_keeps_its_head(two_logit_dir, small_results, tmp_path):
    from conftest import CountingTeacher

    student = mkd.CrossEncoder.from_pretrained(two_logit_dir, max_length=64)
    qrels = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d4"], "label": [1, 1]})
    distiller = mkd.Distiller(student, CountingTeacher(), epochs=1, batch_size=2, lr=1e-3, seed=0,
                              output_dir=tmp_path / "run")
    distiller.fit(small_results, qrels)
    loaded = mkd.load(tmp_path / "run" / "student")
    assert loaded.head == "two_logit"
    np.testing.assert_allclose(loaded(small_results)["score"].to_numpy(),
                               student(small_results)["score"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_a_one_logit_checkpoint_is_unchanged(tmp_path, minilm_dir, small_results):
    path = _classifier_dir(tmp_path / "ms1", minilm_dir, 1)
    ce = mkd.CrossEncoder.from_pretrained(path, max_length=64)
    assert ce.model.config.num_labels == 1 and ce.head == "one_logit"
    np.testing.assert_allclose(ce(small_results)["score"].to_numpy(), _hf_logits(path, small_results)[:, 0],
                               rtol=1e-4, atol=1e-5)
    ce.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "marginkd.json").read_text()).get("head", "one_logit") == "one_logit"
    assert mkd.load(tmp_path / "saved").head == "one_logit"


def test_a_plain_encoder_gets_a_new_one_output_head(tiny_bert_dir):
    ce = mkd.CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    assert ce.model.config.num_labels == 1 and ce.head == "one_logit"
    assert ce.model.classifier.out_features == 1


def test_checkpoints_without_architectures_entry(tmp_path, minilm_dir, tiny_bert_dir, small_results):
    # a 2-label classifier whose config does not name its architecture keeps its trained head
    path = _classifier_dir(tmp_path / "old2", minilm_dir, 2, architectures=False)
    ce = mkd.CrossEncoder.from_pretrained(path, max_length=64)
    assert ce.head == "two_logit"
    logits = _hf_logits(path, small_results)
    np.testing.assert_allclose(ce(small_results)["score"].to_numpy(), logits[:, 1] - logits[:, 0], rtol=1e-4,
                               atol=1e-5)
    # a plain encoder without the entry (its config says 2 labels by default) still gets a 1-output head
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_bert_dir, plain)
    config = json.loads((plain / "config.json").read_text())
    config.pop("architectures", None)
    (plain / "config.json").write_text(json.dumps(config))
    assert mkd.CrossEncoder.from_pretrained(plain).head == "one_logit"


def test_a_head_with_more_than_two_labels_is_refused(tmp_path, minilm_dir):
    path = _classifier_dir(tmp_path / "nli", minilm_dir, 3)
    with pytest.raises(ValueError, match="3 outputs"):
        mkd.CrossEncoder.from_pretrained(path)


def test_intermediate_distillation_refuses_a_two_logit_student(two_logit_dir):
    student = mkd.CrossEncoder.from_pretrained(two_logit_dir, max_length=64)
    teacher = mkd.CrossEncoder.from_pretrained(two_logit_dir, max_length=64)
    with pytest.raises(ValueError, match="2-logit"):
        mkd.Distiller(student, teacher, intermediate=mkd.losses.HiddenStateMSE())


@pytest.mark.parametrize("load", [
    lambda p: mkd.CrossEncoder(p),
    lambda p: mkd.ColBERT(p),
    lambda p: mkd.PreTT(p),
    lambda p: mkd.TK(p),
], ids=["CrossEncoder", "ColBERT", "PreTT", "TK"])
def test_a_missing_local_model_folder_is_named_at_once(tmp_path, load):
    missing = tmp_path / "runs" / "teacher"
    started = time.time()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(str(missing))
    assert time.time() - started < 5
