"""Pre-computed document stores: scores equal the on-the-fly path; stale, foreign and half-written stores are caught."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.docstore import STORE_FILE, DocumentStore

TEXTS = ["flutter of a swept wing at transonic speed", "heat transfer in a laminar boundary layer, measured.",
         "the theory of supersonic flow", "boundary layer transition on a flat plate " * 12, "a", "!!! ?"]
DOCS = [{"docno": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
STUDENTS = {
    "dot-mean": lambda path: mkd.DotEncoder(path, pooling="mean", dim=8, max_length=48),
    "dot-frozen-mix": lambda path: mkd.DotEncoder(path, frozen_docs=True, first_stage="zscore", num_layers=1,
                                                  max_length=48),
    "colbert": lambda path: mkd.ColBERT(path, dim=8, mask_punctuation=True, max_length=48),
    "colbert-no-augmentation": lambda path: mkd.ColBERT(path, dim=8, query_length=0, max_length=48),
    "pretts": lambda path: mkd.PreTT(path, num_separate_layers=1, first_stage="minmax", max_length=48),
    "tk": lambda path: mkd.TK(path, num_layers=1, first_stage="zscore", max_length=48, max_query_length=8),
}


def candidates(docs=DOCS) -> pd.DataFrame:
    rows = [{"qid": qid, "query": query, "docno": d["docno"], "text": d["text"], "score": float(len(d["text"]) % 7)}
            for qid, query in [("q1", "wing flutter"), ("q2", "boundary layer heat transfer at supersonic speed")]
            for d in docs]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def make(name, tiny_bert_dir):
    torch.manual_seed(0)
    return STUDENTS[name](tiny_bert_dir)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_stored_scores_equal_on_the_fly(name, tiny_bert_dir, tmp_path):
    student = make(name, tiny_bert_dir)
    store = student.build_store(DOCS, tmp_path / "store")
    assert len(store) == len(DOCS) and (tmp_path / "store" / STORE_FILE).exists()
    inp = candidates()
    expected = student(inp)
    for given in (inp, inp.drop(columns=["text"])):  # the text is not needed for stored documents
        reranker = student.with_store(tmp_path / "store")
        got = reranker(given)
        assert got[["qid", "docno"]].equals(given[["qid", "docno"]])
        np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5, atol=1e-5)
        assert (got["rank"] == expected["rank"]).all()
        assert reranker.computed == 0
    empty = student.with_store(store)(inp.head(0))
    assert len(empty) == 0 and "score" in empty.columns


def test_missing_and_changed_documents_are_computed_from_their_text(tiny_bert_dir, tmp_path):
    student = make("colbert", tiny_bert_dir)
    student.build_store(DOCS[:3], tmp_path / "store")
    changed = [*DOCS[:2], {"docno": "d2", "text": "a different text under a stored docno"}, *DOCS[3:]]
    inp = candidates(changed)
    reranker = student.with_store(tmp_path / "store")
    got = reranker(inp)
    np.testing.assert_allclose(got["score"], student(inp)["score"], rtol=1e-5, atol=1e-5)
    assert reranker.computed == 2 * 4  # per query: d2 (stale text) and d3, d4, d5 (absent)
    with pytest.raises(ValueError, match=r"8 candidate\(s\) are not in the document store.*no 'text' column"):
        reranker(inp.drop(columns=["text"]).assign(docno=lambda f: f["docno"].replace({"d2": "d9"})).pipe(
            lambda f: f[f["docno"].isin(["d9", "d3", "d4", "d5"])]))


def test_store_of_other_weights_is_refused(tiny_bert_dir, tmp_path):
    student = make("pretts", tiny_bert_dir)
    store = student.build_store(DOCS, tmp_path / "store")
    reranker = student.with_store(store)
    reranker(candidates())
    with torch.no_grad():  # as a training step would: the separate layers' weights change in place
        student.model.encoder.embeddings.word_embeddings.weight.mul_(1.01)
    with pytest.raises(ValueError, match="built by other weights"):
        reranker(candidates())
    with pytest.raises(ValueError, match="built by other weights"):
        student.with_store(store)
    with pytest.raises(ValueError, match="built by other weights"):
        student.build_store(DOCS, tmp_path / "store")
    rebuilt = student.build_store(DOCS, tmp_path / "store", overwrite=True)
    np.testing.assert_allclose(student.with_store(rebuilt)(candidates())["score"], student(candidates())["score"],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="other weights or settings"):
        make("colbert", tiny_bert_dir).with_store(rebuilt)  # another architecture


def test_tk_store_follows_every_weight(tiny_bert_dir, tmp_path):
    """TK's documents depend on its mixing weight (a parameter of the model itself, not of a layer) as much as on its
    embeddings and transformer: changing it makes the store stale."""
    student = make("tk", tiny_bert_dir)
    store = student.build_store(DOCS, tmp_path / "store")
    assert store.get(0).shape[1] == student.model.embedding.weight.shape[1]
    with torch.no_grad():
        student.model.mixer.add_(0.1)
    with pytest.raises(ValueError, match="built by other weights"):
        student.with_store(store)
    rebuilt = student.build_store(DOCS, tmp_path / "store", overwrite=True)
    np.testing.assert_allclose(student.with_store(rebuilt)(candidates())["score"], student(candidates())["score"],
                               rtol=1e-5, atol=1e-5)


def test_joint_layers_and_query_side_do_not_invalidate(tiny_bert_dir, tmp_path):
    """Only what documents depend on is checked: PreTT's joint layers and a frozen-document DotEncoder's query
    encoder may train on."""
    pretts = make("pretts", tiny_bert_dir)
    store = pretts.build_store(DOCS, tmp_path / "pretts")
    with torch.no_grad():
        pretts.model.score_head.weight.add_(0.5)
        mkd_layers = pretts.model.encoder.encoder.layer
        mkd_layers[1].output.dense.weight.mul_(1.1)
    np.testing.assert_allclose(pretts.with_store(store)(candidates())["score"], pretts(candidates())["score"],
                               rtol=1e-5, atol=1e-5)
    dot = make("dot-frozen-mix", tiny_bert_dir)
    store = dot.build_store(DOCS, tmp_path / "dot")
    with torch.no_grad():
        dot.model.encoder.encoder.layer[0].output.dense.weight.mul_(1.1)
    np.testing.assert_allclose(dot.with_store(store)(candidates())["score"], dot(candidates())["score"],
                               rtol=1e-5, atol=1e-5)


def test_saved_and_loaded_student_reads_its_store(tiny_bert_dir, tmp_path):
    student = make("dot-mean", tiny_bert_dir)
    store = student.build_store(DOCS, tmp_path / "store")
    student.save_pretrained(tmp_path / "saved")
    loaded = mkd.load(tmp_path / "saved")
    np.testing.assert_allclose(loaded.with_store(store)(candidates())["score"], student(candidates())["score"],
                               rtol=1e-5, atol=1e-5)
    int8 = mkd.load(tmp_path / "saved", quantize="int8")
    with pytest.raises(ValueError, match="built by other weights"):  # int8 document vectors differ from fp32 ones
        int8.with_store(store)


@pytest.mark.parametrize("name", ["colbert", "pretts", "tk"])
def test_half_precision_store_scores_within_a_thousandth(name, tiny_bert_dir, tmp_path):
    student = make(name, tiny_bert_dir)
    full = student.build_store(DOCS, tmp_path / "f32")
    half = student.build_store(DOCS, tmp_path / "f16", dtype="float16")
    assert (full.dtype, half.dtype, DocumentStore(tmp_path / "f16").dtype) == ("float32", "float16", "float16")
    assert half.vectors.dtype == np.float16 and half.get(0).dtype == np.float32
    assert (tmp_path / "f16" / "vectors.f16").stat().st_size * 2 == (tmp_path / "f32" / "vectors.f32").stat().st_size
    np.testing.assert_allclose(half.get(3), full.get(3), rtol=1e-3, atol=1e-3)
    inp = candidates()
    expected = student.with_store(full)(inp)["score"]
    got = student.with_store(half)(inp)["score"]
    assert not np.array_equal(got, expected)  # the rows did change, by their rounding only
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    with pytest.raises(ValueError, match="keeps its rows as float16, not float32: use it as it is, or rebuild"):
        student.build_store(DOCS, tmp_path / "f16")
    assert student.build_store(DOCS, tmp_path / "f16", dtype="float32", overwrite=True).dtype == "float32"
    with pytest.raises(ValueError, match=r"dtype must be one of \['float16', 'float32'\], got 'int8'"):
        student.build_store(DOCS, tmp_path / "int8", dtype="int8")
    assert not (tmp_path / "int8").exists()


def test_second_build_reuses_the_store(tiny_bert_dir, tmp_path):
    student = make("colbert", tiny_bert_dir)
    student.build_store(DOCS, tmp_path / "store")
    written = (tmp_path / "store" / STORE_FILE).stat().st_mtime_ns
    student.build_store(iter(()), tmp_path / "store")  # reused: the documents are not read again
    assert (tmp_path / "store" / STORE_FILE).stat().st_mtime_ns == written


def test_bad_documents_and_paths(tiny_bert_dir, tmp_path):
    student = make("colbert", tiny_bert_dir)
    with pytest.raises(ValueError, match="docno 'd1' appears twice"):
        student.build_store([*DOCS, DOCS[1]], tmp_path / "twice")
    with pytest.raises(ValueError, match="needs 'docno' and 'text'"):
        student.build_store([{"docno": "x", "body": "no text"}], tmp_path / "body")
    assert not (tmp_path / "twice").exists() and not (tmp_path / "body").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a document store"):
        student.build_store(DOCS, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="no document store"):
        DocumentStore(tmp_path / "nothing")


KILLED_BUILD = """
import sys, time
import pyterrier_marginkd as mkd
student = mkd.ColBERT(sys.argv[1], dim=8, max_length=48)
def docs():
    for i in range(10_000):
        if i == 64:
            open(sys.argv[3], "w").close()  # some batches are written: kill now
            time.sleep(600)
        yield {"docno": str(i), "text": f"document number {i} about wings"}
