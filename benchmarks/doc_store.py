"""Re-ranking from pre-computed documents: DotEncoder, ColBERT, PreTT and TK students reading a warm document store
against the same students encoding documents on the fly, a CrossEncoder student and the 6-layer cross-encoder teacher.

Every system re-ranks the same BM25 top-``k`` candidates of the first ``--queries`` test queries; systems are timed
interleaved (A, B, C, A, B, C, ...) and the median of ``--repeats`` runs is reported, so that load from other processes
hits every system alike. The store of each efficient student is built once over the whole collection first (its build
time and size are reported), and its scores are checked against the on-the-fly path on the timed pairs.

    python benchmarks/doc_store.py --data ../shared/data/cranfield --output benchmarks/results/doc-store
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import pyterrier_marginkd as mkd


def model_name(model: str) -> str:
    """A short name: a pip-installed model's package (its weights sit in ``<package>/model``) or the folder's name."""
    path = Path(model)
    return path.parent.name if path.name == "model" else path.name


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/cranfield", help="collection folder or irds: id")
    parser.add_argument("--model", default=None, help="checkpoint of the teacher and students (default: MiniLM-L6)")
    parser.add_argument("--layers", type=int, default=2, help="layers of each student")
    parser.add_argument("--queries", type=int, default=10, help="test queries whose candidates are re-ranked")
    parser.add_argument("--k", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/doc-store")
    parser.add_argument("--work", default="runs/doc-store", help="folder for the BM25 index and the stores")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or mkd.default_model()
    data = mkd.Collection(args.data)
    bm25 = data.bm25(Path(args.work) / f"{data.name}.pisa", num_results=args.k)
    candidates = (bm25 % args.k >> data.get_text())(data.topics("test").head(args.queries))

    torch.manual_seed(0)
    students = {
        "DotEncoder": mkd.DotEncoder(model, pooling="mean", num_layers=args.layers),
        "ColBERT": mkd.ColBERT(model, num_layers=args.layers),
        "PreTT": mkd.PreTT(model, num_layers=args.layers),
        "TK": mkd.TK(model, num_layers=args.layers),  # its own small transformer over the model's embeddings
    }
    systems = {"teacher (CrossEncoder L6)": mkd.CrossEncoder(model),
               f"CrossEncoder L{args.layers}": mkd.CrossEncoder(model, num_layers=args.layers)}
    notes = []
    for name, student in students.items():
        folder = Path(args.work) / f"store-{name}"
        started = time.perf_counter()
        student.build_store(data.docs_iter(), folder, overwrite=True)
        seconds = time.perf_counter() - started
        reranker = student.with_store(folder)
        difference = np.abs(reranker(candidates)["score"].to_numpy() - student(candidates)["score"].to_numpy()).max()
        notes.append(f"{name} store: {len(reranker.store)} documents in {seconds:.1f} s, "
                     f"{folder_size(folder) / 2**20:.1f} MiB; max |stored - on the fly| score {difference:.1e}")
        systems[f"{name} L{args.layers}, on the fly"] = student
        systems[f"{name} L{args.layers}, warm store"] = reranker
    for system in systems.values():  # warm-up: first calls allocate
        system(candidates.head(8))

    runs: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, system in systems.items():
            started = time.perf_counter()
            system(candidates)
            runs[name].append(time.perf_counter() - started)
    teacher_rate = len(candidates) / statistics.median(runs["teacher (CrossEncoder L6)"])
    rows = [{"system": name, "pairs/s": round(len(candidates) / statistics.median(times), 1),
             "x teacher": round(len(candidates) / statistics.median(times) / teacher_rate, 2),
             "runs (s)": [round(t, 3) for t in times]} for name, times in runs.items()]
    table = pd.DataFrame(rows)
    header = (f"{data.name}: BM25 top {args.k} of {args.queries} test queries ({len(candidates)} pairs); students "
              f"on the first {args.layers} layers of {model_name(model)}, teacher its 6 layers as a cross-encoder "
              f"(untrained head: speed only); torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} "
              f"CPUs; median of {args.repeats} interleaved runs; load average at the end {os.getloadavg()}.")
    table.to_csv(out / "results.csv", index=False)
    text = f"{header}\n\n{table.to_markdown(index=False)}\n\n" + "".join(f"- {n}\n" for n in notes)
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
