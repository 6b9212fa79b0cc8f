"""Which distillation loss? The same 2-layer cross-encoder student, distilled from the same teacher with each loss.

On Cranfield (train split for training, test split for evaluation, BM25 top-k candidates), each condition starts
from the same student initialisation, sees the same training groups (positive + ``--num-negatives`` negatives, so
list-wise losses have a list to read) and the same teacher scores (cached once, shared by every condition):

  MarginMSE              Margin-MSE on qrels positives (the baseline of the significance tests)
  KLDiv                  list-wise softmax KL
  PlackettLuce           Plackett-Luce distillation (PLD)
  CPRD                   contrastive partial ranking distillation (--cprd-k hard negatives)
  MarginMSE+RankNet      Margin-MSE plus a pairwise hard-label term
  label-free MarginMSE   Margin-MSE on pairs the teacher picks (no qrels)

    python benchmarks/losses.py --teacher runs/cranfield-kd/teacher/student
    python benchmarks/losses.py --teacher T --conditions MarginMSE CPRD --epochs 2 --out runs/losses-cprd

Prints and writes (to --out) a table of nDCG@10 and RR@10 with paired t-tests against MarginMSE (Holm-corrected),
with BM25 and the teacher for reference; run by hand, not in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pyterrier as pt
import torch
from ir_measures import RR, nDCG

import pyterrier_marginkd as mkd
from pyterrier_marginkd import losses
from pyterrier_marginkd.models.io import default_model, load_reranker


def conditions(cprd_k: int) -> dict[str, tuple[losses.RankingLoss, bool]]:
    """Condition name -> (loss, whether it trains on qrels)."""
    return {
        "MarginMSE": (losses.MarginMSE(), True),
        "KLDiv": (losses.KLDiv(), True),
        "PlackettLuce": (losses.PlackettLuce(), True),
        "CPRD": (losses.CPRD(k=cprd_k), True),
        "MarginMSE+RankNet": (losses.MarginMSE() + losses.RankNet(), True),
        "label-free MarginMSE": (losses.MarginMSE(), False),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--teacher", required=True, help="saved teacher model folder (or checkpoint)")
    parser.add_argument("--student", default=default_model(), help="student initialisation (folder or hub id)")
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates per query (training and evaluation)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-negatives", type=int, default=7)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--cprd-k", type=int, default=3, help="hard negatives whose order CPRD distils")
    parser.add_argument("--num-queries", type=int, default=None, help="use only the first N training queries")
    parser.add_argument("--test-queries", type=int, default=None, help="evaluate on the first N test queries")
    parser.add_argument("--conditions", nargs="+", default=list(conditions(3)), help="subset of the conditions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/losses")
    args = parser.parse_args(argv)
    chosen = conditions(args.cprd_k)
    unknown = [c for c in args.conditions if c not in chosen]
    if unknown:
        parser.error(f"unknown condition(s) {unknown}; choose from {list(chosen)}")
    if args.conditions[0] != "MarginMSE" and "MarginMSE" in args.conditions:
        args.conditions.remove("MarginMSE")
        args.conditions.insert(0, "MarginMSE")

    data = mkd.Collection(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bm25 = data.bm25(out.parent / f"{data.name}.pisa", num_results=args.k)
    text = data.get_text()
    train_topics, test_topics = data.topics("train"), data.topics("test")
    if args.num_queries:
        train_topics = train_topics.head(args.num_queries)
    if args.test_queries:
        test_topics = test_topics.head(args.test_queries)
    train_qrels, test_qrels = data.qrels("train"), data.qrels("test")
    train_res, test_res = (bm25 >> text)(train_topics), (bm25 >> text)(test_topics)
    teacher = load_reranker(args.teacher, max_length=args.max_length)

    runs, names, reports = [test_res, teacher(test_res)], ["BM25", "teacher"], {}
    for name in args.conditions:
        loss, with_qrels = chosen[name]
        torch.manual_seed(args.seed)
        student = load_reranker(args.student, num_layers=args.student_layers, max_length=args.max_length)
        distiller = mkd.Distiller(student, teacher, loss=loss, epochs=args.epochs, max_steps=args.max_steps,
                                  batch_size=args.batch_size, lr=args.lr, num_negatives=args.num_negatives,
                                  seed=args.seed, output_dir=out / name.replace(" ", "_"),
                                  cache_dir=out / "teacher_cache", teacher_id=f"{teacher!r}", resume=False,
                                  verbose=True)
        started = time.time()
        distiller.fit(train_res, train_qrels if with_qrels else None)
        reports[name] = {"loss": repr(loss), "train_seconds": round(time.time() - started, 1), **distiller.report}
        runs.append(distiller.student(test_res))
        names.append(name)

    baseline = 2 if args.conditions[0] == "MarginMSE" else None
    table = pt.Experiment(runs, test_topics, test_qrels, [nDCG @ 10, RR @ 10], names=names, baseline=baseline,
                          correction="holm", round=4)
    print(table.to_string(index=False))
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(table.to_markdown(index=False) + "\n")
    (out / "reports.json").write_text(json.dumps(reports, indent=2, default=str))


if __name__ == "__main__":
    main()
