"""The quickstart: BM25, a fused teacher that uses the labels, distilled students and a label-only student in one
report."""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import pyterrier as pt
import torch
from transformers import AutoConfig, AutoTokenizer

from pyterrier_marginkd import losses
from pyterrier_marginkd.data.collection import Collection
from pyterrier_marginkd.data.pseudo import natural_method, pseudo_queries
from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.colbert import ColBERT
from pyterrier_marginkd.models.cross_encoder import CrossEncoder
from pyterrier_marginkd.models.crossfit import CrossFitted
from pyterrier_marginkd.models.docstore import StoredDocs
from pyterrier_marginkd.models.dot import DotEncoder
from pyterrier_marginkd.models.ensemble import Ensemble, FirstStageScore
from pyterrier_marginkd.models.hf import spread_layers
from pyterrier_marginkd.models.identity import describe
from pyterrier_marginkd.models.io import default_model, load_scorer
from pyterrier_marginkd.models.pretts import PreTT
from pyterrier_marginkd.models.saved_vectors import SavedDocVectors
from pyterrier_marginkd.models.tk import TK
from pyterrier_marginkd.quickstart.recipe import (
    ARCHITECTURE_RECIPES,
    ARCHITECTURES,
    DEFAULT_DATA,
    DEFAULT_OUTPUT,
    Recipe,
    architecture_names,
)
from pyterrier_marginkd.quickstart.stages import (
    StageClock,
    Trainer,
    choose_once,
    digest,
    download_hint,
    fit_fusion,
    log,
    resolve,
    sample_topics,
    saved_kwargs,
    short_name,
    split_validation,
)
from pyterrier_marginkd.report import TABLE_FILE, deployed_report, markdown_table, report
from pyterrier_marginkd.training.teachers import assign_folds, choose_teacher

#: the report's second comparison: each distilled student against the label-only student
VS_LABELS_FILE = "results_vs_labels.csv"
#: the report's third: the students as deployed (int8 query encoders) against the teacher
DEPLOYED_FILE = "results_deployed.csv"
#: the teacher's choice between the zero-shot and the label-aware fusion
TEACHER_FILE = "teacher.json"
#: the frozen document vectors (the model's, shared by its students and teacher member), kept for later runs
DOC_VECTORS_FILE = "doc_vectors.npz"
#: wall seconds per stage of the run that wrote the report
TIMINGS_FILE = "timings.csv"
#: the distilled DotEncoders' layer counts when ``student_layers`` is not given and the DotEncoder trains alone; with
#: other architectures, the first (every architecture at one size, as in the Margin-MSE paper's table)
DEFAULT_STUDENT_LAYERS = (2, 4)
#: the report name of the teacher's fine-tuned member (one model)
TUNED_LABEL = "teacher's fine-tuned L{depth} (labels)"


