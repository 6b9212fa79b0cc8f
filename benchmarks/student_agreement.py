"""Does a student generalise its teacher or memorise it? Agreement with the teacher on training vs held-out queries.

For each student (and, as a reference, the teacher's first layers before any training) the script re-ranks BM25
top-k of three query sets — training queries, the validation queries held out of training, and the test split — and
reports nDCG@10 and the mean per-query Spearman correlation between the student's and the teacher's scores. A student
that agrees with the teacher on training queries but not on held-out ones has memorised its training set.

    python benchmarks/student_agreement.py --run runs/cranfield-kd3 --output benchmarks/results/cranfield-kd
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data.evaluation import evaluate_ndcg10


def agreement(student: pd.DataFrame, teacher: pd.DataFrame) -> float:
    """Mean over queries of the Spearman correlation between two score columns for the same (qid, docno) rows."""
    merged = student[["qid", "docno", "score"]].merge(teacher[["qid", "docno", "score"]], on=["qid", "docno"],
                                                      suffixes=("", "_teacher"))
    per_query = [g["score"].corr(g["score_teacher"], method="spearman") for _, g in merged.groupby("qid")]
    return float(pd.Series(per_query).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--run", default="runs/cranfield-kd3", help="output folder of examples/distill_cranfield.py")
    parser.add_argument("--students", nargs="+", default=["student-labels", "student-marginmse"])
    parser.add_argument("--layers", type=int, default=2, help="layers of the untrained reference student")
    parser.add_argument("--valid-queries", type=int, default=20, help="as in the example: the last N train queries")
    parser.add_argument("--sample", type=int, default=20, help="training / test queries sampled (seeded)")
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--output", default=None, help="folder for agreement.md / agreement.csv")
    args = parser.parse_args()

    data = mkd.Collection(args.data)
    run = Path(args.run)
    bm25 = data.bm25(run / f"{data.name}.pisa", num_results=args.k)
    train = data.topics("train")
    sets = {"train": train.head(len(train) - args.valid_queries).sample(args.sample, random_state=0),
            "valid": train.tail(args.valid_queries), "test": data.topics("test").sample(args.sample, random_state=0)}
    qrels = pd.concat([data.qrels("train"), data.qrels("test")])
    teacher = mkd.load(run / "teacher" / "student")
    models = {f"teacher's first {args.layers} layers, untrained":
              mkd.CrossEncoder.from_pretrained(run / "teacher" / "student", num_layers=args.layers)}
    models.update({name: mkd.load(run / name / "student") for name in args.students})
    rows = []
    for split, topics in sets.items():
        res = (bm25 % args.k >> data.get_text())(topics).drop(columns=["score", "rank"])
        scored_by_teacher = teacher.transform(res)
        rows.append({"model": "teacher", "queries": split, "nDCG@10": evaluate_ndcg10(scored_by_teacher, qrels),
                     "spearman vs teacher": 1.0})
        for name, model in models.items():
            out = model.transform(res)
            rows.append({"model": name, "queries": split, "nDCG@10": evaluate_ndcg10(out, qrels),
                         "spearman vs teacher": agreement(out, scored_by_teacher)})
    table = pd.DataFrame(rows).pivot(index="model", columns="queries", values=["nDCG@10", "spearman vs teacher"])
    table.columns = [f"{measure} ({split})" for measure, split in table.columns]
    table = table.round(3).reset_index()
    print(table.to_markdown(index=False))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "agreement.md").write_text(table.to_markdown(index=False) + "\n")
        table.to_csv(out / "agreement.csv", index=False)


if __name__ == "__main__":
    main()
