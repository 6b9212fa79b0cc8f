"""A trained student's document store kept in float16 against float32: size on disk, scores and nDCG@10.

Builds both stores of a saved student (DotEncoder, ColBERT, PreTT or TK) over the whole collection, re-ranks the BM25
top ``--k`` of every test query from each, and reports the stores' sizes, the largest score difference, nDCG@10 of
both (paired t-test) and how much of each query's top 10 they share.

    python benchmarks/store_dtype.py --student runs/quickstart/student-TK-L2-kl/student \\
        --data ../shared/data/cranfield --output benchmarks/results/store-dtype
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from doc_store import folder_size  # (benchmarks/ is on the path when a script runs)
from scipy import stats

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data.evaluation import per_query_ndcg10


def top10_overlap(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Mean over queries of the share of the top 10 both rankings hold."""
    tops = [{q: set(f[f["rank"] < 10]["docno"]) for q, f in run.groupby("qid")} for run in (a, b)]
    return float(np.mean([len(tops[0][q] & tops[1].get(q, set())) / max(len(tops[0][q]), 1) for q in tops[0]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", required=True, help="a saved student's folder (mkd.load)")
    parser.add_argument("--data", default="../shared/data/cranfield", help="collection folder or irds: id")
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates per test query")
    parser.add_argument("--output", default="benchmarks/results/store-dtype")
    parser.add_argument("--work", default="runs/store-dtype", help="folder for the BM25 index and the two stores")
    args = parser.parse_args()
    out, work = Path(args.output), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    student = mkd.load(args.student)
    data = mkd.Collection(args.data)
    bm25 = data.bm25(work / f"{data.name}.pisa", num_results=args.k)
    topics, qrels = data.topics("test"), data.qrels("test")
    candidates = (bm25 % args.k)(topics)  # no text: every candidate comes from the stores
    rows, runs = [], {}
    for dtype in ("float32", "float16"):
        started = time.perf_counter()
        store = student.build_store(data.docs_iter(), work / f"store-{dtype}", overwrite=True, dtype=dtype)
        built = time.perf_counter() - started
        runs[dtype] = student.with_store(store)(candidates)
        rows.append({"store": dtype, "documents": len(store), "MiB": round(folder_size(store.path) / 2**20, 1),
                     "build (s)": round(built, 1),
                     "nDCG@10": round(float(per_query_ndcg10(runs[dtype], qrels).mean()), 4)})
    full, half = (per_query_ndcg10(runs[d], qrels) for d in ("float32", "float16"))
    difference = np.abs(runs["float16"]["score"].to_numpy() - runs["float32"]["score"].to_numpy()).max()
    spread = float(runs["float32"]["score"].std())
    table = pd.DataFrame(rows)
    text = (f"{data.name}: {type(student).__name__} from {args.student}, BM25 top {args.k} of {len(topics)} test "
            f"queries ({len(candidates)} pairs), re-ranked from each store.\n\n{table.to_markdown(index=False)}\n\n"
            f"- largest |float16 - float32| score: {difference:.2e} (scores' standard deviation {spread:.3f})\n"
            f"- nDCG@10 float16 - float32: {half.mean() - full.mean():+.4f} (paired t-test p = "
            f"{stats.ttest_rel(half, full).pvalue if not np.allclose(half, full) else 1.0:.3g})\n"
            f"- top-10 overlap: {top10_overlap(runs['float32'], runs['float16']):.4f}\n")
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(text)
    print(f"{text}\nwritten to {out}")


if __name__ == "__main__":
    main()