def quickstart(data: str | os.PathLike = DEFAULT_DATA, output: str | os.PathLike = DEFAULT_OUTPUT, *,
               model: str | None = None, teacher: str | Sequence[str] | None = None,
               student_layers: Sequence[int] | None = None, fast: bool = False, recipe: Recipe | None = None,
               train_split: str = "train", test_split: str = "test", seed: int = 0,
               architectures: Sequence[str] | None = None, verbose: bool = True) -> pd.DataFrame:
    """Index, build a teacher, distil students and evaluate on one collection; return the report table.

    BM25 (PISA) gives ``recipe.k`` candidates per query. The zero-shot teacher fuses BM25 with zero-shot neural
    scorers (``teacher``: names or folders of sentence-transformers bi-encoders or Hugging Face cross-encoders;
    default ``model``, all-MiniLM-L6-v2): per-query z-scores, weights fitted on the fitting queries' labels
    (one-standard-error rule). With ``recipe.teacher_labels``, the whole ``model`` is also fine-tuned on the fitting
    queries (a query encoder against its frozen document vectors, mixing in BM25) and fused as a third member, its
    weights fitted on the validation queries it never trained on; the teacher is the label-aware fusion when it is
    clearly better over every judged train query, measured out of fold (``recipe.teacher_folds`` fold models, each
    trained without its fold; :func:`choose_teacher`). Students are k layers of ``model`` (each of
    ``student_layers``, default 2 and 4; spread over its depth, the last included: ``spread_layers``) as query
    encoders against its document vectors, mixing in the normalised BM25 score, trained on the fitting queries and
    teacher-labelled pseudo-queries: distillation (``recipe.loss_for(architecture)``) on all, plus
    ``recipe.label_weight`` times RankNet on the judged ones. A label-only student (the smallest size, RankNet on the
    fitting labels) is the baseline. Everything lands in ``output``; a later run reuses the index, the teacher, the
    teacher cache, every trained student and the model's document vectors (:data:`DOC_VECTORS_FILE`).

    ``architectures`` (names of :data:`ARCHITECTURES`; default the DotEncoder alone) adds the Margin-MSE paper's other
    students: each at the smallest of ``student_layers`` (TK: that many of its own layers over the model's token
    embeddings; not given, every architecture, the DotEncoder too, at 2 layers alone), distilled from the same
    teacher on the same data and trained on the labels alone alike (:data:`ARCHITECTURE_RECIPES`), each pair
    compared in the report; ColBERT, PreTT and TK re-rank from document stores built ahead of the queries, as the
    DotEncoder from its stored vectors.
    """
    started = time.time()
    clock = StageClock()
    recipe = recipe or Recipe.preset(fast)
    archs = architecture_names(architectures)
    named = archs != ARCHITECTURES[:1]  # rows name the architecture when there is more than the default
    layers = layer_counts(student_layers, archs)
    model = resolve(model or default_model())
    teachers = [resolve(t) for t in ([teacher] if isinstance(teacher, (str, os.PathLike)) else teacher or [model])]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    collection = Collection(data)
    log(verbose, f"quickstart: {collection!r} -> {output}; {recipe}")
    if recipe.trains_in_bf16():
        log(verbose, "every model trains under bfloat16 autocast (weights and optimizer in float32; --no-amp: float32)")
    if collection.derived_splits:
        log(verbose, f"{collection.name} ships no train/test split: holding out {collection.test_fraction:.0%} of "
                     "its queries for testing (the same split every run; Collection.test_fraction)")
    with download_hint(collection), clock("BM25 index and candidates"):
        bm25 = collection.bm25(output / f"{collection.name}.pisa", num_results=recipe.k)
        train_topics = sample_topics(collection.topics(train_split), recipe.train_queries, seed)
        train_qrels = collection.qrels(train_split)
        test_topics = sample_topics(collection.topics(test_split), recipe.test_queries, seed)
        test_qrels = collection.qrels(test_split)
    fit_topics, valid_topics = split_validation(train_topics, recipe.valid_fraction, seed)
    if len(fit_topics) == 0 or len(valid_topics) < 2:
        raise ValueError(f"{len(train_topics)} train queries cannot be split into fitting and at least 2 validation "
                         f"queries (valid_fraction={recipe.valid_fraction}); use more train queries")
    text = collection.get_text()
    candidates = bm25 % recipe.k >> text
    with clock("BM25 index and candidates"):
        fit_res, valid_res = candidates(fit_topics), candidates(valid_topics)
    fit_qrels = train_qrels[train_qrels["qid"].astype(str).isin(set(fit_topics["qid"].astype(str)))]
    identity = {"data": resolve(collection.data), "train_split": train_split, "seed": seed, "k": recipe.k,
                "max_length": recipe.max_length, "fit_qids": digest(sorted(fit_topics["qid"].astype(str)))}
    if recipe.query_length is not None:  # (recorded only when set: folders of full-length queries stay reusable)
        identity["query_max_length"] = recipe.query_length

    # --- the zero-shot teacher: BM25 fused with zero-shot scorers, weights fitted on the fitting queries ---------
    scorer_kwargs = {"max_length": recipe.max_length, "verbose": verbose}
    torch.manual_seed(seed)  # a checkpoint without a score head gets the same new head every run
    # a bi-encoder member keeps its document vectors (frozen_docs): each document is encoded once
    # (and reads queries to recipe.query_max_length tokens, as the students do)
    bi_encoder = {"frozen_docs": True, "query_max_length": recipe.query_length}
    members = [load_scorer(name, bi_encoder_kwargs=bi_encoder, **scorer_kwargs) for name in teachers]
    # the students' frozen document encoder is the model itself: one set of document vectors for all of them, and
    # the teacher's when it fuses that same bi-encoder; kept in the output folder, so that a later run there encodes
    # only the documents no run encoded before (saved at the end of every stage)
    sharing = next((m for m in members if isinstance(m, DotEncoder) and m.frozen_docs
                    and resolve(m.model_name) == model and m.max_length == recipe.max_length
                    and m.num_layers is None), None)
    shared_docs: dict = {}
    if sharing is not None:
        shared_docs = SavedDocVectors(output / DOC_VECTORS_FILE, describe(sharing))
        sharing.share_doc_vectors(shared_docs)
        clock.after_stage = shared_docs.save
        if shared_docs.note is not None:
            log(verbose, f"document vectors: {shared_docs.note}")
    fused = zero_shot = Ensemble([FirstStageScore(), *members], normalize="zscore")
    with clock("zero-shot teacher (fusion weights)"):
        fit_fusion(fused, output / "teacher", {**identity, "teachers": teachers}, fit_res, fit_qrels, verbose)
    member_names = " + ".join(short_name(t) for t in teachers)
    log(verbose, f"zero-shot teacher BM25 + {member_names}: weights {fused.weights} (BM25 first; "
                 f"{fused.fit_report.get('queries')} judged queries, nDCG@10 "
                 f"{fused.fit_report.get('ndcg@10', float('nan')):.4f} on them)")

    # k of the model's layers spread over its depth, the last one included: the query vectors then come from the
    # layer whose space the document vectors live in (the first k layers end elsewhere)
    depth = AutoConfig.from_pretrained(model).num_hidden_layers
    kept = {n: spread_layers(depth, n) for n in {*layers, depth}}

    def student(num_layers: int, start: str | Path = model) -> DotEncoder:
        # `start`: the model, or a saved fine-tuned member of it (its query encoder cut to the same layers)
        made = DotEncoder.from_pretrained(start, num_layers=kept[num_layers], frozen_docs=True, first_stage="zscore",
                                          query_max_length=recipe.query_length, **scorer_kwargs)
        return made.share_doc_vectors(shared_docs)

    trainer = Trainer(recipe, identity, seed=seed, verbose=verbose, valid=(valid_res, train_qrels),
                      scorer_kwargs=scorer_kwargs, shared_docs=shared_docs)

    # --- the label-aware teacher: the whole model fine-tuned on the labels, fused as a third member ----------------
    teacher_name = f"teacher BM25 + {member_names} (zero-shot)"
    students_start: str | Path = model
    if recipe.teacher_labels:
        with clock("label-aware teacher: fold models"):
            fold_models = _fold_models(trainer, output, depth, lambda: student(depth), kept[depth], fit_res, fit_qrels,
                                       recipe.teacher_folds, seed)

        def fine_tuned_member() -> DotEncoder:
            with clock("label-aware teacher: fine-tuned member"):
                return trainer(output / "teacher-tuned", TUNED_LABEL.format(depth=depth), lambda: student(depth), None,
                               losses.RankNet(), (fit_res, fit_qrels), layers=kept[depth], steps=recipe.teacher_steps)

        # with fold models, the choice is measured on every judged query (out of fold), not the validation ones alone,
        # and the member trained on all the fitting queries trains only when the label-aware fusion is chosen
        tuned = fine_tuned_member if fold_models is not None else fine_tuned_member()
        out_of_fold = ({"fit_res": fit_res, "fit_qrels": fit_qrels, "out_of_fold": fold_models}
                       if fold_models is not None else {})
        with clock("label-aware teacher: choice"):
            fused, choice = choose_once(
                output / "teacher" / TEACHER_FILE,
                {**identity, "teachers": teachers, "zero_shot_weights": zero_shot.weights,
                 "tuned": describe(tuned) if fold_models is None else f"trained when chosen: {recipe.teacher_steps} "
                                                                       "steps on the fitting queries",
                 "valid_qids": digest(sorted(valid_topics["qid"].astype(str))),
                 "folds": describe(fold_models) if fold_models is not None else None,
                 "chosen_on": ("fitting and validation queries, out of fold" if fold_models is not None
                               else "validation")},
                zero_shot, tuned,
                lambda: choose_teacher(zero_shot, tuned, valid_res, train_qrels, seed=seed, **out_of_fold), verbose)
        if choice["chosen"] == "label-aware":
            teacher_name = f"teacher BM25 + {member_names} + fine-tuned L{depth} (labels)"
            if recipe.students_from_tuned:
                students_start = trainer.folders[TUNED_LABEL.format(depth=depth)] / "student"
                log(verbose, f"distilled students start from the fine-tuned member's layers ({students_start})")
        log(verbose, f"teacher: {choice['chosen']} (nDCG@10 on {choice['validation_queries']} judged queries: "
                     f"zero-shot fusion {choice['zero_shot_validation_ndcg@10']:.4f}, label-aware fusion "
                     f"{choice['label_aware_validation_ndcg@10']:.4f}, {choice['label_aware']}; its gain "
                     f"{choice['gain']:+.4f} against a standard error of {choice['gain_standard_error']:.4f}; "
                     + (f"weights {choice['label_aware_weights']})" if choice["label_aware_weights"] is not None else
                        "the member for all the fitting queries not trained: the label-aware fusion was not chosen)"))

    # --- students --------------------------------------------------------------------------------------------
    has_titles = collection.has_titles()  # opens the documents to read the first one: once
    natural = natural_method(has_titles)
    # spans take the lengths of the judged queries as the students read them (longer would only cost words of
    # budget); titles and first sentences need no tokenising
    queries = fit_topics["query"]
    if recipe.pseudo_query_method in ("span", "auto"):
        queries = words_read(AutoTokenizer.from_pretrained(model), queries, recipe.query_length or recipe.max_length)
    method, shape = recipe.pseudo_query_plan(has_titles, queries)
    # students of other pseudo-queries than the collection's titles or first sentences train in folders of their own,
    # the pseudo-queries' making recorded in their settings
    pq_folder = "" if method == natural else f"-pq{method.replace('_', '')}"
    pq_made = None if method == natural else {"method": method, **shape}
    with clock("pseudo-queries and their candidates"):
        pq = pseudo_queries(collection, method, num=recipe.pseudo_queries, seed=seed, **shape)
        log(verbose, f"{len(pq)} pseudo-queries ({method}s of documents"
                     + (f" of {shape['span_words'][0]}-{shape['span_words'][1]} words, as long as the middle half of "
                        "the judged training queries" if "span_words" in shape else "") + ") for the teacher to label")
        train_res = pd.concat([fit_res, candidates(pq[["qid", "query"]])], ignore_index=True)
    distilled = {}
    teacher_id = describe(fused)
    loss_label, loss = recipe.student_objective()

    rows_of: dict[str, list[str]] = {a: [] for a in archs}  # each architecture's distilled students' rows

    def row(architecture: str, num_layers: int, what: str) -> str:
        return f"student {architecture + ' ' if named else ''}L{num_layers} ({what})"

    # one folder per student, loss and kind of teacher: runs of other recipes in the same output never collide
    loss_folder = (recipe.loss_folder("DotEncoder")
                   + ("-labelteacher" if fused is not zero_shot else "")
                   + ("-fromtuned" if students_start != model else "") + pq_folder)
    align_texts = None
    if recipe.align_steps:
        # a first stage of alignment: the texts queries look like, no candidates or teacher scores needed
        spans = pseudo_queries(collection, "span", num=recipe.align_steps * recipe.batch_size, seed=seed)
        align_texts = [*fit_topics["query"], *pq["query"], *spans["query"]]
        log(verbose, f"{len(align_texts)} texts to align the students' query vectors with the model's first "
                     f"({len(fit_topics)} training queries, {len(pq)} pseudo-queries, {len(spans)} document spans)")
    for num_layers in layers if "DotEncoder" in archs else []:
        # the first student to train also has the teacher score the training candidates (kept in the teacher cache)
        name = row("DotEncoder", num_layers, loss_label)
        rows_of["DotEncoder"].append(name)
        with clock(name):
            distilled[name] = trainer(
                output / f"student-L{num_layers}-{loss_folder}", name,
                lambda n=num_layers: student(n, students_start), fused, loss, (train_res, fit_qrels),
                layers=kept[num_layers], teacher_id=teacher_id, align_texts=align_texts, unjudged="teacher",
                cache_dir=output / "teacher_cache", pseudo=pq_made,
                start=None if students_start == model else str(students_start))
    baseline_layers = layers[0]
    twins: dict[str, tuple[str, pt.Transformer]] = {}  # per architecture: its label-only student's row and model
    if "DotEncoder" in archs:
        label_name = row("DotEncoder", baseline_layers, "labels only")
        with clock(label_name):
            twins["DotEncoder"] = label_name, trainer(
                output / f"student-L{baseline_layers}-labels", label_name, lambda: student(baseline_layers), None,
                losses.RankNet(), (fit_res, fit_qrels), layers=kept[baseline_layers])
    # the other architectures: the smallest size, distilled and on labels alone, with the same groups and steps
    for architecture in [a for a in archs if a != "DotEncoder"]:
        # each architecture's own distillation loss unless the recipe sets one for all
        joint_label, joint_loss = recipe.student_objective(alignment=False, architecture=architecture)
        joint_folder = (recipe.loss_folder(architecture, alignment=False)
                        + ("-labelteacher" if fused is not zero_shot else "") + pq_folder)
        own = ARCHITECTURE_RECIPES[architecture]
        tokens = min(own.max_length or recipe.max_length, recipe.max_length)
        made = functools.partial(architecture_student, architecture, model, baseline_layers, kept[baseline_layers],
                                 {**scorer_kwargs, "max_length": tokens})
        name = row(architecture, baseline_layers, joint_label)
        rows_of[architecture].append(name)
        with clock(name):
            distilled[name] = trainer(output / f"student-{architecture}-L{baseline_layers}-{joint_folder}", name, made,
                                      fused, joint_loss, (train_res, fit_qrels), layers=kept[baseline_layers],
                                      teacher_id=teacher_id, unjudged="teacher", cache_dir=output / "teacher_cache",
                                      architecture=own, pseudo=pq_made)
        twin = row(architecture, baseline_layers, "labels only")
        with clock(twin):
            twins[architecture] = twin, trainer(
                output / f"student-{architecture}-L{baseline_layers}-labels", twin, made, None, losses.RankNet(),
                (fit_res, fit_qrels), layers=kept[baseline_layers], architecture=own)

    # --- the report ------------------------------------------------------------------------------------------
    with clock("test candidates and their document vectors"):
        test_res = candidates(test_topics)
        started_docs = time.time()
        ahead = {name: ahead_of_queries(scorer, test_res, output / "stores" / slug(name))
                 for name, scorer in [*distilled.items(), *twins.values()]}
    log(verbose, f"document vectors of the test candidates computed ahead of queries ({len(shared_docs)} kept, "
                 f"{time.time() - started_docs:.0f} s), as an index would hold them")
    systems: dict[str, pt.Transformer] = {"BM25": bm25 % recipe.k, teacher_name: candidates >> fused}
    for architecture in archs:
        for name in [*rows_of[architecture], twins[architecture][0]]:
            systems[name] = candidates >> ahead[name]
    plot = importlib.util.find_spec("matplotlib") is not None
    log(verbose, f"evaluating {len(systems)} systems on {len(test_topics)} {test_split} queries, BM25 top {recipe.k}")
    with clock("evaluation"):
        runs: dict[str, pd.DataFrame] = {}
        table = report(systems, test_topics, test_qrels, output / "report", baseline=0, plot=plot, runs=runs)
        versus = []  # each architecture's distilled students against its own label-only twin (the same runs)
        for architecture in archs:
            twin = twins[architecture][0]
            mine = rows_of[architecture]
            versus.append(pt.Experiment([runs[twin], *(runs[n] for n in mine)], test_topics, test_qrels,
                                        [pt.measures.nDCG @ 10, pt.measures.RR @ 10], names=[twin, *mine],
                                        baseline=0, correction="holm"))
        versus = pd.concat(versus, ignore_index=True)
    versus.to_csv(output / "report" / VS_LABELS_FILE, index=False)
    with open(output / "report" / TABLE_FILE, "a") as f:
        against = "its label-only twin" if named else "the label-only student"
        f.write(f"\nAgainst {against} (paired t-test, Holm-corrected{' per architecture' if named else ''}):\n\n"
                f"{markdown_table(versus)}\n")
    if recipe.quantize:
        student_folders = {name: folder for name, folder in trainer.folders.items() if name.startswith("student")}
        with clock("students as deployed (int8)"):
            deployed_report(DEPLOYED_FILE, output, recipe.quantize, candidates, teacher_name, fused,
                            student_folders, test_topics, test_qrels, saved_kwargs(scorer_kwargs), shared_docs,
                            verbose,
                            deploy=lambda name, s: s.share_doc_vectors(shared_docs) if isinstance(s, DotEncoder)
                            else ahead_of_queries(s, test_res, output / "stores" / slug(f"{name} {recipe.quantize}")))
    timings = clock.table(time.time() - started)
    timings.to_csv(output / "report" / TIMINGS_FILE, index=False)
    if verbose:
        print((output / "report" / TABLE_FILE).read_text())
        files = (f"results.md, results.csv, {VS_LABELS_FILE}" + (f", {DEPLOYED_FILE}" if recipe.quantize else "")
                 + (", results.png" if plot else ""))
        hint = "" if plot else " (pip install pyterrier-marginkd[plot] for the plot)"
        print(f"report: {output / 'report'}: {files}{hint}")
        print("where the time went: " + "; ".join(f"{row.stage} {row.seconds:.0f} s ({row.share:.0%})"
                                                  for row in timings.itertuples() if row.stage != "total"))
        print(f"quickstart finished in {timings['seconds'].iloc[-1]:.0f} s (seconds per stage: "
              f"{output / 'report' / TIMINGS_FILE})")
    return table


