"""Where `marginkd quickstart --fast` spends its time when queries are paragraphs.

Some collections ask with paragraphs (arguments, claims, descriptions) where Cranfield and Vaswani ask with a line.
This makes a paragraph-query copy of a collection folder — each query followed by the first ``--words`` words of its
BM25 top document (pseudo-relevance feedback: no labels read), documents and qrels linked, splits kept — runs the
quickstart on it, and writes the report with its seconds per stage (``timings.csv``) beside a summary of the query
lengths:

    python benchmarks/paragraph_queries.py --data ../shared/data/cranfield --output runs/paragraphs
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

import pyterrier_marginkd as mkd


def paragraph_copy(data: mkd.Collection, folder: Path, words: int, work: Path) -> Path:
    """A copy of ``data`` in ``folder`` whose queries are each followed by ``words`` words of their BM25 top
    document; built once (a complete copy has its topics.tsv written last)."""
    if (folder / "topics.tsv").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for source in [data.path / "docs.jsonl.gz", *data.path.glob("qrels*.txt")]:
        target = folder / source.name
        if not target.exists():
            os.symlink(source.resolve(), target)
    bm25 = data.bm25(work / f"{data.name}.pisa", num_results=1)
    text = data.get_text()
    splits = [f"topics.{split}.tsv" for split in data.splits()] + ["topics.tsv"]  # the full topics last
    for name in splits:
        topics = pd.read_csv(data.path / name, sep="\t", header=None, names=["qid", "query"], dtype=str,
                             keep_default_na=False, quoting=3)
        top = (bm25 >> text)(data.topics(name[len("topics."):-len(".tsv")] or None))
        first = dict(zip(top["qid"], top["text"].map(lambda t: " ".join(str(t).split()[:words]))))
        missing = sorted(set(topics["qid"]) - set(first))
        if missing:
            print(f"{name}: {len(missing)} queries without a BM25 result keep their text alone ({missing[:5]})")
        topics["query"] = [f"{q} {first.get(qid, '')}".strip() for qid, q in zip(topics["qid"], topics["query"])]
        topics.to_csv(folder / f"{name}.tmp", sep="\t", header=False, index=False, quoting=3)
        os.replace(folder / f"{name}.tmp", folder / name)
    return folder


def quickstart_report(data: Path, output: Path, results: Path, extra: list[str], queries_note: str) -> float:
    """Run ``marginkd quickstart --fast`` on the collection folder ``data`` into ``output`` (``extra``: more flags),
    copy its report's tables and timings to ``results`` beside ``queries.md`` (``queries_note``: how the queries were
    made) and print the timings; returns the seconds it took."""
    started = time.time()
    subprocess.run([sys.executable, "-m", "pyterrier_marginkd.cli", "quickstart", "--data", str(data), "--output",
                    str(output), "--fast", *extra], check=True)
    seconds = time.time() - started
    results.mkdir(parents=True, exist_ok=True)
    for name in ("results.md", "results.csv", "results_vs_labels.csv", "timings.csv"):
        if (output / "report" / name).exists():
            shutil.copy(output / "report" / name, results / name)
    (results / "queries.md").write_text(queries_note + "\n")
    print(pd.read_csv(results / "timings.csv").to_string(index=False))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cranfield", help="a collection folder")
    parser.add_argument("--words", type=int, default=150, help="words of the top document added to each query")
    parser.add_argument("--output", default="runs/paragraphs", help="work folder")
    parser.add_argument("--results", default=None,
                        help="where the report goes (default: benchmarks/results/quickstart-fast-paragraphs-<name>)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more quickstart flags (last)")
    args = parser.parse_args()
    data = mkd.Collection(args.data)
    work = Path(args.output)
    copy = paragraph_copy(data, work / f"{data.name}-paragraphs", args.words, work)
    lengths = mkd.Collection(copy).topics()["query"].str.split().str.len()
    print(f"{copy}: {len(lengths)} queries, words per query: median {lengths.median():.0f}, "
          f"max {lengths.max()} (the original median {data.topics()['query'].str.split().str.len().median():.0f})")
    results = Path(args.results or f"benchmarks/results/quickstart-fast-paragraphs-{data.name}")
    note = (f"Queries: {data.name}'s, each followed by the first {args.words} words of its BM25 top document; "
            f"{len(lengths)} queries, median {lengths.median():.0f} words (max {lengths.max()}), "
            f"the original median {data.topics()['query'].str.split().str.len().median():.0f}.")
    seconds = quickstart_report(copy, work / f"{data.name}-paragraphs-quickstart", results, args.extra, note)
    print(f"quickstart --fast on paragraph queries: {seconds:.0f} s")

if __name__ == "__main__":
    main()
