"""Distil a fine-tuned MiniLM-L6 cross-encoder teacher into a 2-layer student on a collection's train split.

Teacher: the MiniLM-L6 cross-encoder fine-tuned on the train split's labels by this same Distiller (teacher=None,
RankNet). all-MiniLM-L6-v2 is a bi-encoder checkpoint and ~120 judged queries are too few to teach it cross-encoding,
so the teacher is first adapted to the collection on pseudo-queries (``--pretrain title``: each document's title
must rank its own document above BM25's other candidates; ``first_sentence`` where documents have no titles; hard
labels from ``mkd.pseudo_qrels``, no teacher, no real labels), then fine-tuned on the labels. Students: the teacher's
first 2 layers (and head) trained (a) on labels alone (RankNet) and (b) with Margin-MSE from the teacher, on the same
training groups. All re-rank BM25 top-k on the test split in one pt.Experiment (significance against BM25).

    python examples/distill_cranfield.py --data ../shared/data/cranfield --output runs/cranfield-kd
    python examples/distill_cranfield.py --data ../shared/data/vaswani --output runs/vaswani-kd   # no titles, no splits
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pyterrier as pt
import torch
from ir_measures import AP, RR, nDCG

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.io import default_model


def train(name: str, output: Path, student, teacher, loss, fit_args, **settings) -> mkd.CrossEncoder:
    """Fit a Distiller once; later runs with the same settings load the saved student (and an interrupted fit
    resumes from its checkpoint)."""
    def fit(folder: Path) -> mkd.Distiller:
        distiller = mkd.Distiller(student, teacher, loss=loss, output_dir=folder, verbose=True, **settings)
        return distiller.fit(*fit_args)

    # the teacher is named by teacher_id where it matters (its repr names the folder it was first built from)
    recorded = {"student": repr(student), "loss": repr(loss), **settings}
    model, record = mkd.fit_once(output / name, recorded, fit, verbose=True)
    print(f"{name}: {record['report']}")
    model.verbose = True
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--model", default=default_model(), help="teacher/student checkpoint")
    parser.add_argument("--output", default="runs/cranfield-kd")
    parser.add_argument("--k-train", type=int, default=30, help="BM25 candidates per training query")
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates re-ranked at test time")
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--pretrain", default="auto", choices=["auto", "title", "first_sentence", "span", "none"],
                        help="pseudo-queries the teacher is adapted on before the labels (auto: titles where the "
                        "documents have them, else first sentences; none: labels only)")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--pretrain-queries", type=int, default=None, help="a seeded sample of N pseudo-queries "
                        "(default: one per document)")
    parser.add_argument("--pretrain-max-time", type=float, default=900, help="seconds of pre-training at most")
    parser.add_argument("--student-init", default="teacher", choices=["teacher", "model"],
                        help="students start from the teacher's first layers, or from --model's")
    parser.add_argument("--max-length", type=int, default=160, help="tokens of query + document (training and "
                        "re-ranking); Cranfield abstracts have a median of 175")
    parser.add_argument("--epochs", type=int, default=4, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--num-negatives", type=int, default=3, help="BM25 negatives per positive")
    parser.add_argument("--pretrain-lr", type=float, default=1e-4, help="teacher pre-training learning rate")
    parser.add_argument("--lr", type=float, default=5e-5, help="teacher learning rate (labels)")
    parser.add_argument("--student-lr", type=float, default=2e-4)
    parser.add_argument("--valid-queries", type=int, default=20,
                        help="last N train queries held out for validation (best checkpoint kept); 0: none")
    parser.add_argument("--max-time", type=float, default=None, help="seconds of training per model at most")
    parser.add_argument("--num-queries", type=int, default=None, help="train/test on the first N queries only")
    args = parser.parse_args()

    data = mkd.Collection(args.data)
    output = Path(args.output)
    bm25 = data.bm25(output / f"{data.name}.pisa", num_results=max(args.k, args.k_train))
    train_topics, test_topics = data.topics("train"), data.topics("test")
    if args.num_queries:
        train_topics, test_topics = train_topics.head(args.num_queries), test_topics.head(args.num_queries)
    valid_topics = train_topics.tail(args.valid_queries) if args.valid_queries else train_topics.head(0)
    train_topics = train_topics.head(len(train_topics) - len(valid_topics))
    train_res = (bm25 % args.k_train >> data.get_text())(train_topics)
    qrels = data.qrels("train")
    fit_args = (train_res, qrels[qrels.qid.isin(train_topics.qid)])
    if len(valid_topics):
        fit_args += ((bm25 % args.k_train >> data.get_text())(valid_topics), qrels[qrels.qid.isin(valid_topics.qid)])
    common = dict(epochs=args.epochs, batch_size=8, num_negatives=args.num_negatives, seed=0, save_steps=20,
                  max_time=args.max_time, eval_steps=50 if len(valid_topics) else None)

    text = data.get_text()
    start, adapted = args.model, None
    if args.pretrain == "auto":
        args.pretrain = "title" if next(data.docs_iter()).get("title") else "first_sentence"
    if args.pretrain != "none":
        pq = mkd.pseudo_queries(data, args.pretrain, num=args.pretrain_queries, seed=0)
        pq_args = ((bm25 % args.k_train >> text)(pq[["qid", "query"]]), mkd.pseudo_qrels(pq)) + fit_args[2:]
        torch.manual_seed(0)
        adapted = train("teacher-pretrain", output, mkd.CrossEncoder.from_pretrained(args.model,
                                                                                     max_length=args.max_length),
                        None, mkd.losses.RankNet(), pq_args, epochs=args.pretrain_epochs, batch_size=8,
                        lr=args.pretrain_lr, num_negatives=args.num_negatives, seed=0, save_steps=25,
                        eval_steps=25 if len(valid_topics) else None, max_time=args.pretrain_max_time)
        start = output / "teacher-pretrain" / "student"
    torch.manual_seed(0)
    teacher = train("teacher", output, mkd.CrossEncoder.from_pretrained(start, max_length=args.max_length),
                    None, mkd.losses.RankNet(), fit_args, **{**common, "epochs": args.teacher_epochs, "lr": args.lr})
    init = output / "teacher" / "student" if args.student_init == "teacher" else args.model
    # cached teacher scores belong to this very teacher: a teacher trained again in the same folder gets a new id
    teacher_id = f"teacher:{(output / 'teacher').resolve()}@{(output / 'teacher' / 'done.json').stat().st_mtime_ns}"

    def student() -> mkd.CrossEncoder:
        torch.manual_seed(0)
        return mkd.CrossEncoder.from_pretrained(init, num_layers=args.student_layers, max_length=args.max_length)

    label_only = train("student-labels", output, student(), None, mkd.losses.RankNet(), fit_args, **common,
                       lr=args.student_lr)
    distilled = train("student-marginmse", output, student(), teacher, mkd.losses.MarginMSE(), fit_args, **common,
                      lr=args.student_lr, teacher_id=teacher_id)

    systems = [bm25 % args.k, bm25 % args.k >> text >> teacher, bm25 % args.k >> text >> label_only,
               bm25 % args.k >> text >> distilled]
    adapted_name = "" if adapted is None else f"{args.pretrain} pseudo-queries + "
    names = ["BM25", f"teacher: MiniLM-L6 CE ({adapted_name}labels)", f"student L{args.student_layers}: labels only",
             f"student L{args.student_layers}: Margin-MSE"]
    if adapted is not None:  # the teacher before its labels: what the pseudo-queries alone give
        systems.insert(1, bm25 % args.k >> text >> adapted)
        names.insert(1, f"MiniLM-L6 CE ({args.pretrain} pseudo-queries only)")
    table = pt.Experiment(systems, test_topics, data.qrels("test"), [nDCG @ 10, RR @ 10, AP @ 100, "mrt"],
                          names=names, baseline=0, round=4)
    cols = ["name", "nDCG@10", "RR@10", "AP@100", "mrt", "nDCG@10 p-value"]
    print(table[cols].to_markdown(index=False))
    (output / "results.md").write_text(table[cols].to_markdown(index=False) + "\n")
    table.to_csv(output / "results.csv", index=False)
    # does distillation beat the same student trained on labels? (paired t-test on the same queries)
    versus = pt.Experiment(systems[-2:], test_topics, data.qrels("test"), [nDCG @ 10, RR @ 10, AP @ 100],
                           names=names[-2:], baseline=0, round=4)
    cols = ["name", "nDCG@10", "nDCG@10 p-value", "RR@10", "RR@10 p-value", "AP@100", "AP@100 p-value"]
    print(versus[cols].to_markdown(index=False))
    (output / "results-students.md").write_text(versus[cols].to_markdown(index=False) + "\n")


if __name__ == "__main__":
    main()
