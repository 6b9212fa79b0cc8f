"""int8 against fp32: the same trained student re-ranking a collection's test queries (BM25 top-k), loaded as it is
and with ``quantize="int8"`` — pairs/s (timed interleaved in one process, median of the repetitions) and nDCG@10 /
RR@10 (paired t-test between the two) — run by hand, not part of CI.

Timing covers the neural scores (``score_pairs``); a student that mixes in the first-stage score is evaluated with
that mix. Student: ``--student FOLDER`` (any saved pyterrier-marginkd model), else a 2-layer CrossEncoder distilled
here into ``<output>/ce-L2/student`` (reused by a later run): the first 2 layers of all-MiniLM-L6-v2 with a new head,
Margin-MSE from the quickstart's teacher (BM25 fused with the zero-shot all-MiniLM-L6-v2 bi-encoder, per-query
z-scores, weights ``--fusion-weights``, which the quickstart fitted on Cranfield's train labels) on 80% of the train
queries and 600 title pseudo-queries, BM25 top 30, 160 steps of 16 groups of 1 positive + 3 negatives (learning rate
1e-4, head 1e-3), the best of the validations every 40 steps on the other 20% kept. A quick student: 0.14 nDCG@10 on
Cranfield's test queries, below BM25, as cross-encoders trained on Cranfield's ~100 judged queries are here; the
point is the change int8 makes to the same model.

    python benchmarks/quantization.py --output runs/quantization          # trains the student on first use
    python benchmarks/quantization.py --student runs/kd/student --output runs/quantization-kd
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyterrier as pt  # noqa: E402
import torch  # noqa: E402
from ir_measures import RR, nDCG  # noqa: E402

import pyterrier_marginkd as mkd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import compare, cpu_name, load_average  # noqa: E402


def train_student(collection: mkd.Collection, bm25: pt.Transformer, folder: Path, fusion_weights: Sequence[float],
                  steps: int) -> Path:
    """Distil the 2-layer CrossEncoder student described in the module docstring into ``folder`` once (a later run
    with the same settings reuses it); returns the student's folder."""
    minilm = mkd.default_model()

    def fit(output_dir: Path) -> mkd.Distiller:
        get_text = collection.get_text()
        bi_encoder = mkd.DotEncoder.from_pretrained(minilm, frozen_docs=True, max_length=256)
        teacher = mkd.Ensemble([mkd.FirstStageScore(), bi_encoder], weights=list(fusion_weights), normalize="zscore")
        torch.manual_seed(0)
        student = mkd.CrossEncoder.from_pretrained(minilm, num_layers=2, max_length=256)
        pseudo = mkd.pseudo_queries(collection, "title", num=600, seed=0)
        topics, qrels = collection.topics("train"), collection.qrels("train")
        valid = topics.sample(frac=0.2, random_state=0)
        train = topics.drop(valid.index)
        candidates = bm25 % 30 >> get_text
        train_res = pd.concat([candidates(train), candidates(pseudo[["qid", "query"]])], ignore_index=True)
        distiller = mkd.Distiller(student, teacher, loss=mkd.losses.MarginMSE(), unjudged="teacher", epochs=50,
                                  max_steps=steps, batch_size=16, num_negatives=3, lr=1e-4, head_lr=1e-3,
                                  eval_steps=40, seed=0, output_dir=output_dir, verbose=True)
        return distiller.fit(train_res, qrels[qrels.qid.isin(train.qid)], (bm25 >> get_text)(valid),
                             qrels[qrels.qid.isin(valid.qid)])

    settings = {"data": collection.name, "model": minilm, "fusion_weights": list(fusion_weights), "steps": steps}
    mkd.fit_once(folder, settings, fit, verbose=True)
    return folder / "student"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"`{report['student']}` ({report['model']}) re-ranking BM25 top {report['k']} of {report['queries']} "
             f"`{report['data']}` {report['split']} queries ({report['pairs']} pairs); torch {env['torch']}, "
             f"{env['torch_threads']} threads, {env['cpu_count']} CPUs ({env['cpu']}); median of {report['repeats']} "
             f"interleaved runs; load average at start / end {env['load_start']} / {env['load_end']}.", "",
             "| system | pairs/s | vs fp32 | runs (s) | nDCG@10 | RR@10 |", "| --- | ---: | ---: | --- | ---: | ---: |"]
    for row in report["results"]:
        lines.append(f"| {row['system']} | {row['pairs_per_s']:.1f} | {row['vs_fp32']:.2f}x | {row['seconds']} | "
                     f"{row['ndcg@10']:.4f} | {row['rr@10']:.4f} |")
    diff = report["int8_vs_fp32"]
    lines += ["", f"int8 - fp32: nDCG@10 {diff['ndcg@10_delta']:+.4f} (paired t-test p = {diff['ndcg@10_p']:.3g}), "
                  f"RR@10 {diff['rr@10_delta']:+.4f}; scores: max abs difference {diff['max_abs_score_diff']:.3g}, "
                  f"Spearman {diff['spearman']:.4f}; per query, top-10 overlap {diff['top10_overlap']:.3f}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"),
                        help="collection folder or irds: id (default $MARGINKD_DATA or ../shared/data, cranfield)")
    parser.add_argument("--split", default="test", help="queries evaluated (default test)")
    parser.add_argument("--student", default=None, help="saved student folder (default: train the 2-layer one)")
    parser.add_argument("--fusion-weights", nargs=2, type=float, default=[0.3, 0.7],
                        help="teacher weights of BM25 and the bi-encoder when training (default: the quickstart's "
                             "fit on Cranfield)")
    parser.add_argument("--train-steps", type=int, default=160, help="optimizer steps of the trained student")
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates re-ranked per query")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs over all pairs per system")
    parser.add_argument("--output", default="runs/quantization", help="folder of the report (and trained student)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the comparison; write ``quantization.json`` and ``quantization.md`` into the output folder."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    collection = mkd.Collection(args.data)
    bm25 = collection.bm25(output / f"{collection.name}.pisa", num_results=args.k)
    student = Path(args.student) if args.student else train_student(collection, bm25, output / "ce-L2",
                                                                    args.fusion_weights, args.train_steps)
    fp32 = mkd.load(student, batch_size=args.batch_size, device="cpu")
    int8 = mkd.load(student, batch_size=args.batch_size, quantize="int8")
    topics, qrels = collection.topics(args.split), collection.qrels(args.split)
    results = (bm25 % args.k >> collection.get_text())(topics)
    queries, texts = results["query"].tolist(), results[fp32.text_field].tolist()
    load_start = load_average()
    print(f"timing {fp32!r} fp32 and int8 on {len(results)} pairs, {args.repeats} interleaved runs each", flush=True)
    timed = compare({"fp32": fp32.score_pairs, "int8": int8.score_pairs}, queries, texts, repeats=args.repeats,
                    warmup=args.batch_size)
    if getattr(fp32, "first_stage", None) is None:
        runs = {name: pt.model.add_ranks(results.assign(score=res["scores"])) for name, res in timed.items()}
    else:  # a student mixing in the BM25 score ranks by the mix: evaluate the re-ranker itself
        runs = {"fp32": fp32(results), "int8": int8(results)}
    table = pt.Experiment(list(runs.values()), topics, qrels, [nDCG @ 10, RR @ 10], names=list(runs), baseline=0)
    per_query = pt.Experiment(list(runs.values()), topics, qrels, [nDCG @ 10], names=list(runs), perquery=True)
    print(table.to_string())
    rows = []
    for name, res in timed.items():
        measured = table.set_index("name").loc[name]
        rows.append({"system": name, "pairs_per_s": res["pairs_per_s"], "best_pairs_per_s": res["best_pairs_per_s"],
                     "vs_fp32": res["pairs_per_s"] / timed["fp32"]["pairs_per_s"], "seconds": res["seconds"],
                     "ndcg@10": float(measured["nDCG@10"]), "rr@10": float(measured["RR@10"])})
    top10 = {name: run[run["rank"] < 10].groupby("qid")["docno"].apply(set) for name, run in runs.items()}
    overlap = np.mean([len(top10["fp32"][qid] & top10["int8"][qid]) / len(top10["fp32"][qid])
                       for qid in top10["fp32"].index])
    ndcg = per_query.pivot_table(index="qid", columns="name", values="value")
    from scipy import stats

    report = {
        "data": args.data, "split": args.split, "student": str(student), "model": repr(fp32), "k": args.k,
        "queries": len(topics), "pairs": len(results), "repeats": args.repeats, "results": rows,
        "int8_vs_fp32": {
            "ndcg@10_delta": rows[1]["ndcg@10"] - rows[0]["ndcg@10"],
            "ndcg@10_p": float(stats.ttest_rel(ndcg["int8"], ndcg["fp32"]).pvalue),
            "rr@10_delta": rows[1]["rr@10"] - rows[0]["rr@10"],
            "max_abs_score_diff": float(np.abs(timed["int8"]["scores"] - timed["fp32"]["scores"]).max()),
            "spearman": float(stats.spearmanr(timed["int8"]["scores"], timed["fp32"]["scores"]).statistic),
            "top10_overlap": float(overlap)},
        "environment": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu": cpu_name(),
                        "cpu_count": os.cpu_count(), "load_start": load_start, "load_end": load_average()}}
    (output / "quantization.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (output / "quantization.md").write_text(text)
    print("\n" + text)
    return report


if __name__ == "__main__":
    main()