def layer_counts(student_layers: Sequence[int] | None, architectures: Sequence[str]) -> list[int]:
    """The distilled DotEncoders' layer counts, ascending: ``student_layers``, or when not given
    :data:`DEFAULT_STUDENT_LAYERS` for the DotEncoder alone and its first with other architectures (the paper's
    table compares every architecture at one size)."""
    if student_layers is None:
        student_layers = DEFAULT_STUDENT_LAYERS[:1] if tuple(architectures) != ARCHITECTURES[:1] else \
            DEFAULT_STUDENT_LAYERS
    layers = sorted({int(k) for k in student_layers})
    if not layers or layers[0] < 1:
        raise ValueError(f"student_layers must be positive layer counts, got {list(student_layers)}")
    return layers


def _fold_models(trainer: Trainer, output: Path, depth: int, make: Callable[[], DotEncoder], layers: list[int],
                 fit_res: pd.DataFrame, fit_qrels: pd.DataFrame, folds: int, seed: int) -> CrossFitted | None:
    """The fold models the teacher's choice is measured on: with ``folds`` > 1, one per fold of the fitting queries,
    fine-tuned on their labels without it (RankNet, ``recipe.teacher_fold_steps``), as a :class:`CrossFitted` scorer;
    None with one fold, or fewer than two queries per fold."""
    qids = sorted(set(fit_res["qid"].astype(str)) & set(fit_qrels["qid"].astype(str)))
    if folds == 1 or len(qids) < 2 * folds:
        return None
    fold_of = assign_folds(qids, folds, seed)
    members = []
    for fold in range(folds):
        keep = [q for q in qids if fold_of[q] != fold]
        rows = fit_res[fit_res["qid"].astype(str).isin(keep)]
        members.append(trainer(output / f"teacher-tuned-fold{fold + 1}of{folds}",
                               f"teacher's fine-tuned L{depth} (labels), fold {fold + 1} of {folds}", make, None,
                               losses.RankNet(), (rows, fit_qrels[fit_qrels["qid"].astype(str).isin(keep)]),
                               layers=layers, steps=trainer.recipe.teacher_fold_steps))
    return CrossFitted(members, fold_of)


