"""Training throughput of the DotEncoder, ColBERT, PreTT and TK students: our fast path (parallel dropout masks, BERT
and TK self-attention without a noise tensor; ``models/fast_training.py``) against the same Distiller through
torch's own paths, and, for the bi-encoder, sentence-transformers' ``SentenceTransformerTrainer`` with
``MarginMSELoss`` — run by hand, not part of CI.

``--systems bf16`` adds our fast path under bfloat16 autocast (``amp=True``; CPUs with native bfloat16, CUDA),
``eager-bf16`` torch's own paths under the same autocast.

``--frozen-docs`` trains the quickstart's kind of DotEncoder instead: ``--layers`` layers of all-MiniLM-L6-v2 as a
query encoder against the whole model's frozen document vectors (computed before the timed steps), and
``--query-words N`` follows each query by the first N words of its relevant document, as
``paragraph_queries.py`` makes paragraph-long queries::

    python benchmarks/train_speed_students.py --architectures DotEncoder --frozen-docs --layers 6 \
        --query-words 150 --batch-size 8 --num-negatives 49 --systems bf16 eager-bf16 --threads 2 --repeats 2 \
        --output benchmarks/results/train-speed-students/frozen-paragraphs-threads2

Every system trains the same student (the first ``--layers`` layers of all-MiniLM-L6-v2, TK that many layers of its
own over MiniLM's token embeddings; the DotEncoder with mean pooling and dot product, as the sentence-transformers
model built from the same folder) on the same Cranfield groups as ``train_speed.py`` (a train query, a judged-relevant
document, random other documents, word-overlap teacher scores), Margin-MSE, the same batch, max length, AdamW settings
and torch threads. Each run is a fresh process; runs alternate between the systems ``--repeats`` times and the median
groups/s is reported::

    python benchmarks/train_speed_students.py --threads 2 --steps 10 --repeats 3 \\
        --output benchmarks/results/train-speed-students/threads2
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import cpu_name, load_average  # noqa: E402
from train_memory import _status_mib, reset_peak, write_report  # noqa: E402
from train_speed import InMemoryGroups, StepClock, timed_steps, train_with_st, training_groups  # noqa: E402

ARCHITECTURES = ("DotEncoder", "ColBERT", "PreTT", "TK")
#: ours: the Distiller with the fast path; bf16: the same under bfloat16 autocast (``amp=True``: native bfloat16 CPUs
#: and CUDA); eager: the same Distiller through torch's own dropout and attention; st: sentence-transformers' trainer
#: (the bi-encoder only)
SYSTEMS = ("ours", "bf16", "eager", "eager-bf16", "st")


def make_student(architecture: str, folder: Path, max_length: int, frozen_docs: bool = False, layers: int = 2):
    import pyterrier_marginkd as mkd

    if frozen_docs:  # the quickstart's students: the checkpoint's own settings (mean pooling, unit vectors)
        return mkd.DotEncoder.from_pretrained(mkd.default_model(), num_layers=layers, frozen_docs=True,
                                              max_length=max_length)
    if architecture == "DotEncoder":
        return mkd.DotEncoder.from_pretrained(folder, max_length=max_length)
    return getattr(mkd, architecture).from_pretrained(folder, max_length=max_length)


def train_ours(architecture: str, folder: Path, groups: list[dict[str, Any]], args: argparse.Namespace,
               clock: StepClock, work: Path, fast: bool, amp: bool = False) -> None:
    """Margin-MSE with our Distiller on the groups in memory; ``fast=False`` turns the fast path off, ``amp=True``
    trains under bfloat16 autocast."""
    import pyterrier_marginkd as mkd
    from pyterrier_marginkd.data import Group
    from pyterrier_marginkd.models import two_sided

    if not fast:
        two_sided.fast_training = lambda model: contextlib.nullcontext()
    student = make_student(architecture, folder, args.max_length, args.frozen_docs, args.layers)
    if args.frozen_docs:  # the frozen document vectors, before any timed step (an index would hold them)
        student.precompute_docs(list(dict.fromkeys(t for g in groups for t in g["texts"])))
    distiller = mkd.Distiller(student, loss=mkd.losses.MarginMSE(), batch_size=args.batch_size,
                              num_negatives=args.num_negatives, lr=args.lr, warmup_ratio=0.1, weight_decay=0.01,
                              max_grad_norm=1.0, max_steps=args.warmup + args.steps, save_steps=10**6,
                              teacher_scale=None, seed=0, amp=amp, output_dir=work / "ours")
    timed_steps(clock)
    distiller.fit_groups(InMemoryGroups([
        Group(qid=str(i), query=g["query"], docnos=[f"{i}-{j}" for j in range(len(g["texts"]))], texts=g["texts"],
              labels=None, teacher=g["scores"]) for i, g in enumerate(groups)]))


def train_st(folder: Path, groups: list[dict[str, Any]], args: argparse.Namespace, clock: StepClock,
             work: Path) -> None:
    """Margin-MSE with sentence-transformers' SentenceTransformerTrainer (mean pooling, dot product)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    encoder = Transformer(str(folder), max_seq_length=args.max_length)
    model = SentenceTransformer(modules=[encoder, Pooling(encoder.get_word_embedding_dimension(), "mean")],
                                device="cpu")
    if args.num_negatives != 1:
        raise SystemExit("the sentence-transformers system takes one negative per group (MarginMSELoss's margin)")
    columns = {"query": [g["query"] for g in groups], "positive": [g["texts"][0] for g in groups],
               "negative": [g["texts"][1] for g in groups],
               "label": [g["scores"][0] - g["scores"][1] for g in groups]}
    train_with_st(SentenceTransformerTrainer, SentenceTransformerTrainingArguments, model, Dataset.from_dict(columns),
                  MarginMSELoss(model), args, clock, work)