student.build_store(docs(), sys.argv[2], batch_size=16)
"""


def test_store_killed_mid_write_is_detected_and_rebuilt(tiny_bert_dir, tmp_path):
    marker, path = tmp_path / "written", tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(tiny_bert_dir), str(path), str(marker)])
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the build ended before the kill"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".store.tmp-")]
    assert leftovers and any(f.stat().st_size > 0 for f in leftovers[0].iterdir())  # half a store was on disk
    assert not path.exists()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        DocumentStore(path)
    student = mkd.ColBERT(tiny_bert_dir, dim=8, max_length=48)
    store = student.build_store(DOCS, path)
    assert len(store) == len(DOCS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store.tmp-")]


def test_pretts_last_layer_computes_cls_alone_with_the_same_scores(tiny_bert_dir):
    """PreTT's head reads [CLS] only, so its last layer computes that row alone: same scores as the whole layer, and
    training still reaches every joint weight."""
    from pyterrier_marginkd.models.hf import layer_list

    student = make("pretts", tiny_bert_dir)
    model = student.model.eval()
    batch = student._to_device(student._collate(student._prepare(["wing flutter", "heat"], TEXTS[:2])))
    queries = model.separate(batch, "query")[batch["query_index"]]
    docs = model.separate(batch, "doc")[batch["doc_index"]]
    q_mask = batch["query_attention_mask"][batch["query_index"]]
    d_mask = batch["doc_attention_mask"][batch["doc_index"]]
    whole = model._run_layers(torch.cat([queries, docs], 1), torch.cat([q_mask, d_mask], 1),
                              layer_list(model.encoder)[model.num_separate_layers:])
    expected = model.score_head(whole[:, 0]).squeeze(-1)
    torch.testing.assert_close(model.joint(queries, q_mask, docs, d_mask), expected, rtol=1e-5, atol=1e-6)
    model.train()
    model(batch).sum().backward()
    last = layer_list(model.encoder)[-1]
    for part in (last.attention.self.query, last.attention.self.key, last.output.dense):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0


def test_report_meters_a_stored_reranker_once_per_pair(tiny_bert_dir, tmp_path):
    from pyterrier_marginkd.report import _timed_run

    student = make("colbert", tiny_bert_dir)
    inp = candidates()
    stored = student.with_store(student.build_store(DOCS, tmp_path / "store"))
    for system in (stored, student):  # from the store, and on the fly (score_pairs may call score_stored)
        run, stats = _timed_run(system, inp)
        assert stats["pairs"] == len(inp) and stats["pairs/s"] > 0
        assert stats["params"] == student.num_parameters() and len(run) == len(inp)
    assert "score_pairs" not in vars(student) and "score_stored" not in vars(student)  # the meters are removed
