"""The commands of ``marginkd``: each imports the library (PyTerrier, torch) when it runs, not before."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pyterrier_marginkd.models.io import load_reranker

if TYPE_CHECKING:  # for annotations only: importing these takes seconds
    import pyterrier as pt

    from pyterrier_marginkd.data.collection import Collection
    from pyterrier_marginkd.training.distiller import Distiller


def unique_names(models: list[str], reserved: tuple[str, ...] = ("BM25",)) -> list[str]:
    """A distinct name for each model: the shortest trailing part of its path that no other model (nor a ``reserved``
    name) shares, e.g. ``kd/student`` and ``labels/student`` for ``runs/kd/student`` and ``runs/labels/student``.

    A model given twice (the same path) is refused with a SystemExit."""
    parts = [Path(m).parts or (m,) for m in models]
    seen: dict[tuple[str, ...], str] = {}
    for model, key in zip(models, parts):
        if key in seen:
            raise SystemExit(f"model {model!r} is given twice (as {seen[key]!r} and {model!r})")
        seen[key] = model
    others = parts + [(name,) for name in reserved]
    names = []
    for i, key in enumerate(parts):
        for size in range(1, len(key) + 1):
            suffix = key[-size:]
            if all(other[-size:] != suffix for j, other in enumerate(others) if j != i):
                break
        names.append(str(Path(*suffix)))
    return names


def _bm25(collection: Collection, args: argparse.Namespace, folder: Path) -> pt.Transformer:
    """BM25 over the collection; under torchrun/accelerate rank 0 builds the index before the others open it."""
    from pyterrier_marginkd.training import distributed

    with distributed.current().main_first():
        return collection.bm25(args.index or folder / f"{collection.name}.pisa", num_results=args.k)


def cmd_train(args: argparse.Namespace) -> None:
    from pyterrier_marginkd.data.collection import Collection
    from pyterrier_marginkd.training import distributed

    output = Path(args.output)
    if args.scores or args.docpairs:
        return _train_from_stream(args, output)
    collection = Collection(args.data)
    bm25 = _bm25(collection, args, output.parent)
    topics, qrels = collection.topics(args.split), collection.qrels(args.split)
    if args.num_queries:
        topics = topics.head(args.num_queries)
    valid = None
    if args.valid_split:
        valid = collection.topics(args.valid_split), collection.qrels(args.valid_split)
    distiller = _distiller(args, output)
    pipe = bm25 >> collection.get_text() >> distiller
    pipe.fit(topics, qrels, *(valid or (None, None)))
    if distributed.current().is_main:
        print(f"trained student saved to {output / 'student'}")


def _distiller(args: argparse.Namespace, output: Path) -> Distiller:
    import torch

    from pyterrier_marginkd import losses
    from pyterrier_marginkd.training.distiller import Distiller

    # a checkpoint without a score head (a plain encoder) gets a new random head: the same one in every run of a seed,
    # so that a fit killed and run again ends as an uninterrupted one (which started from the same weights)
    torch.manual_seed(args.seed)
    student = load_reranker(args.student, num_layers=args.num_layers, max_length=args.max_length,
                         batch_size=args.batch_size * 4)
    teacher = None if args.teacher in (None, "none") else load_reranker(args.teacher, max_length=args.max_length)
    if args.low_memory:
        from pyterrier_marginkd.training.checkpoints import unmap_large_blocks

        unmap_large_blocks()  # this process is ours: freed activations go back to the system at once
    return Distiller(student, teacher, loss=losses.by_name(args.loss), epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, num_negatives=args.num_negatives,
                     max_steps=args.max_steps, max_time=args.max_time, save_steps=args.save_steps, seed=args.seed,
                     gradient_checkpointing=args.low_memory, output_dir=output, verbose=True)


def _train_from_stream(args: argparse.Namespace, output: Path) -> None:
    """Train from a teacher-score file (--scores) or ir_datasets docpairs (--docpairs)."""
    from pyterrier_marginkd.data.collection import Collection
    from pyterrier_marginkd.training import distributed

    collection = Collection(args.data) if args.valid_split or (args.scores and args.format == "ids") else None
    valid = (None, None)
    if args.valid_split:
        first_stage = _bm25(collection, args, output.parent) >> collection.get_text()
        valid = first_stage(collection.topics(args.valid_split)), collection.qrels(args.valid_split)
    if args.scores:
        queries, docs = _score_file_texts(args, collection) if args.format == "ids" else (None, None)
        distiller = _distiller(args, output)
        distiller.fit_file(args.scores, queries, docs, *valid)
    else:
        distiller = _distiller(args, output)
        distiller.fit_pairs(args.docpairs, *valid, max_pairs=args.max_pairs)
    if distributed.current().is_main:
        print(f"trained student saved to {output / 'student'}")


# score-teacher records beside an ids-version file where its ids come from, so that `train --scores` gives the
# student the very query and document texts the teacher scored: a docpairs dataset's own query texts, or the
# (punctuation-stripped) topics of a collection's split. A file without a record (e.g. a published one) resolves
# through the raw query texts of --data --split.
SOURCE_SUFFIX = ".source.json"


def _source_file(scores: str | Path) -> Path:
    return Path(f"{scores}{SOURCE_SUFFIX}")


def _irds_id(dataset: str) -> str:
    return dataset[len("irds:"):] if dataset.startswith("irds:") else dataset


def _score_source(args: argparse.Namespace) -> dict[str, str]:
    """Where score-teacher takes its queries and documents from, as recorded beside the score file."""
    if args.docpairs:
        return {"docpairs": _irds_id(args.docpairs)}
    data = args.data if args.data.startswith("irds:") else str(Path(args.data).resolve())
    return {"data": data, "split": args.split}


def _describe(source: dict[str, str]) -> str:
    if "docpairs" in source:
        return f"the docpairs of {source['docpairs']} (--docpairs {source['docpairs']})"
    return f"BM25 candidates of split {source['split']!r} of {source['data']} (--data {source['data']} " \
           f"--split {source['split']})"


def _score_file_texts(args: argparse.Namespace, collection: Collection | None) -> tuple[object, object]:
    """Queries and documents that resolve the ids of the --scores file: those score-teacher scored."""
    file = _source_file(args.scores)
    recorded = json.loads(file.read_text()) if file.exists() else None
    if args.docpairs:
        given = {"docpairs": _irds_id(args.docpairs)}
        if recorded is not None and recorded != given:
            raise SystemExit(f"{args.scores} was scored on {_describe(recorded)} ({file}), not on {_describe(given)}")
        return args.docpairs, args.docpairs
    if recorded is not None and "docpairs" in recorded:
        print(f"{args.scores}: ids resolve through {_describe(recorded)}, as score-teacher wrote them ({file})")
        return recorded["docpairs"], recorded["docpairs"]
    if recorded is None:  # e.g. a published file: its teacher scored the queries as the dataset gives them
        print(f"{args.scores}: no {file.name} says how it was scored; its ids resolve through the raw query texts "
              f"of split {args.split!r} of {args.data} and its documents")
        return collection.topics(args.split, clean=False), collection
    given = _score_source(args)
    if recorded != given:
        raise SystemExit(f"{args.scores} was scored on {_describe(recorded)} ({file}), but this run resolves its "
                         f"ids through {_describe(given)}: give the same --data and --split")
    return collection.topics(args.split), collection  # score-teacher's BM25 and teacher saw the cleaned topics


def cmd_score_teacher(args: argparse.Namespace) -> None:
    import torch

    from pyterrier_marginkd.data.collection import Collection
    from pyterrier_marginkd.data.docpairs import DocPairs
    from pyterrier_marginkd.data.groups import TrainingExamples
    from pyterrier_marginkd.data.scorefiles import score_teacher
    from pyterrier_marginkd.models.ensemble import Ensemble

    # a teacher checkpoint without a score head gets a new random one: the same in every run of a seed, so that a
    # score file resumed by a second run is scored by the model that began it
    torch.manual_seed(args.seed)
    teachers = [load_reranker(t, max_length=args.max_length, batch_size=args.batch_size) for t in args.teacher]
    teacher = teachers[0] if len(teachers) == 1 and not args.weights else Ensemble(teachers, args.weights)
    if args.docpairs:
        source = DocPairs(args.docpairs, max_pairs=args.max_pairs)
    else:
        collection = Collection(args.data)
        topics = collection.topics(args.split)
        if args.num_queries:
            topics = topics.head(args.num_queries)
        results = (_bm25(collection, args, Path(args.output).parent) >> collection.get_text())(topics)
        qrels = collection.qrels(args.split)
        qrels = qrels[qrels["qid"].astype(str).isin(set(topics["qid"].astype(str)))]  # the chosen queries' only
        source = TrainingExamples(results, qrels, num_negatives=args.num_negatives, seed=args.seed)
    source_file, source_record = _source_file(args.output), _score_source(args)
    if args.format == "ids" and source_file.exists():
        recorded = json.loads(source_file.read_text())
        if recorded != source_record:
            raise SystemExit(f"{args.output} was scored on {_describe(recorded)} ({source_file}); this run scores "
                             f"{_describe(source_record)}: use another --output (or delete both files)")
    elif args.format == "ids" and not Path(args.output).exists():
        source_file.parent.mkdir(parents=True, exist_ok=True)
        source_file.write_text(json.dumps(source_record))
    report = score_teacher(args.output, teacher, source, fmt=args.format, verbose=True)
    if args.format == "ids" and not source_file.exists():  # a file written before these records: now checked
        source_file.write_text(json.dumps(source_record))
    print(f"{args.output}: {report['lines_existing']} lines were there, {report['lines_written']} written "
          f"({report['pairs_scored']} pairs scored by {teacher!r})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import pyterrier as pt
    from ir_measures import AP, RR, nDCG

    from pyterrier_marginkd.data.collection import Collection
    from pyterrier_marginkd.report import TABLE_FILE, report

    collection = Collection(args.data)
    bm25 = collection.bm25(args.index or Path(args.output) / f"{collection.name}.pisa", num_results=args.k)
    topics, qrels = collection.topics(args.split), collection.qrels(args.split)
    if args.num_queries:
        topics = topics.head(args.num_queries)
    names = args.names or unique_names(args.models)
    if len(names) != len(args.models):
        raise SystemExit(f"--names gives {len(names)} names for {len(args.models)} models")
    taken = ["BM25"]
    for name in names:
        if name in taken:
            raise SystemExit(f"--names: {name!r} is used twice (BM25 is the baseline's name); give unique names")
        taken.append(name)
    systems = [bm25] + [bm25 >> collection.get_text() >> load_reranker(m, verbose=True) for m in args.models]
    if args.report:
        report(systems, topics, qrels, args.report, names=["BM25"] + names, baseline=0)
        print((Path(args.report) / TABLE_FILE).read_text())
        print(f"report written to {args.report}")
        return
    table = pt.Experiment(systems, topics, qrels, [nDCG @ 10, RR @ 10, AP @ 100, "mrt"], names=["BM25"] + names,
                          baseline=0, correction="holm")
    print(table.to_string(index=False))
    csv = args.csv or args.out
    if args.out:
        print("marginkd evaluate: --out is deprecated, use --csv", file=sys.stderr)
    if csv:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(csv, index=False)


def cmd_quickstart(args: argparse.Namespace) -> None:
    from pyterrier_marginkd.quickstart import Recipe, quickstart

    overrides = {name: getattr(args, name) for name in ("train_queries", "test_queries", "k", "max_length",
                                                         "pseudo_queries", "student_steps", "student_time",
                                                         "student_loss", "label_weight", "teacher_folds",
                                                         "teacher_steps", "teacher_fold_steps", "align_weight",
                                                         "align_steps", "amp", "kl_temperature", "pseudo_query_method")}
    if args.zero_shot_teacher:
        overrides["teacher_labels"] = False
    if args.students_start is not None:
        overrides["students_from_tuned"] = args.students_start == "tuned"
    if args.query_words_per_step is not None:
        overrides["query_words_per_step"] = args.query_words_per_step or None  # 0: always the full batch
    if args.query_max_length is not None:
        overrides["query_max_length"] = args.query_max_length or None  # 0: as documents (max_length)
    if args.quantize is not None:
        overrides["quantize"] = None if args.quantize == "none" else args.quantize
    always = ("quantize", "query_words_per_step", "query_max_length")  # None there is a setting, not "unset"
    recipe = Recipe.preset(args.fast, **{k: v for k, v in overrides.items() if v is not None or k in always})
    quickstart(args.data, args.output, model=args.model, teacher=args.teacher, student_layers=args.student_layers,
               recipe=recipe, train_split=args.train_split, test_split=args.test_split, seed=args.seed,
               architectures=args.architectures, verbose=True)
