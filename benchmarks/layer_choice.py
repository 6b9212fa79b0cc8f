"""Which layers a truncated query encoder should keep: untrained layer subsets inside the quickstart's fused teacher.

For each subset of the model's layers (given as digit strings, ``0145`` = layers 0, 1, 4 and 5), the model's query
encoder keeps those layers — no training — and scores the test candidates against the full model's document vectors
under the students' linear mix (``a · cosine + b · zscore(BM25)``, a and b fitted by least squares to the teacher's
scores on the training candidates: ``kd_variants.linear_mix_reference``). The row ``012345`` is the whole encoder.
This is what ``mkd.spread_layers`` rests on: the subsets that keep the last layer (whose space the document vectors
are in) start far closer to the teacher than the first k layers.

    python benchmarks/layer_choice.py --data ../shared/data/vaswani \\
        --subsets 012345 01 05 15 25 0123 0145 0245 0345 2345 --output benchmarks/results/layer-choice-vaswani
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from kd_variants import linear_mix_reference, write_table

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data.evaluation import evaluate_ndcg10
from pyterrier_marginkd.models.hf import layer_list
from pyterrier_marginkd.models.io import load_scorer
from pyterrier_marginkd.quickstart import FAST
from pyterrier_marginkd.quickstart.stages import split_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="collection folder or irds: id (with train/test splits)")
    parser.add_argument("--subsets", nargs="+", required=True, help="layer subsets as digit strings, e.g. 0145")
    parser.add_argument("--output", required=True, help="folder for the results (results.csv, results.md)")
    parser.add_argument("--index-dir", default="runs/layer-choice", help="folder for the PISA index")
    args = parser.parse_args()
    out, seed, r = Path(args.output), 0, FAST
    out.mkdir(parents=True, exist_ok=True)
    data = mkd.Collection(args.data)
    bm25 = data.bm25(Path(args.index_dir) / f"{data.name}.pisa", num_results=r.k)
    candidates = bm25 % r.k >> data.get_text()
    train_topics, train_qrels = data.topics("train"), data.qrels("train")
    fit_topics, valid_topics = split_validation(train_topics, r.valid_fraction, seed)  # as the quickstart
    fit_res, test_res = candidates(fit_topics), candidates(data.topics("test"))
    fit_qrels = train_qrels[train_qrels["qid"].astype(str).isin(set(fit_topics["qid"].astype(str)))]
    model = mkd.default_model()
    member = load_scorer(model, bi_encoder_kwargs={"frozen_docs": True}, max_length=r.max_length)
    teacher = mkd.Ensemble([mkd.FirstStageScore(), member], normalize="zscore")
    teacher.fit(fit_res, fit_qrels)  # the quickstart's fusion weights (same queries, same rule)
    method = "title" if data.has_titles() else "first_sentence"
    pq = mkd.pseudo_queries(data, method, num=r.pseudo_queries, seed=seed)
    train_res = pd.concat([fit_res, candidates(pq[["qid", "query"]])], ignore_index=True)
    test_qrels = data.qrels("test")
    teacher_ndcg = evaluate_ndcg10(teacher(test_res), test_qrels)
    rows = [{"subset": "BM25", "nDCG@10": evaluate_ndcg10(test_res, test_qrels)},
            {"subset": f"teacher (weights {teacher.weights})", "nDCG@10": teacher_ndcg}]
    query_model = mkd.DotEncoder.from_pretrained(model, frozen_docs=True, max_length=r.max_length)
    query_model.share_doc_vectors(member.doc_vectors)  # the teacher's document vectors, computed once
    layers = layer_list(query_model.model.encoder)
    every = list(layers)
    for subset in args.subsets:
        keep = [int(c) for c in subset]
        del layers[:len(layers)]
        layers.extend(every[i] for i in keep)
        started = time.time()
        ndcg = evaluate_ndcg10(linear_mix_reference(query_model, teacher, train_res, test_res), test_qrels)
        row = {"subset": subset, "layers": len(keep), "nDCG@10": ndcg, "% of teacher": 100 * ndcg / teacher_ndcg,
               "first k": keep == list(range(len(keep))), "spread_layers": keep == mkd.spread_layers(len(every),
                                                                                                len(keep)),
               "seconds": time.time() - started}
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_table(rows, out)


if __name__ == "__main__":
    main()
