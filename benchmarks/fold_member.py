"""The label-aware teacher's member: the model fine-tuned on all the fitting queries (the quickstart's) against the mean
of its fold models (``CrossFitted``), which the teacher's choice trains anyway.

Offline, on a finished ``marginkd quickstart`` output folder whose teacher is the label-aware one (its fold models
and its member on disk): rebuilds the run's splits and candidates from the settings in ``teacher/teacher.json``, then
ranks the test queries with

- the teacher as chosen: BM25 + zero-shot model + member, the weights of ``teacher.json``;
- the fold models' mean as the member instead, its weights fitted on every judged query (the fitting queries scored
  out of fold, the validation queries), as ``choose_teacher`` fits them for a CrossFitted member;
- the same with the weights fitted on the validation queries alone (as today's member's);
- the member alone and the fold models' mean alone (each mixes in BM25 as trained);

and writes ``fold_member.md`` (nDCG@10, paired t-test against the teacher as chosen) to ``--results``. Were the fold
models' mean as good, the member's training (about a sixth of a paragraph-long run) could go.

    python benchmarks/fold_member.py --data ../shared/data/cranfield --output runs/cranfield --results DIR
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pyterrier as pt

from pyterrier_marginkd.data.collection import Collection
from pyterrier_marginkd.models.crossfit import CrossFitted
from pyterrier_marginkd.models.dot import DotEncoder
from pyterrier_marginkd.models.ensemble import Ensemble, FirstStageScore
from pyterrier_marginkd.models.io import load_scorer
from pyterrier_marginkd.quickstart.recipe import Recipe
from pyterrier_marginkd.quickstart.stages import split_validation
from pyterrier_marginkd.report import markdown_table
from pyterrier_marginkd.training.teachers import assign_folds, choose_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the collection the quickstart ran on")
    parser.add_argument("--output", required=True, type=Path, help="the quickstart's output folder")
    parser.add_argument("--results", type=Path, help="where fold_member.md goes (default: <output>/report)")
    args = parser.parse_args()
    saved = json.loads((args.output / "teacher" / "teacher.json").read_text())
    settings, choice = saved["settings"], saved["choice"]
    if choice["chosen"] != "label-aware":
        raise SystemExit(f"{args.output}: the zero-shot teacher was chosen; there is no member to compare")
    fold_dirs = sorted(args.output.glob("teacher-tuned-fold*of*"))
    if len(fold_dirs) < 2:
        raise SystemExit(f"{args.output}: no fold models (teacher-tuned-fold*of*)")
    folds = int(re.search(r"of(\d+)$", fold_dirs[0].name).group(1))
    recipe = Recipe.preset(True)
    seed, k = settings["seed"], settings["k"]
    collection = Collection(args.data)
    if str(Path(settings["data"]).resolve()) != str(Path(args.data).resolve()):
        raise SystemExit(f"{args.output} was made from {settings['data']}, not {args.data}")
    bm25 = collection.bm25(args.output / f"{collection.name}.pisa", num_results=k)
    train, qrels = collection.topics(settings["train_split"]), collection.qrels(settings["train_split"])
    test, test_qrels = collection.topics("test"), collection.qrels("test")
    fit, valid = split_validation(train, recipe.valid_fraction, seed)  # as the quickstart
    candidates = bm25 % k >> collection.get_text()
    fit_res, valid_res, test_res = candidates(fit), candidates(valid), candidates(test)
    fit_qrels = qrels[qrels["qid"].astype(str).isin(set(fit["qid"].astype(str)))]

    kwargs = {"max_length": settings["max_length"]}
    zero_shot = DotEncoder.from_pretrained(settings["teachers"][0], frozen_docs=True,
                                           query_max_length=settings.get("query_max_length"), **kwargs)
    shared = zero_shot.doc_vectors  # one set of frozen document vectors for every model

    def saved_model(folder: Path) -> DotEncoder:
        return load_scorer(folder / "student").share_doc_vectors(shared)

    member = saved_model(args.output / "teacher-tuned")
    fold_models = [saved_model(args.output / f"teacher-tuned-fold{i + 1}of{folds}") for i in range(folds)]
    qids = sorted(set(fit_res["qid"].astype(str)) & set(fit_qrels["qid"].astype(str)))
    mean_of_folds = CrossFitted(fold_models, assign_folds(qids, folds, seed))
    zero = Ensemble([FirstStageScore(), zero_shot], choice["zero_shot_weights"], normalize="zscore")
    chosen = Ensemble([FirstStageScore(), zero_shot, member], choice["label_aware_weights"], normalize="zscore")
    _, on_all = choose_teacher(zero, mean_of_folds, valid_res, qrels, fit_res=fit_res, fit_qrels=fit_qrels,
                               seed=seed)
    folds_all = Ensemble([FirstStageScore(), zero_shot, mean_of_folds], on_all["label_aware_weights"],
                         normalize="zscore")
    folds_valid = Ensemble([FirstStageScore(), zero_shot, mean_of_folds], normalize="zscore").fit(valid_res, qrels)
    systems = {
        f"teacher as chosen (member, weights {chosen.weights})": chosen,
        f"fold models' mean as the member (every judged query, weights {folds_all.weights})": folds_all,
        f"fold models' mean as the member (validation queries, weights {folds_valid.weights})": folds_valid,
        "member alone": member,
        "fold models' mean alone": mean_of_folds,
        f"zero-shot teacher (weights {zero.weights})": zero,
    }
    runs = [pt.model.add_ranks(scorer(test_res)) for scorer in systems.values()]
    table = pt.Experiment([*runs, test_res], test, test_qrels, [pt.measures.nDCG @ 10], names=[*systems, "BM25"],
                          baseline=0)
    results = args.results or args.output / "report"
    results.mkdir(parents=True, exist_ok=True)
    text = (f"{args.output.name}: {len(test)} test queries, BM25 top {k}; {folds} fold models; p: paired t-test "
            f"against the teacher as chosen.\n\n{markdown_table(pd.DataFrame(table))}\n")
    (results / "fold_member.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
