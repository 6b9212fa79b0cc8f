"""`marginkd quickstart` on tiny models and a slice of Cranfield: a fresh run, a second run reusing everything."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest

import pyterrier_marginkd as mkd
from pyterrier_marginkd import cli
from pyterrier_marginkd.quickstart import (
    DEPLOYED_FILE,
    DOC_VECTORS_FILE,
    FAST,
    FULL,
    TEACHER_FILE,
    TIMINGS_FILE,
    VS_LABELS_FILE,
    Recipe,
)
from pyterrier_marginkd.quickstart.recipe import group_queries
from pyterrier_marginkd.quickstart.stages import download_hint as _download_hint
from pyterrier_marginkd.report import CSV_FILE, PLOT_FILE, TABLE_FILE


def systems(teacher: str, loss: str = "KL", output=None) -> list[str]:
    """The report's rows; the teacher's name says its kind, the one ``teacher.json`` in ``output`` records (the
    tiny model is 2 layers deep: its fine-tuned member is L2)."""
    kind = "(zero-shot)"
    if output is not None and json.loads((output / "teacher" / TEACHER_FILE).read_text())["choice"]["chosen"] != \
            "zero-shot":
        kind = "+ fine-tuned L2 (labels)"
    return ["BM25", f"teacher BM25 + {teacher} {kind}", f"student L1 ({loss})", "student L1 (labels only)"]


def run(data, tiny_bert_dir, output, *extra: str) -> None:
    cli.main(["quickstart", "--data", str(data), "--output", str(output), "--model", str(tiny_bert_dir),
              "--student-layers", "1", "--fast", "--train-queries", "10", "--test-queries", "4", "--k", "6",
              "--max-length", "48", "--pseudo-queries", "12", "--student-steps", "3", *extra])


def table_rows(output) -> list[str]:
    lines = (output / "report" / TABLE_FILE).read_text().split("\n\nAgainst")[0].splitlines()
    return [line.split(" | ")[0].lstrip("| ") for line in lines[2:] if line.startswith("| ")]


def test_fresh_run_then_a_second_run_reuses_every_model(cranfield, tiny_bert_dir, tmp_path, capsys, monkeypatch):
    output = tmp_path / "qs"
    run(cranfield.path, tiny_bert_dir, output, "--query-max-length", "16")  # queries cut shorter than documents
    printed = capsys.readouterr().out
    expected = systems(tiny_bert_dir.name, output=output)
    assert table_rows(output) == expected
    choice = json.loads((output / "teacher" / TEACHER_FILE).read_text())["choice"]
    aware = choice["chosen"] == "label-aware"
    assert choice["chosen"] in ("zero-shot", "label-aware")
    # the member trained on all the fitting queries trains only for a label-aware teacher (the fold models choose)
    assert (output / "teacher-tuned").is_dir() == aware
    assert (len(choice["label_aware_weights"]) == 3) if aware else choice["label_aware_weights"] is None
    # chosen on every judged train query (8 fitting, scored out of fold by 3 fold models, and 2 validation ones)
    assert f"teacher: {choice['chosen']} (nDCG@10 on 10 judged queries" in printed
    assert choice["validation_queries"] == 10 and "out-of-fold" in choice["label_aware"]
    for fold in (1, 2, 3):
        done = json.loads((output / f"teacher-tuned-fold{fold}of3" / "done.json").read_text())
        assert done["settings"]["steps"] == 50 and done["report"]["queries"] < 8  # trained without its fold
    assert all(name in printed for name in expected) and "quickstart finished" in printed
    assert "pseudo-queries (titles of documents)" in printed
    assert (output / "report" / PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    versus = pd.read_csv(output / "report" / VS_LABELS_FILE)
    assert list(versus["name"]) == ["student L1 (labels only)", "student L1 (KL)"]
    deployed = pd.read_csv(output / "report" / DEPLOYED_FILE)
    assert list(deployed["name"]) == [expected[1], "student L1 (KL, int8)", "student L1 (labels only, int8)"]
    assert deployed["x teacher pairs/s"].iloc[0] == 1.0 and (deployed["x teacher pairs/s"] > 0).all()
    assert "The students as deployed (int8" in (output / "report" / TABLE_FILE).read_text()
    timings = pd.read_csv(output / "report" / TIMINGS_FILE).set_index("stage")["seconds"]
    stages = ["BM25 index and candidates", "zero-shot teacher (fusion weights)",
              "label-aware teacher: fold models", *(["label-aware teacher: fine-tuned member"] if aware else []),
              "label-aware teacher: choice",
              "pseudo-queries and their candidates", "student L1 (KL)", "student L1 (labels only)",
              "test candidates and their document vectors", "evaluation", "students as deployed (int8)"]
    assert list(timings.index) == [*stages, "other", "total"] and (timings > 0).all()
    assert timings[stages + ["other"]].sum() == pytest.approx(timings["total"])
    assert "where the time went: BM25 index and candidates" in printed
    fusion = json.loads((output / "teacher" / "fusion.json").read_text())
    assert len(fusion["weights"]) == 2 and fusion["normalize"] == "zscore"
    assert (output / "cranfield.pisa").is_dir() and any((output / "teacher_cache").iterdir())
    student_folder = "student-L1-kl" + ("" if choice["chosen"] == "zero-shot" else "-labelteacher")
    for folder in ["teacher-tuned"] if aware else ["teacher-tuned-fold1of3"]:
        tuned = json.loads((output / folder / "done.json").read_text())["settings"]
        assert tuned["layers"] == [0, 1] and tuned["loss"] == "RankNet()"  # the whole model, fine-tuned on labels
    for stage in ("student-L1-labels", student_folder):
        done = json.loads((output / stage / "done.json").read_text())
        assert done["settings"]["max_length"] == 48 and done["settings"]["steps"] == 3
        assert done["settings"]["query_max_length"] == 16
        assert done["settings"]["num_negatives"] == 5  # the rest of each query's k = 6 candidates
        saved = mkd.load(output / stage / "student")
        assert saved.first_stage == "zscore" and (saved.max_length, saved.query_max_length) == (48, 16)
    assert json.loads((output / "teacher-tuned-fold1of3" / "done.json").read_text())["settings"]["query_max_length"] \
        == 16 and json.loads((output / "teacher" / "fusion.json").read_text())["settings"]["query_max_length"] == 16
    first = pd.read_csv(output / "report" / CSV_FILE)

    def no_training(*args, **kwargs):
        raise AssertionError("a second run must not train again")
    monkeypatch.setattr(mkd.Distiller, "fit", no_training)
    monkeypatch.setattr(mkd.Ensemble, "fit", no_training)
    run(cranfield.path, tiny_bert_dir, output, "--query-max-length", "16")
    printed = capsys.readouterr().out
    # fusion, 3 fold models, (the member,) choice, 2 students
    assert printed.count("reusing") == 7 + aware and "training in" not in printed
    assert table_rows(output) == expected
    effectiveness = ["name", "nDCG@10", "RR@10", "AP@100"]
    pd.testing.assert_frame_equal(first[effectiveness], pd.read_csv(output / "report" / CSV_FILE)[effectiveness])

    with pytest.raises(ValueError, match=r"other settings \(changed: \['steps'\]\)"):
        run(cranfield.path, tiny_bert_dir, output, "--query-max-length", "16", "--student-steps", "2")


def tiny_sentence_transformer(tiny_bert_dir, folder):
    """The tiny BERT as a sentence-transformers folder (mean pooling, normalised): a bi-encoder teacher."""
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


def test_a_given_bi_encoder_teacher_and_time_boxed_students(cranfield, tiny_bert_dir, tmp_path, capsys):
    st_folder = tiny_sentence_transformer(tiny_bert_dir, tmp_path / "tiny-st")
    output = tmp_path / "given"
    run(cranfield.path, tiny_bert_dir, output, "--teacher", str(st_folder), "--student-time", "0.001",
        "--quantize", "none", "--student-loss", "margin-mse", "--align-steps", "2", "--align-weight", "0.5", "--amp")
    printed = capsys.readouterr().out
    assert "every model trains under bfloat16 autocast" in printed
    assert table_rows(output) == systems("tiny-st", "Margin-MSE + alignment", output)
    assert "student L1 (Margin-MSE + alignment): 2 alignment steps first" in printed
    assert not (output / "report" / DEPLOYED_FILE).exists() and "as deployed" not in printed
    assert printed.count("budget allowed") == 2  # the students; the teacher's member keeps its step budget
    chosen = json.loads((output / "teacher" / TEACHER_FILE).read_text())["choice"]["chosen"]
    folder = "student-L1-marginmse-align0.5-alignfirst2" + ("" if chosen == "zero-shot" else "-labelteacher")
    done = json.loads((output / folder / "done.json").read_text())
    assert done["report"]["stopped_by_max_time"] and done["settings"]["max_time"] == 0.001
    assert done["settings"]["align_steps"] == 2 and "0.5 * QueryAlignment()" in done["settings"]["loss"]
    assert done["settings"]["amp"] is True  # a folder trained under autocast says so (float32 ones say nothing)
    assert not (output / folder / "align" / "student").exists()  # the aligned weights went on into distillation
    labels_only = json.loads((output / "student-L1-labels" / "done.json").read_text())["settings"]
    assert "align_steps" not in labels_only and labels_only["loss"] == "RankNet()"  # the twin learns from labels


def test_a_later_run_in_the_folder_encodes_no_document_again(cranfield, tiny_bert_dir, tmp_path, capsys,
                                                              monkeypatch):
    # the default layout: the model is a bi-encoder, the teacher's member and the students share its document vectors
    model = tiny_sentence_transformer(tiny_bert_dir, tmp_path / "tiny-st")
    output = tmp_path / "qs"
    run(cranfield.path, model, output, "--zero-shot-teacher", "--quantize", "none")
    assert "document vectors:" not in capsys.readouterr().out  # nothing saved before
    saved = np.load(output / DOC_VECTORS_FILE)
    assert len(saved["vectors"]) == len(saved["digests"]) > 0
    first = pd.read_csv(output / "report" / CSV_FILE).set_index("name")

    encoded = []
    original = mkd.DotEncoder._encode_side

    def spy(self, texts, side, batch_size):
        encoded.extend(texts if side == "doc" else [])
        return original(self, texts, side, batch_size)
    monkeypatch.setattr(mkd.DotEncoder, "_encode_side", spy)
    # another distilled student in the same folder: the teacher, its cache and the label-only student reused, and
    # every document vector too (a vector of the first run's gives the same scores: the reused rows are equal)
    run(cranfield.path, model, output, "--zero-shot-teacher", "--quantize", "none", "--kl-temperature", "2")
    printed = capsys.readouterr().out
    assert f"document vectors: reusing {len(saved['vectors'])} document vectors in {output / DOC_VECTORS_FILE}" \
        in printed
    assert encoded == [] and "student L1 (KL T=2): training in" in printed
    second = pd.read_csv(output / "report" / CSV_FILE).set_index("name")
    reused = [name for name in first.index if name != "student L1 (KL)"]
    pd.testing.assert_frame_equal(first.loc[reused, ["nDCG@10", "RR@10"]], second.loc[reused, ["nDCG@10", "RR@10"]])


def test_recipes_and_offline_hint(cranfield):
    assert Recipe.preset(True) == FAST and Recipe.preset(True, k=7).k == 7
    assert FAST.student_time is None and FULL.student_time is None  # step budgets: one table on any machine
    assert FULL.student_steps > FAST.student_steps and FULL.pseudo_queries > FAST.pseudo_queries
    with pytest.raises(TypeError, match="unknown recipe setting"):
        Recipe.preset(True, epochs=3)
    assert FAST.student_loss is None and FAST.negatives == FAST.k - 1 and Recipe.preset(True, k=7).negatives == 6
    # each architecture's own loss (ColBERT: Margin-MSE) unless the recipe sets one for all
    assert [FAST.loss_for(a) for a in ("DotEncoder", "CrossEncoder", "ColBERT")] == ["kl", "kl", "margin-mse"]
    assert FAST.student_objective(alignment=False, architecture="ColBERT")[0] == "Margin-MSE"
    assert Recipe.preset(True, student_loss="kl").loss_for("ColBERT") == "kl"
    assert Recipe.preset(True, student_loss="margin-mse").loss_for("DotEncoder") == "margin-mse"
    assert Recipe.preset(True, num_negatives=3).negatives == 3
    assert FAST.teacher_labels and FAST.label_weight == 0 and FAST.student_objective()[0] == "KL"
    name, loss = Recipe.preset(True, label_weight=0.5).student_objective()
    assert name == "KL + labels"
    assert repr(loss) == "KLDiv(temperature=1.0, normalize='zscore') + 0.5 * JudgedOnly(RankNet())"
    with pytest.raises(ValueError, match="label_weight must be >= 0"):
        Recipe.preset(True, label_weight=-1)
    name, loss = Recipe.preset(True, label_weight=1, align_weight=0.5).student_objective()
    assert name == "KL + labels + alignment" and loss.reads_vectors
    assert Recipe.preset(True, align_weight=0.5, align_steps=100).folder_suffix() == "-align0.5-alignfirst100"
    # a KL temperature other than 1 names the loss, its students' folders and the KLDiv it makes; Margin-MSE ignores it
    sharp = Recipe.preset(True, kl_temperature=0.5, label_weight=1)
    name, loss = sharp.student_objective()
    assert name == "KL T=0.5 + labels" and repr(loss).startswith("KLDiv(temperature=0.5, normalize='zscore')")
    assert (sharp.loss_folder(), sharp.loss_folder("ColBERT", alignment=False)) == ("kl-t0.5-hardlabels1",
                                                                                   "marginmse-hardlabels1")
    assert (FAST.loss_folder(), FAST.student_objective(alignment=False, architecture="ColBERT")[0]) == ("kl",
                                                                                                       "Margin-MSE")
    for bad in (0, -1.0, True, "0.5"):
        with pytest.raises(ValueError, match="kl_temperature must be a number > 0"):
            Recipe.preset(True, kl_temperature=bad)
    with pytest.raises(ValueError, match="align_steps must be a whole number >= 0"):
        Recipe.preset(True, align_steps=-1)
    with pytest.raises(ValueError, match="teacher_folds, teacher_steps and teacher_fold_steps must be >= 1"):
        Recipe.preset(True, teacher_folds=0)
    assert (FAST.query_max_length, FULL.query_max_length, FULL.query_length) == (64, None, None)
    with pytest.raises(ValueError, match="query_max_length must be a whole number >= 3"):
        Recipe.preset(True, query_max_length=2)
    with pytest.raises(ValueError, match="num_negatives must be between 1 and k - 1 = 49"):
        Recipe.preset(True, num_negatives=50)
    from pyterrier_marginkd.quickstart import ARCHITECTURE_RECIPES, ArchitectureRecipe

    # the joint students read 128 tokens of each candidate and validate 3 times (README, "Student architectures")
    assert {(r.max_length, r.validations) for r in ARCHITECTURE_RECIPES.values()} == {(128, 3)}
    with pytest.raises(ValueError, match="max_length must be >= 8 tokens"):
        ArchitectureRecipe(batch_size=4, num_negatives=3, lr=1e-4, max_length=4)
    with pytest.raises(ValueError, match="validations must be >= 1"):
        ArchitectureRecipe(batch_size=4, num_negatives=3, lr=1e-4, validations=0)
    with pytest.raises(ValueError, match=r"student_loss must be one of \['kl', 'margin-mse'\] or None"):
        Recipe.preset(True, student_loss="ranknet")
    with pytest.raises(RuntimeError, match=r"Offline, pass a local folder with docs\.jsonl\.gz.*--data") as error:
        with _download_hint(mkd.Collection("irds:beir/scifact")):
            raise ConnectionError("Name or service not known")
    assert "shared" not in str(error.value)  # the library's messages do not name this repository's data layout
    with pytest.raises(FileNotFoundError):
        with _download_hint(cranfield):
            raise FileNotFoundError("a local file is missing")


def test_quickstart_on_a_collection_without_splits(vaswani, tiny_bert_dir, tmp_path, capsys):
    output = tmp_path / "vaswani"
    run(vaswani.path, tiny_bert_dir, output, "--k", "5", "--max-length", "32")
    printed = capsys.readouterr().out
    assert "vaswani ships no train/test split: holding out 30%" in printed
    assert "(first_sentences of documents)" in printed
    assert table_rows(output) == systems(tiny_bert_dir.name, output=output)


def test_word_budget_shrinks_batches_of_paragraph_queries_only(cranfield):
    queries = cranfield.topics("train")["query"]
    assert FAST.query_words_per_step == 1024 and FAST.batch_for(queries) == FAST.batch_size == 32  # one-liners
    paragraphs = [f"{q} {' '.join(['pressure distribution on a slender wing'] * 25)}" for q in queries]
    mean_words = sum(len(q.split()) for q in set(paragraphs)) / len(set(paragraphs))  # about 167
    assert FAST.batch_for(paragraphs) == 8  # 1024 // 167 = 6, raised to the floor of 8
    assert Recipe.preset(True, query_words_per_step=4096).batch_for(paragraphs) == int(4096 // mean_words) == 24
    assert Recipe.preset(True, query_words_per_step=None).batch_for(paragraphs) == 32
    # a few paragraphs among many pseudo-queries (the distilled students' mix) keep the full batch
    assert FAST.batch_for(paragraphs[:100] + [f"title {i}" for i in range(1000)]) == 32
    # ... but the mean is over groups: 300 paragraph groups beside 1000 one-word ones average 39 words, 26 groups
    assert FAST.batch_for(paragraphs[:100] * 3 + [f"title{i}" for i in range(1000)]) == 26
    assert FAST.batch_for([]) == 32
    with pytest.raises(ValueError, match="query_words_per_step must be >= 1 or None"):
        Recipe.preset(True, query_words_per_step=0)


def test_pseudo_queries_as_long_as_paragraph_training_queries(cranfield):
    queries = list(cranfield.topics("train")["query"])  # median 18 words: one-liners
    paragraphs = [" ".join(["word"] * n) for n in range(30, 71)]  # 30..70 words: median 50, quartiles 40 and 60
    # the default: titles, first sentences where documents have none, whatever the queries
    assert FAST.pseudo_query_method is None
    assert FAST.pseudo_query_plan(True, paragraphs) == ("title", {})
    assert FAST.pseudo_query_plan(False, queries) == ("first_sentence", {})
    auto = Recipe.preset(True, pseudo_query_method="auto")  # spans only for paragraph-long queries
    assert auto.pseudo_query_plan(True, queries) == ("title", {})
    assert auto.pseudo_query_plan(False, queries) == ("first_sentence", {})
    assert auto.pseudo_query_plan(True, []) == ("title", {})
    assert auto.pseudo_query_plan(True, paragraphs) == ("span", {"span_words": (40, 60), "max_words": 60})
    assert auto.pseudo_query_plan(True, ["a, b; c"] * 3 + paragraphs[:1] * 2)[0] == "title"  # punctuation: no word
    # a method given is kept; spans given for short queries take their lengths (at least 3 words)
    assert Recipe.preset(True, pseudo_query_method="first_sentence").pseudo_query_plan(True, paragraphs) == (
        "first_sentence", {})
    assert Recipe.preset(True, pseudo_query_method="span").pseudo_query_plan(True, ["a b", "c d"]) == (
        "span", {"span_words": (3, 3), "max_words": 3})
    assert Recipe.preset(True, pseudo_query_method="span").pseudo_query_plan(True, []) == ("span", {})
    with pytest.raises(ValueError, match="pseudo_query_method must be None, 'auto' or one of"):
        Recipe.preset(True, pseudo_query_method="sentence")
    pq = mkd.pseudo_queries(cranfield, "span", num=50, seed=0, **auto.pseudo_query_plan(True, paragraphs)[1])
    lengths = pq["query"].str.split().str.len()
    assert len(pq) == 50 and lengths.max() <= 60 and lengths.median() >= 40  # (an abstract shorter than 40: all of it)


def test_span_pseudo_queries_train_students_in_their_own_folders(cranfield, tiny_bert_dir, tmp_path, capsys):
    output = tmp_path / "spans"
    run(cranfield.path, tiny_bert_dir, output, "--quantize", "none", "--pseudo-query-method", "span",
        "--zero-shot-teacher")
    printed = capsys.readouterr().out
    assert "12 pseudo-queries (spans of documents of " in printed and "as long as the middle half" in printed
    done = json.loads((output / "student-L1-kl-pqspan" / "done.json").read_text())
    assert done["settings"]["pseudo_queries"] == 12 and not (output / "student-L1-kl").exists()
    made = done["settings"]["pseudo_query_method"]  # recorded: other span lengths are another student
    assert made["method"] == "span" and 3 <= made["span_words"][0] <= made["span_words"][1] == made["max_words"]
    assert (output / "student-L1-labels").is_dir()  # the label-only twin does not read pseudo-queries
    assert table_rows(output) == systems(tiny_bert_dir.name)  # (the zero-shot teacher)


def test_queries_as_the_students_read_them(tiny_bert_dir):
    from transformers import AutoTokenizer

    from pyterrier_marginkd.quickstart.run import words_read

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    long = " ".join(f"pressure{i} wing" for i in range(40))
    read = words_read(tokenizer, ["flow over a slender wing", long, ""], 12)
    assert read[0] == "flow over a slender wing" and read[2] == ""
    assert long.startswith(read[1]) and len(tokenizer(read[1])["input_ids"]) <= 12 < len(tokenizer(long)["input_ids"])
    assert words_read(tokenizer, [], 12) == []


def test_amp_none_trains_in_bfloat16_where_the_device_has_it(monkeypatch):
    import pyterrier_marginkd.quickstart.recipe as recipe_module

    asked = []
    monkeypatch.setattr(recipe_module, "native_bf16", lambda device: asked.append(device.type) or True)
    assert Recipe.preset(True, amp=None).trains_in_bf16() and asked
    monkeypatch.setattr(recipe_module, "native_bf16", lambda device: False)
    assert not Recipe.preset(True, amp=None).trains_in_bf16()
    assert Recipe.preset(True, amp=True).trains_in_bf16() and not Recipe.preset(True, amp=False).trains_in_bf16()
    with pytest.raises(ValueError, match="amp must be True, False or None"):
        Recipe.preset(True, amp="yes")


def test_a_judged_query_counts_once_per_relevant_candidate_in_the_word_budget():
    results = pd.DataFrame({"qid": ["1", "1", "1", "2", "2", "3", "3"],
                            "query": ["long question"] * 3 + ["unlucky"] * 2 + ["pseudo"] * 2,
                            "docno": ["a", "b", "c", "a", "b", "a", "b"]})
    qrels = pd.DataFrame({"qid": ["1", "1", "1", "1", "2"], "docno": ["a", "b", "z", "c", "z"],
                          "label": [1, 2, 1, 0, 1]})
    # q1: a and b relevant among its candidates (z not retrieved, c judged not relevant); q2: none retrieved, no
    # group; q3 (no qrels, a pseudo-query the teacher labels): one group
    assert group_queries(results, qrels) == ["long question", "long question", "pseudo"]
    assert group_queries(results, None) == ["long question", "unlucky", "pseudo"]


def saved_member(output) -> str:
    from pyterrier_marginkd.models.identity import describe
    return describe(mkd.load(output / "teacher-tuned" / "student"))


def test_distilled_students_start_from_the_chosen_fine_tuned_member(cranfield, tiny_bert_dir, tmp_path, capsys,
                                                                    monkeypatch):
    import pyterrier_marginkd.quickstart.run as quickstart_run

    real = quickstart_run.choose_teacher

    def label_aware(zero_shot, tuned, valid_res, valid_qrels, **kwargs):  # label-aware, whatever the fold models say
        _, choice = real(zero_shot, tuned, valid_res, valid_qrels, **kwargs)
        member = tuned if isinstance(tuned, pt.Transformer) else tuned()  # trained (or loaded) now
        aware = mkd.Ensemble([*zero_shot.members, member], normalize=zero_shot.normalize).fit(valid_res, valid_qrels)
        return aware, {**choice, "chosen": "label-aware", "label_aware_weights": aware.weights}

    monkeypatch.setattr(quickstart_run, "choose_teacher", label_aware)
    output = tmp_path / "aware"
    run(cranfield.path, tiny_bert_dir, output, "--quantize", "none", "--students-start", "tuned")
    printed = capsys.readouterr().out
    start = str(output / "teacher-tuned" / "student")
    assert f"distilled students start from the fine-tuned member's layers ({start})" in printed
    done = json.loads((output / "student-L1-kl-labelteacher-fromtuned" / "done.json").read_text())["settings"]
    assert done["start"] == start and done["layers"] == [1]  # the member's last layer, as from the model
    assert "start" not in json.loads((output / "student-L1-labels" / "done.json").read_text())["settings"]
    # the student began as the member's layer (150 teacher steps away from the model) and took 3 steps from there
    def layer(folder):
        return mkd.DotEncoder.from_pretrained(folder, num_layers=[1], frozen_docs=True, first_stage="zscore",
                                              max_length=48).model.encoder.encoder.layer[0].output.dense.weight
    trained = mkd.load(output / "student-L1-kl-labelteacher-fromtuned" / "student").model.encoder.encoder.layer[0]
    trained = trained.output.dense.weight
    assert (trained - layer(start)).norm() < 0.5 * (trained - layer(tiny_bert_dir)).norm()
    # a second run reuses the recorded label-aware choice while its member holds the same weights, else fits again
    record = output / "teacher" / TEACHER_FILE
    saved = json.loads(record.read_text())
    assert saved["choice"]["member"].startswith("DotEncoder:")
    run(cranfield.path, tiny_bert_dir, output, "--quantize", "none", "--students-start", "tuned")
    assert f"teacher: reusing the choice in {record}" in capsys.readouterr().out
    saved["choice"]["member"] = "DotEncoder:another-member"
    record.write_text(json.dumps(saved))
    run(cranfield.path, tiny_bert_dir, output, "--quantize", "none", "--students-start", "tuned")
    assert "teacher: the fine-tuned member is not the one" in capsys.readouterr().out
    assert json.loads(record.read_text())["choice"]["member"] == saved_member(output)

    quickstart_run.quickstart(cranfield.path, tmp_path / "off", model=str(tiny_bert_dir), student_layers=[1],
                              recipe=Recipe.preset(True, train_queries=10, test_queries=4, k=6, max_length=48,
                                                   pseudo_queries=12, student_steps=3, quantize=None),
                              verbose=False)  # the default: students start from the model
    assert (tmp_path / "off" / "student-L1-kl-labelteacher").is_dir()
    assert not (tmp_path / "off" / "student-L1-kl-labelteacher-fromtuned").exists()


def test_architectures_each_distilled_and_on_labels_alone_in_one_report(cranfield, tiny_bert_dir, tmp_path, capsys,
                                                                        monkeypatch):
    import dataclasses

    from pyterrier_marginkd.quickstart import recipe as quickstart_recipe

    output = tmp_path / "arch"
    # ColBERT reads fewer tokens than the recipe's 48; the others are capped at the recipe's
    colbert = quickstart_recipe.ARCHITECTURE_RECIPES["ColBERT"]
    monkeypatch.setitem(quickstart_recipe.ARCHITECTURE_RECIPES, "ColBERT", dataclasses.replace(colbert, max_length=32))
    run(cranfield.path, tiny_bert_dir, output, "--zero-shot-teacher", "--architectures", "DotEncoder", "crossencoder",
        "ColBERT", "PreTT", "TK")
    printed = capsys.readouterr().out
    archs = ["DotEncoder", "CrossEncoder", "ColBERT", "PreTT", "TK"]
    loss = {a: "Margin-MSE" if a == "ColBERT" else "KL" for a in archs}  # each architecture's own loss
    students = [f"student {a} L1 ({what})" for a in archs for what in (loss[a], "labels only")]
    assert table_rows(output) == ["BM25", f"teacher BM25 + {tiny_bert_dir.name} (zero-shot)", *students]
    table = pd.read_csv(output / "report" / CSV_FILE).set_index("name")
    assert (table.loc[students, "pairs/s"] > 0).all() and (table.loc[students, "params"] > 0).all()
    # each architecture's distilled student against its own label-only twin
    versus = pd.read_csv(output / "report" / VS_LABELS_FILE)
    assert list(versus["name"]) == [s for a in archs for s in (f"student {a} L1 (labels only)",
                                                               f"student {a} L1 ({loss[a]})")]
    assert "Against its label-only twin (paired t-test, Holm-corrected per architecture)" in printed
    deployed = pd.read_csv(output / "report" / DEPLOYED_FILE)
    assert list(deployed["name"])[1:] == [f"{s[:-1]}, int8)" for s in students]
    assert (deployed["pairs/s"] > 0).all()
    # the joint architectures: 4 groups of 1 + 3 candidates, the same for both twins; stores for the test
    for architecture, kind in (("CrossEncoder", mkd.CrossEncoder), ("ColBERT", mkd.ColBERT), ("PreTT", mkd.PreTT),
                               ("TK", mkd.TK)):
        distilled = f"student-{architecture}-L1-" + ("marginmse" if architecture == "ColBERT" else "kl")
        for folder in (distilled, f"student-{architecture}-L1-labels"):
            settings = json.loads((output / folder / "done.json").read_text())["settings"]
            assert (settings["batch_size"], settings["num_negatives"], settings["steps"]) == (4, 3, 3)
            assert settings["lr"] == (1e-3 if architecture == "TK" else 1e-4)
            saved = mkd.load(output / folder / "student")
            assert isinstance(saved, kind) and saved.first_stage == "zscore"  # every architecture mixes in BM25
            assert saved.max_length == (32 if architecture == "ColBERT" else 48)
            assert settings["architecture"]["validations"] == 3
            assert "student_loss" not in settings["architecture"]  # the loss is recorded as such; twins ignore it
    assert {p.name for p in (output / "stores").iterdir()} >= {"student-ColBERT-L1-Margin-MSE",
                                                               "student-PreTT-L1-KL-int8"}
    timings = pd.read_csv(output / "report" / TIMINGS_FILE)["stage"].tolist()
    assert all(s in timings for s in students)

    with pytest.raises(ValueError, match=r"unknown student architecture\(s\) \['BERT-DOT'\]"):
        run(cranfield.path, tiny_bert_dir, output, "--architectures", "BERT-DOT")


def test_default_student_sizes_one_size_per_architecture_in_the_papers_table():
    import pyterrier_marginkd.quickstart.run as quickstart_run

    assert quickstart_run.layer_counts(None, ["DotEncoder"]) == [2, 4]
    assert quickstart_run.layer_counts(None, ["DotEncoder", "CrossEncoder", "TK"]) == [2]
    assert quickstart_run.layer_counts(None, ["ColBERT"]) == [2]
    assert quickstart_run.layer_counts([4, 2, 4], ["DotEncoder", "TK"]) == [2, 4]  # as given
    with pytest.raises(ValueError, match="positive layer counts"):
        quickstart_run.layer_counts([0, 2], ["DotEncoder"])
    with pytest.raises(ValueError, match="positive layer counts"):
        quickstart_run.layer_counts([], ["DotEncoder"])
    assert cli.build_parser().parse_args(["quickstart"]).student_layers is None


def test_a_stage_inside_another_counts_as_its_own():
    import time

    from pyterrier_marginkd.quickstart.stages import StageClock

    clock = StageClock()
    with clock("outer"):
        time.sleep(0.05)
        with clock("inner"):
            time.sleep(0.1)
    table = clock.table(total=0.2).set_index("stage")["seconds"]
    assert list(table.index) == ["inner", "outer", "other", "total"]
    assert 0.1 <= table["inner"] < 0.15 and 0.05 <= table["outer"] < 0.1  # the outer stage without the inner one
    assert table["inner"] + table["outer"] + table["other"] == pytest.approx(0.2, abs=0.05)
