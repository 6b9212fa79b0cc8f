"""How students are distilled from the quickstart's fused teacher: training variants compared on one collection.

Reuses a finished quickstart folder (its PISA index and fitted fusion weights, ``--run``) and trains one student per
variant from the same teacher, training queries (fitting queries + teacher-labelled pseudo-queries) and document
vectors, then reports each student's test nDCG@10 at its last step and at its best validation step, as a share of the
teacher's. A variant is ``LAYERS:NEGATIVES:LOSS:STEPS:LR`` with LOSS one of ``marginmse``, ``kl`` (KL over
z-scored lists) or ``mse``; ``NEGATIVES=49`` with k=50 gives each training query its whole candidate list.

    python benchmarks/kd_variants.py --data ../shared/data/vaswani --run runs/qs-vaswani-fast \\
        --variants 2:7:marginmse:300:3e-4 2:49:marginmse:300:3e-4 2:49:kl:300:3e-4 4:49:marginmse:300:3e-4 \\
        --output benchmarks/results/kd-variants-vaswani
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_model

import pyterrier_marginkd as mkd
from pyterrier_marginkd.data.evaluation import evaluate_ndcg10
from pyterrier_marginkd.models.ensemble import normalize_scores
from pyterrier_marginkd.models.hf import layer_list
from pyterrier_marginkd.models.io import load_scorer
from pyterrier_marginkd.quickstart import FAST, FUSION_FILE
from pyterrier_marginkd.quickstart.stages import split_validation

LOSSES = {"marginmse": lambda: mkd.losses.MarginMSE(), "kl": lambda: mkd.losses.KLDiv(normalize="zscore"),
          "mse": lambda: mkd.losses.MSE()}


def parse_variant(text: str) -> dict:
    try:
        layers, negatives, loss, steps, lr = text.split(":")
        variant = {"layers": int(layers), "negatives": int(negatives), "loss": loss, "steps": int(steps),
                   "lr": float(lr)}
    except ValueError:
        raise SystemExit(f"variant {text!r} is not LAYERS:NEGATIVES:LOSS:STEPS:LR") from None
    if loss not in LOSSES:
        raise SystemExit(f"variant {text!r}: loss must be one of {sorted(LOSSES)}")
    return variant


def linear_mix_reference(member: mkd.DotEncoder, teacher: mkd.Ensemble, train_res: pd.DataFrame,
                         test_res: pd.DataFrame) -> pd.DataFrame:
    """The students' form with the teacher's whole query encoder: ``a * cosine + b * zscore(BM25)``, a and b the least
    squares fit of the teacher's scores on the training candidates (centred per query): what the mixing can keep."""
    def features(res: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        rows = res.reset_index(drop=True)
        cosine = member.score_pairs(rows["query"].tolist(), rows[member.text_field].tolist())
        bm25 = normalize_scores(rows["qid"], rows["score"].to_numpy(dtype=float), "zscore")
        centred = pd.DataFrame({"qid": rows["qid"], "cos": cosine, "bm25": bm25})
        centred[["cos", "bm25"]] -= centred.groupby("qid")[["cos", "bm25"]].transform("mean")
        return rows, centred[["cos", "bm25"]].to_numpy()

    rows, x = features(train_res)
    target = rows[["qid", "docno"]].merge(teacher(train_res)[["qid", "docno", "score"]], on=["qid", "docno"])
    y = target["score"].to_numpy() - target.groupby("qid")["score"].transform("mean").to_numpy()
    weights = np.linalg.lstsq(x, y, rcond=None)[0]
    rows, x = features(test_res)
    return rows.assign(score=x @ weights)


def write_table(rows: list[dict], out: Path) -> None:
    """Write result rows to ``out/results.csv`` and ``out/results.md`` and print them."""
    table = pd.DataFrame(rows)
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
    print(table.to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="collection folder or irds: id (with train/test splits)")
    parser.add_argument("--run", required=True, help="a finished `marginkd quickstart` output folder")
    parser.add_argument("--variants", nargs="+", required=True, help="LAYERS:NEGATIVES:LOSS:STEPS:LR")
    parser.add_argument("--pseudo-queries", type=int, default=FAST.pseudo_queries)
    parser.add_argument("--output", required=True, help="folder for the students, the teacher cache and results")
    parser.add_argument("--layer-choice", choices=["spread", "first"], default="spread",
                        help="which LAYERS of the model a student keeps: mkd.spread_layers (as the quickstart) or the "
                             "first ones")
    args = parser.parse_args()
    variants = [(text, parse_variant(text)) for text in args.variants]
    run, out, seed, r = Path(args.run), Path(args.output), 0, FAST
    out.mkdir(parents=True, exist_ok=True)

    data = mkd.Collection(args.data)
    bm25 = data.bm25(run / f"{data.name}.pisa", num_results=r.k)
    candidates = bm25 % r.k >> data.get_text()
    train_topics, train_qrels = data.topics("train"), data.qrels("train")
    fit_topics, valid_topics = split_validation(train_topics, r.valid_fraction, seed)  # as the quickstart
    fit_res, valid_res, test_res = candidates(fit_topics), candidates(valid_topics), candidates(data.topics("test"))
    fit_qrels = train_qrels[train_qrels["qid"].astype(str).isin(set(fit_topics["qid"].astype(str)))]
    model = mkd.default_model()
    member = load_scorer(model, bi_encoder_kwargs={"frozen_docs": True}, max_length=r.max_length)
    teacher = mkd.Ensemble([mkd.FirstStageScore(), member], normalize="zscore")
    teacher.load_weights(run / "teacher" / FUSION_FILE)
    method = "title" if data.has_titles() else "first_sentence"
    pq = mkd.pseudo_queries(data, method, num=args.pseudo_queries, seed=seed)
    train_res = pd.concat([fit_res, candidates(pq[["qid", "query"]])], ignore_index=True)
    test_qrels = data.qrels("test")
    teacher_ndcg = evaluate_ndcg10(teacher(test_res), test_qrels)
    rows = [{"variant": "BM25", "last": evaluate_ndcg10(test_res, test_qrels)},
            {"variant": "teacher", "last": teacher_ndcg}]
    reference = evaluate_ndcg10(linear_mix_reference(member, teacher, train_res, test_res), test_qrels)
    rows.append({"variant": "teacher's query encoder, students' linear mix", "last": reference,
                 "last % teacher": 100 * reference / teacher_ndcg})
    print(f"BM25 {rows[0]['last']:.4f}, teacher {teacher_ndcg:.4f}, linear mix {reference:.4f}", flush=True)
    for text, v in variants:
        torch.manual_seed(seed)
        depth = len(layer_list(member.model.encoder))
        keep = mkd.spread_layers(depth, v["layers"]) if args.layer_choice == "spread" else v["layers"]
        student = mkd.DotEncoder.from_pretrained(model, num_layers=keep, frozen_docs=True,
                                                 first_stage="zscore", max_length=r.max_length)
        student.share_doc_vectors(member.doc_vectors)  # the same frozen document vectors as the teacher's member
        folder = out / text.replace(":", "_")
        started = time.time()
        distiller = mkd.Distiller(student, teacher, loss=LOSSES[v["loss"]](), epochs=v["steps"], max_steps=v["steps"],
                                  batch_size=r.batch_size, lr=v["lr"], head_lr=r.mix_lr, num_negatives=v["negatives"],
                                  seed=seed, eval_steps=max(v["steps"] // 6, 1), save_steps=max(v["steps"] // 3, 1),
                                  output_dir=folder, unjudged="teacher", cache_dir=out / "teacher_cache",
                                  select_best=False)
        distiller.fit(train_res, fit_qrels, valid_res, train_qrels)
        seconds = time.time() - started
        last = evaluate_ndcg10(student(test_res), test_qrels)
        load_model(student.model, str(folder / "best" / "model.safetensors"))
        best = evaluate_ndcg10(student(test_res), test_qrels)
        row = {"variant": text, "last": last, "best": best, "last % teacher": 100 * last / teacher_ndcg,
               "best % teacher": 100 * best / teacher_ndcg,
               "best step": max(distiller.validation, key=lambda e: e["ndcg@10"])["step"],
               "train seconds": seconds}
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_table(rows, out)


if __name__ == "__main__":
    main()
