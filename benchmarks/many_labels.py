"""Many judged queries: the quickstart on an inverse-cloze copy of a collection.

Cranfield and Vaswani give the quickstart 120 and 52 fitting queries; a benchmark with hundreds (SciFact's 809 train
queries, one or two relevant abstracts each) is where a student trained on the labels alone has beaten distilled
ones. Offline there is no such collection, so this makes one from any collection folder, as the inverse cloze task
does (Lee et al., 2019): ``--queries`` documents (seeded) each lose a run of ``--words`` consecutive words from
somewhere after their first quarter, and that run is a query whose one relevant document is the shortened document.
The documents keep their titles; every other document is unchanged. ``--test`` of the queries form the test split, the
rest the train split. Then the quickstart runs on the copy and its report lands in ``--results``:

    python benchmarks/many_labels.py --data ../shared/data/cranfield --output runs/many-labels --results DIR
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from paragraph_queries import quickstart_report  # (benchmarks/ is on the path when a script runs)

import pyterrier_marginkd as mkd


def cloze_copy(data: mkd.Collection, folder: Path, queries: int, test: int, words: int, seed: int = 0) -> Path:
    """The inverse-cloze copy of ``data`` in ``folder`` (built once: a complete copy has its topics.tsv written
    last); raises when the collection has fewer than ``queries`` documents of at least ``3 * words`` words."""
    if (folder / "topics.tsv").exists():
        return folder
    if not 0 < test < queries:
        raise ValueError(f"--test must be between 1 and --queries - 1, got {test} of {queries}")
    with gzip.open(data.path / "docs.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    long_enough = [i for i, doc in enumerate(docs) if len(str(doc["text"]).split()) >= 3 * words]
    if len(long_enough) < queries:
        raise ValueError(f"{data.path}: {len(long_enough)} documents have {3 * words}+ words, fewer than the "
                         f"{queries} queries asked for; lower --queries or --words")
    rng = np.random.default_rng(seed)
    rows = []
    for number, i in enumerate(rng.choice(long_enough, size=queries, replace=False)):
        tokens = str(docs[i]["text"]).split()
        start = int(rng.integers(len(tokens) // 4, len(tokens) - words + 1))
        rows.append({"qid": f"c{number + 1}", "query": " ".join(tokens[start:start + words]),
                     "docno": docs[i]["docno"]})
        docs[i] = {**docs[i], "text": " ".join(tokens[:start] + tokens[start + words:])}
    topics = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "docs.jsonl.gz.tmp", "wt", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    os.replace(folder / "docs.jsonl.gz.tmp", folder / "docs.jsonl.gz")
    splits = {"test": topics.iloc[:test], "train": topics.iloc[test:], "": topics}
    for split, part in splits.items():  # the full topics last: their file marks a complete copy
        suffix = f".{split}" if split else ""
        part.assign(zero=0, label=1)[["qid", "zero", "docno", "label"]].to_csv(
            folder / f"qrels{suffix}.txt", sep=" ", header=False, index=False)
        part[["qid", "query"]].to_csv(folder / f"topics{suffix}.tsv.tmp", sep="\t", header=False, index=False,
                                      quoting=3)
        os.replace(folder / f"topics{suffix}.tsv.tmp", folder / f"topics{suffix}.tsv")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cranfield", help="a collection folder")
    parser.add_argument("--queries", type=int, default=1110, help="queries made (SciFact: 809 train + 300 test)")
    parser.add_argument("--test", type=int, default=300, help="of them, the test split")
    parser.add_argument("--words", type=int, default=12, help="words per query (SciFact's claims: about 12)")
    parser.add_argument("--output", default="runs/many-labels", help="work folder")
    parser.add_argument("--results", default=None,
                        help="where the report goes (default: benchmarks/results/quickstart-fast-many-labels-<name>)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more quickstart flags (last)")
    args = parser.parse_args()
    data = mkd.Collection(args.data)
    work = Path(args.output)
    copy = cloze_copy(data, work / f"{data.name}-cloze", args.queries, args.test, args.words)
    results = Path(args.results or f"benchmarks/results/quickstart-fast-many-labels-{data.name}")
    note = (f"Queries: {args.queries} runs of {args.words} consecutive words, each cut from one of {data.name}'s "
            f"documents (after its first quarter), that document its one relevant one; {args.test} test queries, "
            f"{args.queries - args.test} train queries; flags: --fast {' '.join(args.extra)}")
    seconds = quickstart_report(copy, work / f"{data.name}-cloze-quickstart", results, args.extra, note)
    print(f"quickstart --fast on {args.queries} cloze queries: {seconds:.0f} s")

if __name__ == "__main__":
    main()
