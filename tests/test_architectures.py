"""The students of the Margin-MSE paper (DotEncoder, ColBERT, PreTT, TK): what each one promises of its own (the
contract every re-ranker keeps is tests/test_transformer_contract.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CountingTeacher, build

import pyterrier_marginkd as mkd


@pytest.mark.parametrize("name", ["dot", "colbert", "pretts", "tk"])
def test_student_in_bm25_get_text_pipeline(name, tiny_bert_dir, cranfield, cranfield_bm25):
    topics = cranfield.topics("test").head(2)
    pipe = cranfield_bm25 % 5 >> cranfield.get_text() >> build(name, tiny_bert_dir)
    out = pipe(topics)
    assert len(out) == 10 and set(out["rank"]) == set(range(5))
    first_stage = (cranfield_bm25 % 5)(topics)
    assert set(zip(out.qid, out.docno)) == set(zip(first_stage.qid, first_stage.docno))


# --- DotEncoder ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dot", "dot-mean-dim-separate"])
def test_dense_retrieval_equals_brute_force_scoring(name, tiny_bert_dir, cranfield, tmp_path):
    dot = build(name, tiny_bert_dir)
    docs = [doc for _, doc in zip(range(40), cranfield.docs_iter())]
    index = dot.index(docs, tmp_path / "flex")
    assert len(index) == 40
    topics = cranfield.topics("test").head(3)
    retrieved = dot.retriever(tmp_path / "flex", num_results=5)(topics)
    assert list(retrieved.columns[:3]) == ["qid", "query", "docno"] and "query_vec" not in retrieved.columns
    corpus = pd.DataFrame({"docno": [d["docno"] for d in docs], "text": [d["text"] for d in docs]})
    brute = dot(topics.merge(corpus, how="cross"))
    for qid, group in retrieved.groupby("qid"):
        group = group.sort_values("rank")
        brute_q = brute[brute.qid == qid].set_index("docno")["score"]
        # the retrieved documents score as brute force scores them, and those are the top scores of the corpus
        # (comparing scores, not docnos, keeps near-ties of a random model from flipping the test)
        np.testing.assert_allclose(group["score"], brute_q.loc[group["docno"]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(group["score"], brute_q.nlargest(5), rtol=1e-5, atol=1e-5)
    assert len(dot.retriever(index, num_results=5)(topics.iloc[:0])) == 0


def test_dense_index_errors_are_clear(tiny_bert_dir, tmp_path):
    dot = build("dot", tiny_bert_dir)
    docs = [{"docno": "d1", "text": "wing flutter"}, {"docno": "d2", "text": "heat transfer"}]
    first = dot.index(docs, tmp_path / "flex")
    again = dot.index(docs, tmp_path / "flex")  # reused, like Collection.bm25
    assert len(again) == len(first) == 2
    other = build("dot", tiny_bert_dir)
    with torch.no_grad():
        next(other.model.parameters()).add_(0.1)
    with pytest.raises(ValueError, match="built by other weights"):
        other.index(docs, tmp_path / "flex")
    assert len(dot.index(docs + [{"docno": "d3", "text": "a"}], tmp_path / "flex", overwrite=True)) == 3
    with pytest.raises(ValueError, match="no dense index"):
        dot.retriever(tmp_path / "nothing")


def test_dot_encoder_vectors_and_settings(tiny_bert_dir, small_results, tmp_path):
    dot = build("dot-mean-dim-separate", tiny_bert_dir)
    queries, texts = small_results["query"].tolist(), small_results["text"].tolist()
    products = (dot.encode_queries(queries) * dot.encode_docs(texts)).sum(1)
    np.testing.assert_allclose(products, dot.score_pairs(queries, texts), rtol=1e-4, atol=1e-5)
    assert dot.encode_docs([]).shape == (0, 8)
    shared = build("dot", tiny_bert_dir)
    assert dot.num_parameters() > shared.num_parameters()
    dot.save_pretrained(tmp_path / "dot")
    assert (tmp_path / "dot" / "doc_encoder" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="pooling must be one of"):
        mkd.DotEncoder(tiny_bert_dir, pooling="max")


def test_dot_encoder_normalize_gives_cosine_and_survives_save_load(tiny_bert_dir, small_results, tmp_path):
    queries, texts = small_results["query"].tolist(), small_results["text"].tolist()
    raw = mkd.DotEncoder(tiny_bert_dir, pooling="mean")
    cosine = mkd.DotEncoder(tiny_bert_dir, pooling="mean", normalize=True)
    q, d = raw.encode_queries(queries), raw.encode_docs(texts)
    expected = (q * d).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(d, axis=1)
    np.testing.assert_allclose(cosine.score_pairs(queries, texts), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(raw.score_pairs(queries, texts), expected, atol=1e-3)
    cosine.save_pretrained(tmp_path / "cos")
    again = mkd.load(tmp_path / "cos")
    assert again.normalize and "normalize=True" in repr(again)
    np.testing.assert_allclose(again.score_pairs(queries, texts), expected, rtol=1e-4, atol=1e-5)


def test_dot_encoder_reranking_encodes_each_text_once(tiny_bert_dir, small_results, monkeypatch):
    dot = build("dot", tiny_bert_dir)
    frame = pd.concat([small_results.assign(qid=q, query=f"query {q}") for q in "abc"], ignore_index=True)
    expected = dot.score_pairs(frame["query"].tolist(), frame["text"].tolist())
    encoded = {"query": 0, "doc": 0}
    original = mkd.DotEncoder._encode

    def counting(self, texts, side, batch_size):
        encoded[side] += len(texts)
        return original(self, texts, side, batch_size)

    monkeypatch.setattr(mkd.DotEncoder, "_encode", counting)
    scored = dot(frame)
    assert encoded == {"query": 3, "doc": small_results["text"].nunique()}
    np.testing.assert_allclose(scored.sort_index()["score"], expected, rtol=1e-5, atol=1e-6)
    pairwise = super(mkd.DotEncoder, dot).score_pairs(frame["query"].tolist(), frame["text"].tolist())
    np.testing.assert_allclose(expected, pairwise, rtol=1e-4, atol=1e-5)


# --- ColBERT ---------------------------------------------------------------------------------------------------
def test_colbert_is_sum_of_max_similarities_with_mask_augmented_queries(tiny_bert_dir):
    colbert = build("colbert", tiny_bert_dir)
    (query, doc), = colbert._prepare(["wing flutter"], ["flutter, of a wing."])
    mask_id = colbert.tokenizer.mask_token_id
    assert len(query[0]) == 8 and query[0][-1] == mask_id and query[0].count(mask_id) == 4
    batch = colbert._collate([(query, doc)])
    with torch.inference_mode():
        q = colbert.model.embed(batch, "query")[0]
        d = colbert.model.embed(batch, "doc")[0]
        expected = (q @ d.T).max(1).values.sum()
        np.testing.assert_allclose(torch.linalg.norm(q, dim=-1), 1.0, rtol=1e-5)
    assert colbert.score_pairs(["wing flutter"], ["flutter, of a wing."])[0] == pytest.approx(float(expected), 1e-5)


def test_colbert_punctuation_is_not_matched(tiny_bert_dir):
    colbert = build("colbert-plain", tiny_bert_dir)
    batch = colbert._collate(colbert._prepare(["wing"], ["flutter, of a wing."]))
    tokens = colbert.tokenizer.convert_ids_to_tokens(batch["doc_input_ids"][0])
    match = dict(zip(tokens, batch["doc_match_mask"][0].tolist()))
    assert match[","] == 0 and match["."] == 0 and match["flutter"] == 1 and match["[SEP]"] == 1


# --- PreTT -------------------------------------------------------------------------------------------------------
def test_pretts_document_states_do_not_depend_on_the_query(tiny_bert_dir):
    pretts = build("pretts", tiny_bert_dir)
    assert pretts.num_separate_layers == 1
    text = "flutter of a swept wing"

    def doc_states(queries, texts):
        batch = pretts._collate(pretts._prepare(queries, texts))
        with torch.inference_mode():
            states = pretts.model.separate(batch, "doc")
        return states[batch["doc_index"][texts.index(text)], :len(pretts._doc_sequences([text])[0][0])]

    alone = doc_states(["wing"], [text])
    with_others = doc_states(["a much longer query about heat transfer", "x"], ["short", text])
    torch.testing.assert_close(alone, with_others, rtol=1e-5, atol=1e-5)


def test_pretts_split_must_leave_a_joint_layer(tiny_bert_dir):
    with pytest.raises(ValueError, match="num_separate_layers must be between 0 and 1"):
        mkd.PreTT(tiny_bert_dir, num_separate_layers=2)
    assert mkd.PreTT(tiny_bert_dir, num_separate_layers=0).num_separate_layers == 0


# --- TK ------------------------------------------------------------------------------------------------------------
def test_tk_starts_from_pretrained_embeddings_and_is_small(tiny_bert_dir):
    from transformers import AutoModel

    tk = build("tk", tiny_bert_dir)
    pretrained = AutoModel.from_pretrained(tiny_bert_dir).get_input_embeddings().weight.detach()
    ours = tk.model.embedding.weight.detach()
    # the same vectors, rescaled to the length of the position features: sqrt(32 / 2)
    torch.testing.assert_close(torch.nn.functional.normalize(ours), torch.nn.functional.normalize(pretrained))
    assert float(ours.norm(dim=1).mean()) == pytest.approx(4.0, rel=1e-4)
    bert = mkd.DotEncoder(tiny_bert_dir)
    assert tk.num_parameters() < bert.num_parameters()
    scores = tk.score_pairs(["wing", "..."], ["", "flutter"])
    assert np.isfinite(scores).all()
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        mkd.TK(tiny_bert_dir, num_heads=3)


def test_tk_kernels_reward_exact_matches(tiny_bert_dir):
    tk = build("tk", tiny_bert_dir)
    with torch.no_grad():
        tk.model.mixer.fill_(1.0)  # raw embeddings only: an exact match has cosine 1
        tk.model.score.weight.zero_()
        tk.model.score.weight[0, 0] = 1.0  # the exact-match kernel alone
    match, miss = tk.score_pairs(["flutter"] * 2, ["wing flutter", "heat transfer"])
    assert match > miss


def test_tk_mixing_the_first_stage_scores_saves_loads_and_distils(tiny_bert_dir, small_results, cranfield_train,
                                                                  tmp_path):
    from pyterrier_marginkd.models.ensemble import normalize_scores

    tk = mkd.TK(tiny_bert_dir, num_layers=1, num_heads=2, ff_dim=16, max_length=64, first_stage="zscore")
    tk.set_first_stage_weights(2.0, 0.5)
    results = small_results.assign(score=[3.0, 1.0, 2.0, 0.5, 4.0, 1.0])
    plain = mkd.TK(tiny_bert_dir, num_layers=1, num_heads=2, ff_dim=16, max_length=64)
    plain.model.load_state_dict({k: v for k, v in tk.model.state_dict().items() if not k.startswith("interpolation")})
    expected = 2.0 * plain(results)["score"].to_numpy() + 0.5 * normalize_scores(results["qid"], results["score"],
                                                                                "zscore")
    np.testing.assert_allclose(tk(results)["score"], expected, rtol=1e-5, atol=1e-6)
    tk.save_pretrained(tmp_path / "tk")
    again = mkd.load(tmp_path / "tk")
    assert isinstance(again, mkd.TK) and again.first_stage == "zscore"
    np.testing.assert_allclose(again(results)["score"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no 'score' column"):
        again(small_results)
    with pytest.raises(ValueError, match="saved with first_stage='zscore'"):
        mkd.TK(tmp_path / "tk", first_stage="minmax")
    with pytest.raises(ValueError, match="first_stage must be one of"):
        mkd.TK(tiny_bert_dir, num_heads=2, first_stage="rank")
    # training reads each pair's first-stage score and fits the two weights with the kernels
    res, qrels = cranfield_train
    student = mkd.TK(tiny_bert_dir, num_layers=1, num_heads=2, ff_dim=16, max_length=64, first_stage="zscore")
    distiller = mkd.Distiller(student, CountingTeacher(), loss=mkd.losses.MarginMSE(), epochs=2, batch_size=4,
                              lr=5e-3, head_lr=1e-2, seed=1, output_dir=tmp_path / "run")
    distiller.fit(res, qrels)
    assert "first_stage_mix_start" in distiller.report
    assert student.model.interpolation.weights() != tuple(distiller.report["first_stage_mix_start"])
    np.testing.assert_allclose(mkd.load(tmp_path / "run" / "student")(res)["score"], student(res)["score"],
                               rtol=1e-5, atol=1e-5)


# --- training -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dot-mean-dim-separate", "colbert", "pretts", "tk"])
def test_short_margin_mse_fit_lowers_the_loss(name, tiny_bert_dir, cranfield_train, tmp_path):
    # (a random tiny BERT gives nearly the same [CLS] vector to every text, so the DotEncoder learns with mean pooling)
    res, qrels = cranfield_train
    student = build(name, tiny_bert_dir)
    distiller = mkd.Distiller(student, CountingTeacher(), loss=mkd.losses.MarginMSE(), epochs=6, batch_size=4, lr=5e-3,
                              seed=1, output_dir=tmp_path / "run")
    before = distiller.evaluate_loss(res, qrels)
    distiller.fit(res, qrels)
    assert distiller.evaluate_loss(res, qrels) < 0.7 * before
    reloaded = mkd.load(tmp_path / "run" / "student")
    assert type(reloaded) is type(student)
    np.testing.assert_allclose(reloaded(res)["score"], student(res)["score"], rtol=1e-5, atol=1e-5)


# --- benchmarks/architectures.py: the paper's table from quickstart reports -----------------------------------------
def _architectures_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "architectures.py"
    spec = importlib.util.spec_from_file_location("benchmark_architectures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_table_from_a_committed_architectures_report(tmp_path):
    import shutil
    from pathlib import Path
    script = _architectures_script()
    report = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "quickstart-fast-architectures-cranfield"
    rows = script.architecture_rows(report, "cranfield", 2)
    students = rows[rows["training"] != ""]
    assert len(students) == 2 * len(mkd.quickstart.recipe.ARCHITECTURES)
    assert {"BM25"} <= set(rows["row"]) and any(rows["row"].str.startswith("teacher"))
    results = pd.read_csv(report / "results.csv").set_index("name")
    for _, row in students.iterrows():
        assert row["nDCG@10"] == results.loc[row["row"], "nDCG@10"]
    table = script.paper_table(rows)
    assert list(table["architecture"]) == list(mkd.quickstart.recipe.ARCHITECTURES)
    dot = table.set_index("architecture").loc["DotEncoder"]
    distilled = results.loc["student DotEncoder L2 (KL)", "nDCG@10"]
    assert dot["cranfield"].startswith(f"{distilled:.3f} / ")
    # a report that lacks a row is refused, never tabulated without it
    shutil.copytree(report, tmp_path / "report")
    results.drop(index="student PreTT L2 (labels only)").reset_index().to_csv(tmp_path / "report" / "results.csv",
                                                                                index=False)
    with pytest.raises(ValueError, match="PreTT L2"):
        script.architecture_rows(tmp_path / "report", "cranfield", 2)
