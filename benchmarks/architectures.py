"""The students of the Margin-MSE paper on a collection's train/test split: each one trained with Margin-MSE from the
same teacher and on labels alone, re-ranking BM25 top-k of the test queries (run by hand; not part of CI).

Teacher: a saved cross-encoder (``--teacher``, e.g. the one examples/distill_cranfield.py trains into
runs/cranfield-kd/teacher/student), else the same recipe trained here: MiniLM-L6 cross-encoder on the train labels
(RankNet). Students start from the same checkpoint: DotEncoder (mean pooling), ColBERT (dim 128) and PreTT on its
first ``--student-layers`` layers, TK on its input embeddings. Writes ``<output>/architectures.md`` (and .csv):
nDCG@10, RR@10, parameters, re-ranking pairs/s and mrt per student and training.

    python benchmarks/architectures.py --data ../shared/data/cranfield --output runs/architectures
    python benchmarks/architectures.py --num-queries 4 --epochs 1 --max-length 64 --output runs/arch-tiny  # smoke
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import pyterrier as pt
import torch
from ir_measures import RR, nDCG

import pyterrier_marginkd as mkd
from pyterrier_marginkd.models.io import default_model, load_reranker

ARCHITECTURES = ("dot", "colbert", "pretts", "tk")


def make_student(architecture: str, model: str, layers: int, max_length: int):
    """A fresh student of ``architecture`` started from ``model`` (seeded, so both trainings start alike)."""
    torch.manual_seed(0)
    if architecture == "dot":
        return mkd.DotEncoder(model, pooling="mean", num_layers=layers, max_length=max_length)
    if architecture == "colbert":
        return mkd.ColBERT(model, num_layers=layers, max_length=max_length)
    if architecture == "pretts":
        return mkd.PreTT(model, num_layers=layers, max_length=max_length)
    return mkd.TK(model, max_length=max_length)


def train(folder: Path, student, teacher, loss, fit_args, **settings):
    """Fit once; a later run with the same settings reuses the saved student (and an interrupted fit resumes from
    its checkpoint)."""
    def fit(output_dir: Path) -> mkd.Distiller:
        distiller = mkd.Distiller(student, teacher, loss=loss, output_dir=output_dir, verbose=True, **settings)
        return distiller.fit(*fit_args)

    # the teacher is named by teacher_id where it matters (its repr names the folder it was first built from)
    recorded = {"student": repr(student), "loss": repr(loss), **settings}
    return mkd.fit_once(folder, recorded, fit, verbose=True)


def pairs_per_second(model, pairs: pd.DataFrame) -> float:
    """Re-ranking throughput of ``model`` on ``pairs`` (query, text), after one warm-up batch."""
    queries, texts = pairs["query"].tolist(), pairs[model.text_field].tolist()
    model.score_pairs(queries[:model.batch_size], texts[:model.batch_size])
    started = time.perf_counter()
    model.score_pairs(queries, texts)
    return len(pairs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--model", default=default_model(), help="checkpoint the teacher and the students start from")
    parser.add_argument("--teacher", default=None, help="saved teacher folder (default: train one into <output>)")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES), help="comma-separated subset")
    parser.add_argument("--output", default="runs/architectures")
    parser.add_argument("--k-train", type=int, default=30, help="BM25 candidates per training query")
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates re-ranked at test time")
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-time", type=float, default=None, help="seconds of training per student at most")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of the BERT-based students")
    parser.add_argument("--tk-lr", type=float, default=1e-3, help="learning rate of TK")
    parser.add_argument("--num-queries", type=int, default=None, help="train/test on the first N queries only")
    args = parser.parse_args()
    architectures = [a.strip() for a in args.architectures.split(",")]
    unknown = sorted(set(architectures) - set(ARCHITECTURES))
    if unknown:
        raise SystemExit(f"unknown architecture(s) {unknown}; choose from {list(ARCHITECTURES)}")

    data = mkd.Collection(args.data)
    output = Path(args.output)
    bm25 = data.bm25(output / f"{data.name}.pisa", num_results=max(args.k, args.k_train))
    train_topics, test_topics = data.topics("train"), data.topics("test")
    if args.num_queries:
        train_topics, test_topics = train_topics.head(args.num_queries), test_topics.head(args.num_queries)
    fit_args = ((bm25 % args.k_train >> data.get_text())(train_topics), data.qrels("train"))
    common = dict(epochs=args.epochs, batch_size=8, num_negatives=args.num_negatives, seed=0, max_time=args.max_time)

    if args.teacher:
        teacher_path = Path(args.teacher)
        teacher = load_reranker(str(teacher_path), max_length=args.max_length)
    else:
        teacher_path = output / "teacher" / "student"
        torch.manual_seed(0)
        teacher, _ = train(output / "teacher", mkd.CrossEncoder.from_pretrained(args.model, max_length=args.max_length),
                           None, mkd.losses.RankNet(), fit_args, **{**common, "epochs": args.teacher_epochs,
                                                                     "lr": 4e-5})
    teacher_cache = dict(cache_dir=output / "teacher_cache", teacher_id=f"teacher:{teacher_path.resolve()}")

    rerankers = {"teacher": teacher}
    rows = []
    for architecture in architectures:
        lr = args.tk_lr if architecture == "tk" else args.lr
        for training, loss, with_teacher in (("labels", mkd.losses.RankNet(), None),
                                             ("Margin-MSE", mkd.losses.MarginMSE(), teacher)):
            folder = output / f"{architecture}-{'marginmse' if with_teacher is not None else 'labels'}"
            student = make_student(architecture, args.model, args.student_layers, args.max_length)
            extra = teacher_cache if with_teacher is not None else {}
            student, report = train(folder, student, with_teacher, loss, fit_args, **common, lr=lr, **extra)
            name = f"{architecture} ({training})"
            rerankers[name] = student
            rows.append({"name": name, "architecture": type(student).__name__, "training": training,
                         "parameters (M)": round(student.num_parameters() / 1e6, 1),
                         "train s": round(report["train_seconds"], 1)})

    test_pairs = (bm25 % args.k >> data.get_text())(test_topics)
    sample = test_pairs.sample(n=min(len(test_pairs), 500), random_state=0)
    speed = {name: pairs_per_second(model, sample) for name, model in rerankers.items()}
    systems = [bm25 % args.k] + [bm25 % args.k >> data.get_text() >> model for model in rerankers.values()]
    table = pt.Experiment(systems, test_topics, data.qrels("test"), [nDCG @ 10, RR @ 10, "mrt"],
                          names=["BM25", *rerankers], round=4)
    table = table.merge(pd.DataFrame(rows), on="name", how="left")
    table["pairs/s"] = table["name"].map(speed).round(1)
    table.loc[table["name"] == "teacher", "parameters (M)"] = round(teacher.num_parameters() / 1e6, 1)
    cols = ["name", "nDCG@10", "RR@10", "parameters (M)", "pairs/s", "mrt", "train s"]
    markdown = table[cols].to_markdown(index=False)
    print(markdown)
    (output / "architectures.md").write_text(
        f"{data.name}: {len(train_topics)} train / {len(test_topics)} test queries, BM25 top-{args.k}, "
        f"students on {args.student_layers} layers of {Path(args.model).name}, {args.epochs} epoch(s) "
        f"(at most {args.max_time} s each), "
        f"max_length {args.max_length}, {torch.get_num_threads()} thread(s)\n\n{markdown}\n")
    table.to_csv(output / "architectures.csv", index=False)


if __name__ == "__main__":
    main()
