"""From Pyserini: Anserini BM25 built by the project against PISA's, Pyserini's own command line searching the index
the project built, and ``marginkd rerank`` turning that run into one over the same candidates with a model, texts
from the collection (--docs) and from the Lucene index (--index) alike.

Every process of ours runs with JAVA_HOME and OPENAI_API_KEY unset; Pyserini's own command line gets the Java the
project finds (``find_java()``) and a placeholder key, as the README tells its users to do.

    python benchmarks/pyserini_rerank.py --data ../shared/data/cranfield --split test
    python benchmarks/pyserini_rerank.py --data ../shared/data/vaswani
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ir_measures
import pyterrier as pt
from ir_measures import AP, RR, R, nDCG
from scipy import stats

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data.java import PLACEHOLDER_OPENAI_KEY, find_java
from pyterrier_marginkd.data.runs import read_run

MEASURES = [nDCG @ 10, RR @ 10, AP @ 100, R @ 100]


def run(command: list[str], env: dict[str, str]) -> float:
    """Run ``command``; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/cranfield", help="a collection folder")
    parser.add_argument("--split", default=None, help="topic split (default: all topics)")
    parser.add_argument("--model", default=None, help="re-ranker (default: all-MiniLM-L6-v2, zero-shot bi-encoder)")
    parser.add_argument("--k", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--output", default=None, help="results folder (default: benchmarks/results/pyserini-<name>)")
    parser.add_argument("--work", default="runs/pyserini", help="folder for indexes and runs")
    args = parser.parse_args()
    data = mkd.Collection(args.data)
    out = Path(args.output or f"benchmarks/results/pyserini-{data.name}")
    work = Path(args.work) / data.name
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or mkd.default_model()
    topics_file = data.path / (f"topics.{args.split}.tsv" if args.split else "topics.tsv")
    qrels = data.qrels(args.split)
    ours = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "OPENAI_API_KEY")}
    os.environ.clear()
    os.environ.update(ours)

    # 1. BM25 through the project: PISA (default) and Anserini (Lucene index built through Pyserini)
    pisa = data.bm25(work / "index.pisa", num_results=args.k)
    start = time.perf_counter()
    anserini = data.bm25(work / "index.lucene", num_results=args.k, engine="anserini")
    build_s = time.perf_counter() - start
    table = pt.Experiment([pisa, anserini], data.topics(args.split), qrels, MEASURES, names=["PISA", "Anserini"],
                          round=4)

    # 2. Pyserini's own command line searches the index the project built (raw topics, as users have them)
    bm25_run = work / "bm25.pyserini.trec"
    pyserini_env = {**ours, "JAVA_HOME": find_java(), "OPENAI_API_KEY": PLACEHOLDER_OPENAI_KEY}
    search_s = run([sys.executable, "-m", "pyserini.search.lucene", "--index", str(work / "index.lucene"),
                    "--topics", str(topics_file), "--output", str(bm25_run), "--bm25", "--hits", str(args.k)],
                   pyserini_env)

    # 3. marginkd rerank, texts from the collection and from the index
    rerank = [sys.executable, "-c", "from pyterrier_marginkd.cli import main; main()", "rerank", "--model", model,
              "--run", str(bm25_run), "--topics", str(topics_file), "--k", str(args.k)]
    seconds = {}
    for source, flag, where in (("index", "--index", work / "index.lucene"), ("docs", "--docs", data.path)):
        seconds[source] = run([*rerank, flag, str(where), "--output", str(work / f"rerank.{source}.trec")], ours)
    same_file = (work / "rerank.index.trec").read_bytes() == (work / "rerank.docs.trec").read_bytes()
    candidates = {q.qid: set(q.docnos) for q in read_run(bm25_run, args.k)}
    reranked = {q.qid: set(q.docnos) for q in read_run(work / "rerank.index.trec")}

    runs = {"BM25 (pyserini.search.lucene)": bm25_run, "BM25 >> model (marginkd rerank)": work / "rerank.index.trec"}
    qrels_ir = qrels.rename(columns={"qid": "query_id", "docno": "doc_id", "label": "relevance"})
    per_query, means = {}, {}
    for name, path in runs.items():
        results = list(ir_measures.iter_calc(MEASURES, qrels_ir, ir_measures.read_trec_run(str(path))))
        means[name] = {str(m): round(ir_measures.calc_aggregate([m], qrels_ir,
                                                                ir_measures.read_trec_run(str(path)))[m], 4)
                       for m in MEASURES}
        per_query[name] = {(r.query_id, str(r.measure)): r.value for r in results}
    first, second = per_query.values()
    qids = sorted({q for q, m in first if m == "nDCG@10"})
    p_value = stats.ttest_rel([second.get((q, "nDCG@10"), 0.0) for q in qids],
                              [first.get((q, "nDCG@10"), 0.0) for q in qids]).pvalue
    # the model as a name that holds on any machine (an installed package's folder under <site-packages>)
    portable = model.split("site-packages/", 1)[-1] if "site-packages/" in model else model
    report = {"collection": data.name, "split": args.split, "k": args.k,
              "model": f"<site-packages>/{portable}" if portable != model else model,
              "engines": table.to_dict("records"), "anserini_index_build_s": round(build_s, 1),
              "pyserini_search_s": round(search_s, 1), "rerank_s": {k: round(v, 1) for k, v in seconds.items()},
              "docs_and_index_runs_identical": same_file, "same_candidates": candidates == reranked,
              "runs": means, "rerank_vs_bm25_ndcg10_p": float(p_value), "queries": len(qids)}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    lines = [f"# From Pyserini on {data.name}{f' ({args.split})' if args.split else ''}", "",
             f"BM25 top {args.k} through the project (`Collection.bm25`):", "", table.to_markdown(index=False), "",
             f"Anserini index built in {build_s:.1f} s (with Pyserini's import and JVM start); "
             f"`python -m pyserini.search.lucene` searched it in {search_s:.1f} s.", "",
             f"`marginkd rerank --model {Path(model).parent.name if Path(model).name == 'model' else model}` of that "
             f"run ({len(qids)} queries, paired t-test on nDCG@10 p = {p_value:.3g}):", "",
             "| run | " + " | ".join(str(m) for m in MEASURES) + " |", "| --- |" + " ---: |" * len(MEASURES)]
    lines += [f"| {name} | " + " | ".join(f"{v:.4f}" for v in vals.values()) + " |" for name, vals in means.items()]
    lines += ["", f"Same candidates as the BM25 run's top {args.k}: {candidates == reranked}; runs with texts from "
              f"--docs and --index byte-identical: {same_file} (re-ranking took {seconds['index']:.0f} s / "
              f"{seconds['docs']:.0f} s)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
