"""Peak memory of streaming a large teacher-score file (ids version) through ScoreFile into training batches.

Writes a synthetic file of N triples over a few hundred documents to a temporary folder, then streams one epoch of
groups (shuffle buffer, text lookups, 16-step prefetch chunks as the Distiller takes them) and reports the resident
memory before, during and after — flat if the file is streamed rather than loaded.

    python benchmarks/memory.py --num-triples 1000000
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

from pyterrier_marginkd.data.scorefiles import ScoreFile, format_line


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as fin:
        return int(fin.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_synthetic(path: Path, num_triples: int, num_queries: int, num_docs: int, seed: int) -> None:
    """A teacher-score file (ids version) of random triples, written line by line."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf8") as out:
        for _ in range(num_triples):
            pos, neg = rng.sample(range(num_docs), 2)
            out.write(format_line(rng.gauss(2, 3), rng.gauss(-2, 3), f"q{rng.randrange(num_queries)}", f"d{pos}",
                                  f"d{neg}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-triples", type=int, default=1_000_000)
    parser.add_argument("--num-queries", type=int, default=200)
    parser.add_argument("--num-docs", type=int, default=500)
    parser.add_argument("--doc-words", type=int, default=60, help="words per synthetic passage (MS MARCO: ~60)")
    parser.add_argument("--shuffle-buffer", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--folder", default=None, help="where to write the file (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        path = Path(tmp) / "scores.ids.tsv"
        started = time.time()
        write_synthetic(path, args.num_triples, args.num_queries, args.num_docs, seed=0)
        written = time.time() - started
        rng = random.Random(1)
        vocabulary = [f"w{i}" for i in range(5000)]
        docs = {f"d{i}": " ".join(rng.choices(vocabulary, k=args.doc_words)) for i in range(args.num_docs)}
        queries = {f"q{i}": " ".join(rng.choices(vocabulary, k=6)) for i in range(args.num_queries)}
        source = ScoreFile(path, queries, docs, shuffle_buffer=args.shuffle_buffer)
        rss_before = rss_mb()
        started = time.time()
        samples, groups = [], 0
        per_chunk = args.batch_size * 16
        stream = iter(source.groups(0))
        while chunk := list(itertools.islice(stream, per_chunk)):
            groups += len(chunk)
            if groups % (args.num_triples // 10 or 1) < per_chunk:
                samples.append(round(rss_mb(), 1))
        seconds = time.time() - started
        assert groups == source.num_groups() == args.num_triples
        print(json.dumps({
            "triples": groups, "file_mb": round(path.stat().st_size / 2**20, 1), "write_s": round(written, 1),
            "stream_s": round(seconds, 1), "triples_per_s": round(groups / seconds),
            "shuffle_buffer": args.shuffle_buffer, "rss_before_stream_mb": round(rss_before, 1),
            "rss_during_stream_mb": samples, "rss_after_mb": round(rss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        }))


if __name__ == "__main__":
    main()