def words_read(tokenizer, queries: Sequence[str], max_tokens: int) -> list[str]:
    """Each query cut to the words whose tokens fit in ``max_tokens`` (special tokens included), as an encoder
    truncating at ``max_tokens`` reads it (a word cut inside counts)."""
    queries = [str(q) for q in queries]
    if not queries:
        return []
    offsets = tokenizer(queries, truncation=True, max_length=max_tokens, return_offsets_mapping=True)["offset_mapping"]
    return [q[:max((end for _, end in spans), default=0)] for q, spans in zip(queries, offsets)]


def slug(name: str) -> str:
    """A folder name for a report row: ``student ColBERT L2 (KL)`` -> ``student-ColBERT-L2-KL``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


def architecture_student(architecture: str, model: str, num_layers: int, kept: list[int],
                         scorer_kwargs: dict) -> NeuralScorer:
    """A fresh quickstart student of ``architecture`` started from ``model``: its ``kept`` layers (the DotEncoder's
    choice, ``spread_layers``), mixing in the normalised first-stage score as its ``ARCHITECTURE_RECIPES`` entry says
    (every architecture mixes it in); TK: that many layers of its own over the model's token embeddings."""
    first_stage = ARCHITECTURE_RECIPES[architecture].first_stage if architecture in ARCHITECTURE_RECIPES else None
    if architecture == "CrossEncoder":
        return CrossEncoder.from_pretrained(model, num_layers=kept, first_stage=first_stage, **scorer_kwargs)
    if architecture == "ColBERT":
        return ColBERT.from_pretrained(model, num_layers=kept, first_stage=first_stage, **scorer_kwargs)
    if architecture == "PreTT":
        return PreTT.from_pretrained(model, num_layers=kept, first_stage=first_stage, **scorer_kwargs)
    if architecture == "TK":
        return TK.from_pretrained(model, num_layers=num_layers, first_stage=first_stage, **scorer_kwargs)
    raise ValueError(f"no quickstart student of architecture {architecture!r}; choose from {list(ARCHITECTURES)}")


def ahead_of_queries(scorer: NeuralScorer, res: pd.DataFrame, store_path: Path) -> pt.Transformer:
    """``scorer`` with the documents of ``res`` represented before any query, as an index would hold them: a
    DotEncoder's vectors kept in memory, a ColBERT's or PreTT's document store at ``store_path`` (built again, so it
    always matches the weights); the other architectures read every document with its query."""
    if isinstance(scorer, DotEncoder):
        scorer.precompute_docs(res[scorer.text_field].drop_duplicates().tolist())
        return scorer
    if isinstance(scorer, StoredDocs):
        docs = res[["docno", scorer.text_field]].drop_duplicates("docno").to_dict("records")
        return scorer.with_store(scorer.build_store(docs, store_path, overwrite=True))
    return scorer
