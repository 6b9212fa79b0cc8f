"""The Margin-MSE paper's table on our collections: every student architecture distilled from the quickstart's
teacher and trained on labels alone, side by side, per collection and on average (run by hand; not part of CI).

Each ``--data`` collection goes through ``marginkd quickstart --fast --architectures DotEncoder CrossEncoder ColBERT
PreTT TK`` (``--output <output>/<collection>``; a folder from an earlier quickstart with the same settings is
reused: only what is missing trains). The table takes, per architecture at the smallest ``--student-layers``, the
distilled student and its label-only twin from each collection's report: nDCG@10 and RR@10, parameters, pairs/s as
evaluated (DotEncoder from its stored document vectors, ColBERT and PreTT from document stores built ahead of the
queries, CrossEncoder and TK on the fly), the int8 students' pairs/s as a multiple of the teacher's, and the paired
t-test against the twin (Holm per architecture, from ``results_vs_labels.csv``). Writes
``<output>/architectures.md`` and ``architectures.csv``.

    python benchmarks/architectures.py --data ../shared/data/cranfield ../shared/data/vaswani --output runs/paper

``--reports NAME=FOLDER ...`` builds the table from reports that such runs already wrote (a quickstart ``report/``
folder, or a copy of it under ``benchmarks/results/``), without training anything.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pyterrier_marginkd.quickstart import quickstart
from pyterrier_marginkd.quickstart.recipe import ARCHITECTURES
from pyterrier_marginkd.quickstart.run import DEPLOYED_FILE, VS_LABELS_FILE


def architecture_rows(report: Path, collection: str, layers: int) -> pd.DataFrame:
    """One row per architecture and training (distilled / labels only) of a quickstart report with every
    architecture; a missing row is an error (a model left out of the table is a bug)."""
    results = pd.read_csv(report / "results.csv").set_index("name")
    versus = pd.read_csv(report / VS_LABELS_FILE).set_index("name")
    deployed = pd.read_csv(report / DEPLOYED_FILE).set_index("name") if (report / DEPLOYED_FILE).exists() else None
    rows = []
    for architecture in ARCHITECTURES:
        prefix = f"student {architecture} L{layers} ("
        names = [n for n in results.index if n.startswith(prefix)]
        twin = f"{prefix}labels only)"
        distilled = [n for n in names if n != twin]
        if twin not in names or len(distilled) != 1:
            raise ValueError(f"{report}: expected {twin!r} and one distilled {architecture} L{layers} row, found "
                             f"{names}; was the quickstart run with --architectures {' '.join(ARCHITECTURES)}?")
        for training, name in (("distilled", distilled[0]), ("labels only", twin)):
            row = results.loc[name]
            int8 = None
            if deployed is not None:
                quantized = name[:-1] + ", int8)"
                int8 = deployed.loc[quantized, "x teacher pairs/s"] if quantized in deployed.index else None
            rows.append({"collection": collection, "architecture": architecture, "training": training,
                         "row": name, "nDCG@10": row["nDCG@10"], "RR@10": row["RR@10"],
                         "params (M)": row["params"] / 1e6, "pairs/s": row["pairs/s"],
                         "int8 x teacher pairs/s": int8,
                         "p vs twin (nDCG@10, Holm)": (versus.loc[name, "nDCG@10 p-value corrected"]
                                                       if training == "distilled" else None)})
    teacher = [n for n in results.index if n.startswith("teacher")]
    for name in ["BM25", *teacher]:
        rows.append({"collection": collection, "architecture": name.split(" (")[0], "training": "",
                     "row": name, "nDCG@10": results.loc[name, "nDCG@10"], "RR@10": results.loc[name, "RR@10"],
                     "pairs/s": results.loc[name, "pairs/s"]})
    return pd.DataFrame(rows)


def paper_table(rows: pd.DataFrame) -> pd.DataFrame:
    """nDCG@10 of each architecture's distilled student and twin per collection and their mean, the distilled
    student's gain over its twin, and p per collection."""
    students = rows[rows["training"] != ""]
    wide = students.pivot_table(index=["architecture", "training"], columns="collection", values="nDCG@10")
    wide["mean"] = wide.mean(axis=1)
    out = []
    for architecture in ARCHITECTURES:
        distilled, twin = wide.loc[(architecture, "distilled")], wide.loc[(architecture, "labels only")]
        entry = {"architecture": architecture}
        for collection in [c for c in wide.columns if c != "mean"]:
            p = students[(students["architecture"] == architecture) & (students["collection"] == collection)
                         & (students["training"] == "distilled")]["p vs twin (nDCG@10, Holm)"].iloc[0]
            entry[collection] = f"{distilled[collection]:.3f} / {twin[collection]:.3f} (p {p:.2g})"
        entry["mean: distilled / labels only"] = f"{distilled['mean']:.3f} / {twin['mean']:.3f}"
        entry["gain"] = f"{distilled['mean'] - twin['mean']:+.3f}"
        out.append(entry)
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["../shared/data/cranfield", "../shared/data/vaswani"])
    parser.add_argument("--output", default="runs/paper")
    parser.add_argument("--student-layers", type=int, default=2, help="the size every architecture is trained at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reports", nargs="+", metavar="NAME=FOLDER",
                        help="build the table from these existing quickstart reports instead of running --data")
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    frames = []
    if args.reports:
        for entry in args.reports:
            name, sep, folder = entry.partition("=")
            if not sep or not name or not folder:
                parser.error(f"--reports takes NAME=FOLDER entries, got {entry!r}")
            if not (Path(folder) / "results.csv").is_file():
                parser.error(f"--reports {entry!r}: {folder} holds no results.csv (a quickstart report folder)")
            frames.append(architecture_rows(Path(folder), name, args.student_layers))
    else:
        for data in args.data:
            name = Path(str(data).rstrip("/")).name.replace("irds:", "").replace("/", "-")
            quickstart(data, output / name, fast=True, student_layers=(args.student_layers,), seed=args.seed,
                       architectures=ARCHITECTURES)
            frames.append(architecture_rows(output / name / "report", name, args.student_layers))
    rows = pd.concat(frames, ignore_index=True)
    rows.to_csv(output / "architectures.csv", index=False)
    table = paper_table(rows)
    text = (f"Each architecture at {args.student_layers} layers: nDCG@10 distilled / labels only (p of the paired "
            "t-test against the label-only twin, Holm per architecture), `--fast`, seed "
            f"{args.seed}.\n\n{table.to_markdown(index=False)}\n\nEvery row (pairs/s as evaluated; int8 as deployed, "
            f"a multiple of the teacher's pairs/s):\n\n{rows.round(4).to_markdown(index=False)}\n")
    (output / "architectures.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
