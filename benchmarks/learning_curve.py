"""Learning curves of label-scarce distillation: nDCG@10 on held-back queries against training time.

For each collection, a 2-layer student is trained from the same teacher under four conditions, each time-boxed
(`--budget` seconds) and evaluated on held-back queries every `--eval-steps` steps:

  zero-shot   the student before training
  qrels KD    Margin-MSE on the training queries' qrels triples
  pseudo KD   label-free Margin-MSE on pseudo-queries made from the documents (the teacher ranks the candidates)
  both        training queries (qrels) and pseudo-queries (teacher) in one fit

    python benchmarks/learning_curve.py --data ../shared/data/cranfield --teacher runs/cranfield-kd/teacher/student
    python benchmarks/learning_curve.py --data ../shared/data/vaswani --budget 1200 --out runs/curve-vaswani

Without --teacher the teacher is the zero-shot all-MiniLM-L6-v2 bi-encoder (a DotEncoder, mean pooling, cosine as
the model was trained) — never given labels.
Writes curve.csv, results.md and curve.png (nDCG@10 vs training seconds) to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data.evaluation import evaluate_ndcg10
from pyterrier_marginkd.models.io import default_model, load_reranker


def split_topics(data: mkd.Collection, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train topics, held-back topics, qrels): the collection's own split, else a seeded half/half split."""
    if {"train", "test"} <= set(data.splits()):
        return data.topics("train"), data.topics("test"), data.qrels()
    topics = data.topics().sample(frac=1.0, random_state=seed).reset_index(drop=True)
    half = len(topics) // 2
    return topics.iloc[:half], topics.iloc[half:], data.qrels()


def make_teacher(path: str | None, max_length: int):
    """The given teacher, else the zero-shot MiniLM bi-encoder (DotEncoder, mean pooling)."""
    if path:
        return load_reranker(path, max_length=max_length)
    if not hasattr(mkd, "DotEncoder"):
        raise SystemExit("no --teacher given and DotEncoder is not available in this version")
    return mkd.DotEncoder.from_pretrained(default_model(), pooling="mean", normalize=True, max_length=max_length)


def make_student(args):
    torch.manual_seed(args.seed)
    if args.student == "dot":
        return mkd.DotEncoder.from_pretrained(args.model, num_layers=args.student_layers, pooling="mean",
                                              max_length=args.max_length)
    return mkd.CrossEncoder.from_pretrained(args.model, num_layers=args.student_layers, max_length=args.max_length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--model", default=default_model(), help="student initialisation")
    parser.add_argument("--student", choices=["cross", "dot"], default="cross")
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--k", type=int, default=20, help="BM25 candidates per query (training and evaluation)")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--pseudo", default="title", help="pseudo-query method (title, first_sentence, span)")
    parser.add_argument("--num-pseudo", type=int, default=1000)
    parser.add_argument("--budget", type=float, default=600, help="seconds of training per condition")
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--conditions", nargs="+", default=["qrels", "pseudo", "both"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    data = mkd.Collection(args.data)
    out = Path(args.out or f"runs/curve-{data.name}-{args.student}")
    out.mkdir(parents=True, exist_ok=True)
    bm25 = data.bm25(out.parent / f"{data.name}.pisa", num_results=args.k)
    text = data.get_text()
    train_topics, test_topics, qrels = split_topics(data, args.seed)
    test_res = (bm25 >> text)(test_topics)
    teacher = make_teacher(args.teacher, args.max_length)
    rows = [{"condition": "BM25", "train_seconds": 0.0, "ndcg@10": evaluate_ndcg10(test_res, qrels)}]
    started = time.time()
    rows.append({"condition": "teacher", "train_seconds": 0.0, "ndcg@10": evaluate_ndcg10(teacher(test_res), qrels),
                 "scoring_seconds": time.time() - started})
    rows.append({"condition": "zero-shot", "train_seconds": 0.0,
                 "ndcg@10": evaluate_ndcg10(make_student(args)(test_res), qrels)})

    pseudo = mkd.pseudo_queries(data, args.pseudo, num=args.num_pseudo, seed=args.seed)[["qid", "query"]]
    train_res = {"qrels": (bm25 >> text)(train_topics)}
    train_res["pseudo"] = (bm25 >> text)(pseudo)
    train_res["both"] = pd.concat([train_res["qrels"], train_res["pseudo"]], ignore_index=True)
    for condition in args.conditions:
        distiller = mkd.Distiller(make_student(args), teacher, loss=mkd.losses.MarginMSE(), epochs=1000,
                                  batch_size=args.batch_size, lr=args.lr, max_time=args.budget,
                                  eval_steps=args.eval_steps, select_best=False, seed=args.seed,
                                  unjudged="teacher" if condition == "both" else "skip",
                                  output_dir=out / condition, cache_dir=out / "teacher_cache",
                                  teacher_id=f"{teacher!r}", resume=False, verbose=True)
        fit_qrels = None if condition == "pseudo" else qrels
        distiller.fit(train_res[condition], fit_qrels, test_res, qrels)
        for record in distiller.validation:
            rows.append({"condition": condition, "train_seconds": record["train_seconds"],
                         "ndcg@10": record["ndcg@10"], "step": record["step"]})
        (out / f"{condition}.json").write_text(json.dumps(distiller.report, indent=2, default=str))

    curve = pd.DataFrame(rows)
    curve.to_csv(out / "curve.csv", index=False)
    teacher_ndcg = curve.loc[curve.condition == "teacher", "ndcg@10"].iloc[0]
    final = curve.groupby("condition", sort=False).tail(1).assign(
        **{"% of teacher": lambda f: (100 * f["ndcg@10"] / teacher_ndcg).round(1)})
    table = final[["condition", "train_seconds", "ndcg@10", "% of teacher"]].round(4).to_markdown(index=False)
    (out / "results.md").write_text(table + "\n")
    print(table)
    plot(curve, out / "curve.png", f"{data.name}: {args.student} student, {args.student_layers} layers")


def plot(curve: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for condition, group in curve[curve.condition.isin(["qrels", "pseudo", "both"])].groupby("condition"):
        ax.plot(group["train_seconds"] / 60, group["ndcg@10"], marker="o", label=f"{condition} KD")
    for condition, style in (("teacher", "--"), ("BM25", ":"), ("zero-shot", "-.")):
        value = curve.loc[curve.condition == condition, "ndcg@10"]
        if len(value):
            ax.axhline(float(np.asarray(value)[0]), linestyle=style, color="grey", label=condition)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("nDCG@10 (held-back queries)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