def measure(architecture: str, system: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``system`` on the ``architecture`` student in this process; groups/s and memory."""
    import torch

    torch.set_num_threads(args.threads)
    groups = training_groups(args.data, (args.warmup + args.steps) * args.batch_size, args.num_negatives)
    if args.query_words:  # paragraph-long queries: each followed by the first words of its relevant document
        groups = [{**g, "query": f"{g['query']} {' '.join(g['texts'][0].split()[:args.query_words])}"}
                  for g in groups]
    clock = StepClock()
    folder = Path(args.students) / architecture
    with tempfile.TemporaryDirectory(prefix="train-speed-students-") as tmp:
        reset_peak()
        before = _status_mib("VmRSS")
        started = time.perf_counter()
        if system == "st":
            train_st(folder, groups, args, clock, Path(tmp))
        else:
            train_ours(architecture, folder, groups, args, clock, Path(tmp), fast=not system.startswith("eager"),
                       amp=system.endswith("bf16"))
        seconds = time.perf_counter() - started
        peak = _status_mib("VmHWM")
    return {"architecture": architecture, "system": system, "steps": len(clock.ends),
            "groups_per_s": clock.groups_per_second(args.warmup, args.batch_size), "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak, 1), "added_by_training_mib": round(peak - before, 1),
            "torch_threads": torch.get_num_threads()}


def save_students(folder: Path, architectures: list[str], layers: int, max_length: int,
                  frozen_docs: bool = False) -> None:
    """The starting students, saved once so that every system loads the same weights (new heads seeded)."""
    import torch

    import pyterrier_marginkd as mkd

    for architecture in architectures if not frozen_docs else []:  # frozen: every run loads the checkpoint
        torch.manual_seed(0)
        kwargs = {"pooling": "mean"} if architecture == "DotEncoder" else {}
        getattr(mkd, architecture).from_pretrained(mkd.default_model(), num_layers=layers, max_length=max_length,
                                                   **kwargs).save_pretrained(folder / architecture)


def systems_of(architecture: str, wanted: list[str], frozen_docs: bool = False) -> list[str]:
    # sentence-transformers trains both sides of a bi-encoder: no counterpart of a frozen-document one
    return [s for s in wanted if s != "st" or (architecture == "DotEncoder" and not frozen_docs)]


def markdown(report: dict[str, Any]) -> str:
    s, env = report["settings"], report["environment"]
    kind = ("query encoders against frozen document vectors" if s.get("frozen_docs") else "students")
    queries = (f", each query followed by {s['query_words']} words of its relevant document"
               if s.get("query_words") else "")
    lines = [f"Margin-MSE training of {s['layers']}-layer MiniLM {kind} on Cranfield groups (1 positive + "
             f"{s['num_negatives']} negative(s){queries}), batch {s['batch_size']} groups, max length "
             f"{s['max_length']}, "
             f"{s['threads']} torch thread(s), {s['steps']} timed steps after {s['warmup']} warm-up steps, median of "
             f"{s['repeats']} alternating runs; torch {env['torch']}, sentence-transformers "
             f"{env['sentence_transformers']}, {env['cpu_count']} CPUs ({env['cpu']}); load average at start / end "
             f"{env['load_start']} / {env['load_end']} (compare within this table).", "",
             "| student | ours (fast path) groups/s | torch's paths groups/s | sentence-transformers groups/s | "
             "ours / torch's | ours / ST | peak RSS ours / torch's / ST (MiB) | ours bf16 groups/s | bf16 / ours | "
             "torch's paths bf16 groups/s | ours bf16 / torch's bf16 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cell(row: dict[str, Any], key: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(row[key]) if key in row else "–"

    for row in report["summary"]:
        lines.append(f"| {row['architecture']} L{s['layers']} | {cell(row, 'ours_groups_per_s')} | "
                     f"{cell(row, 'eager_groups_per_s')} | {cell(row, 'st_groups_per_s')} | "
                     f"{cell(row, 'ours_vs_eager', '**{:.2f}x**')} | {cell(row, 'ours_vs_st', '**{:.2f}x**')} | "
                     f"{cell(row, 'ours_peak_rss_mib', '{:.0f}')} / {cell(row, 'eager_peak_rss_mib', '{:.0f}')} / "
                     f"{cell(row, 'st_peak_rss_mib', '{:.0f}')} | {cell(row, 'bf16_groups_per_s')} | "
                     f"{cell(row, 'bf16_vs_ours', '**{:.2f}x**')} | {cell(row, 'eager-bf16_groups_per_s')} | "
                     f"{cell(row, 'bf16_vs_eager_bf16', '**{:.2f}x**')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--architectures", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="groups per optimizer step")
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each system")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--frozen-docs", action="store_true",
                        help="DotEncoder: a query encoder against the whole model's frozen document vectors")
    parser.add_argument("--query-words", type=int, default=0,
                        help="follow each query by this many words of its relevant document (paragraph queries)")
    parser.add_argument("--output", default=None, help="write the report to OUTPUT.json and OUTPUT.md")
    parser.add_argument("--students", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args)))
        return
    import sentence_transformers
    import torch

    load_start = load_average()
    runs = []
    with tempfile.TemporaryDirectory(prefix="train-speed-students-") as students:
        save_students(Path(students), args.architectures, args.layers, args.max_length, args.frozen_docs)
        for architecture in args.architectures:
            systems = systems_of(architecture, args.systems, args.frozen_docs)
            for repeat in range(args.repeats):
                for system in systems if repeat % 2 == 0 else systems[::-1]:
                    command = [sys.executable, __file__, *sys.argv[1:], "--students", students,
                               "--one", architecture, system]
                    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
                    if done.returncode != 0:
                        sys.exit(f"{architecture} {system} failed (exit code {done.returncode})")
                    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(json.dumps(runs[-1]), flush=True)
    summary = []
    for architecture in args.architectures:
        row: dict[str, Any] = {"architecture": architecture}
        for system in systems_of(architecture, args.systems, args.frozen_docs):
            mine = [r for r in runs if r["system"] == system and r["architecture"] == architecture]
            row[f"{system}_groups_per_s"] = statistics.median(r["groups_per_s"] for r in mine)
            row[f"{system}_peak_rss_mib"] = max(r["peak_rss_mib"] for r in mine)
            row[f"{system}_runs"] = [round(r["groups_per_s"], 2) for r in mine]
        for other in ("eager", "st"):
            if "ours_groups_per_s" in row and f"{other}_groups_per_s" in row:
                row[f"ours_vs_{other}"] = row["ours_groups_per_s"] / row[f"{other}_groups_per_s"]
        if "ours_groups_per_s" in row and "bf16_groups_per_s" in row:
            row["bf16_vs_ours"] = row["bf16_groups_per_s"] / row["ours_groups_per_s"]
        if "bf16_groups_per_s" in row and "eager-bf16_groups_per_s" in row:
            row["bf16_vs_eager_bf16"] = row["bf16_groups_per_s"] / row["eager-bf16_groups_per_s"]
        summary.append(row)
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("one", "students", "output")},
              "environment": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                              "cpu": cpu_name(), "cpu_count": os.cpu_count(), "load_start": load_start,
                              "load_end": load_average()},
              "runs": runs, "summary": summary}
    text = markdown(report)
    print(text)
    if args.output:
        write_report(report, text, args.output)


if __name__ == "__main__":
    main()
