"""Quickstart recipes compared over collections and seeds: which defaults win on average, not on one collection.

Runs ``marginkd quickstart`` once per (collection, seed, variant) — the variants of one (collection, seed) one after
another, those with the same teacher settings in one output folder, so they share the index, the teacher cache, the
fine-tuned teacher member and the label-only student — with ``--jobs`` (collection, seed) streams at once, and
writes every report row to
``runs.csv`` and, per variant, the means over collections and seeds to ``summary.md`` / ``summary.csv``:
teacher, each student, the label-only student, students as a share of the teacher and minus their label-only twin.

    python benchmarks/recipes.py --data ../shared/data/cranfield ../shared/data/vaswani --seeds 0 1 \\
        --variants zero-shot aware aware+labels --output runs/recipes --jobs 2
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

#: variant name -> quickstart flags
VARIANTS = {
    "default": [],
    "zero-shot": ["--zero-shot-teacher", "--label-weight", "0"],
    "zero-shot+labels": ["--zero-shot-teacher", "--label-weight", "1"],
    "aware": ["--teacher-folds", "1", "--teacher-steps", "300", "--label-weight", "0"],
    "aware+labels": ["--teacher-folds", "1", "--teacher-steps", "300", "--label-weight", "1"],
    "xfit": ["--teacher-folds", "2", "--teacher-steps", "150", "--label-weight", "0"],
    "xfit+labels0.3": ["--teacher-folds", "2", "--teacher-steps", "150", "--label-weight", "0.3"],
    "xfit+labels1": ["--teacher-folds", "2", "--teacher-steps", "150", "--label-weight", "1"],
    # alignment distillation (QueryAlignment) of the students' query vectors with the full model's
    "align-first": ["--align-steps", "300"],
    "align-beside": ["--align-weight", "1"],
    "align-both": ["--align-steps", "300", "--align-weight", "1"],
}
#: flags (each with one value) that change the students only
STUDENT_FLAGS = ("--label-weight", "--align-weight", "--align-steps")


def teacher_flags(variant: str) -> list[str]:
    """The variant's flags that change the teacher (all but the students' settings): variants that share them
    share an output folder (and so the teacher); others get their own."""
    flags = VARIANTS[variant]
    return [f for i, f in enumerate(flags) if f not in STUDENT_FLAGS and (i == 0 or flags[i - 1] not in STUDENT_FLAGS)]


def run_stream(data: str, seed: int, variants: list[str], args: argparse.Namespace) -> list[pd.DataFrame]:
    """The variants of one (collection, seed), in order; each one's report rows (or none, when it failed)."""
    name = Path(data).name
    rows = []
    for variant in variants:
        teacher = "".join(f.strip("-") for f in teacher_flags(variant)) or "default"
        folder = Path(args.output) / f"{name}-s{seed}" / teacher
        folder.mkdir(parents=True, exist_ok=True)
        log = Path(args.output) / f"{name}-s{seed}-{variant}.log"
        command = [sys.executable, "-m", "pyterrier_marginkd.cli", "quickstart", "--data", data, "--output",
                   str(folder), "--seed", str(seed), "--student-layers", *map(str, args.layers), "--quantize", "none",
                   *(["--fast"] if not args.full else []), *VARIANTS[variant], *args.extra]
        started = time.time()
        with open(log, "w") as out:
            code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.time() - started
        print(f"{name} seed {seed} {variant}: exit {code} in {seconds:.0f} s ({log})", flush=True)
        if code != 0:
            continue
        table = pd.read_csv(folder / "report" / "results.csv")
        versus = pd.read_csv(folder / "report" / "results_vs_labels.csv").set_index("name")
        table = table.assign(collection=name, seed=seed, variant=variant, seconds=seconds,
                             p_vs_bm25=table["nDCG@10 p-value"],
                             p_vs_labels=table["name"].map(versus["nDCG@10 p-value"]))
        rows.append(table[["collection", "seed", "variant", "name", "nDCG@10", "RR@10", "p_vs_bm25", "p_vs_labels",
                           "seconds"]])
        pd.concat(rows).to_csv(folder.parent / "runs.csv", index=False)
    return rows


def role(name: str) -> str:
    """A report row's role, the same across variants: BM25, teacher, student L<k>, labels only."""
    if name.startswith("teacher"):
        return "teacher"
    if "labels only" in name:
        return "labels only"
    return name.split(" (")[0]


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant and role: nDCG@10 per collection (mean over seeds) and the mean over collections; students also as
    a share of the teacher and minus the label-only student."""
    runs = runs.assign(role=runs["name"].map(role))
    key = ["collection", "seed", "variant"]
    teacher = runs[runs["role"] == "teacher"].set_index(key)["nDCG@10"]
    labels = runs[runs["role"] == "labels only"].set_index(key)["nDCG@10"]
    indexed = runs.set_index(key)
    runs = runs.assign(of_teacher=(indexed["nDCG@10"] / teacher.reindex(indexed.index)).to_numpy(),
                       minus_labels=(indexed["nDCG@10"] - labels.reindex(indexed.index)).to_numpy())
    per_collection = runs.groupby(["variant", "role", "collection"])[["nDCG@10", "of_teacher", "minus_labels"]].mean()
    wide = per_collection["nDCG@10"].unstack("collection")
    wide["mean"] = wide.mean(axis=1)
    wide["of teacher (mean)"] = per_collection["of_teacher"].groupby(["variant", "role"]).mean()
    wide["minus labels only (mean)"] = per_collection["minus_labels"].groupby(["variant", "role"]).mean()
    return wide.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", required=True, help="collection folders or irds: ids")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=["zero-shot", "aware", "aware+labels"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--layers", nargs="+", type=int, default=[2, 4], help="student layers")
    parser.add_argument("--full", action="store_true", help="the full recipe instead of --fast")
    parser.add_argument("--jobs", type=int, default=1, help="(collection, seed) streams run at once")
    parser.add_argument("--output", default="runs/recipes")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more quickstart flags (last)")
    args = parser.parse_args()
    Path(args.output).mkdir(parents=True, exist_ok=True)
    streams = [(data, seed) for seed in args.seeds for data in args.data]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda s: run_stream(*s, args.variants, args), streams))
    rows = [table for stream in results for table in stream]
    if not rows:
        sys.exit("no run finished")
    runs = pd.concat(rows, ignore_index=True)
    runs.to_csv(Path(args.output) / "runs.csv", index=False)
    summary = summarize(runs)
    summary.to_csv(Path(args.output) / "summary.csv", index=False)
    (Path(args.output) / "summary.md").write_text(summary.to_markdown(index=False, floatfmt=".4f") + "\n")
    print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
