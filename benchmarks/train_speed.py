"""Margin-MSE training throughput against sentence-transformers: the same cross-encoder student (the first 2 or all 6
layers of all-MiniLM-L6-v2, one new score head, identical starting weights) trained on the same groups with our
Distiller and with sentence-transformers' ``CrossEncoderTrainer`` + ``MarginMSELoss`` — run by hand, not part of CI.

Both see the same training file of Cranfield groups (a train query, one of its judged-relevant documents, random
other documents as negatives, and a teacher score per document), the same batch (groups per optimizer step), max
length, AdamW settings (learning rate, 10% warm-up, weight decay, gradient clipping at 1), torch threads and
starting weights. Each (system, model) trains in a fresh process, so its peak RSS is its own. groups/s counts the
steps after ``--warmup`` steps, from the end of the last warm-up step to the end of the last step (wall clock,
data loading included); runs alternate between the systems ``--repeats`` times and the median is reported::

    python benchmarks/train_speed.py --threads 2 --steps 10 --repeats 3 --output benchmarks/results/train-speed/threads2

``--systems bf16 eager-bf16`` compares our fast path with torch's own dropout and attention, both under bfloat16
autocast (CPUs with native bfloat16, CUDA); sentence-transformers is not run then::

    python benchmarks/train_speed.py --threads 2 --layers 2 --batch-size 4 --num-negatives 3 --systems bf16 \
        eager-bf16 --repeats 2 --output benchmarks/results/train-speed/bf16-threads2

The teacher scores are a word-overlap count (computed once, stored with the groups): neither system runs a teacher,
as when training from a teacher-score file. Our Distiller reads the groups from a teacher-score file (``fit_file``,
text version; one negative per group) or, with more negatives, from the same groups in memory.
"""
from __future__ import annotations

import argparse
import json
import os
import random
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

#: ours: our Distiller (fast path); st: sentence-transformers; bf16: ours under bfloat16 autocast (native bfloat16
#: CPUs, CUDA); eager-bf16: the same without the parallel dropout masks and attention (torch's own, under autocast)
SYSTEMS = ("ours", "st")
EXTRA_SYSTEMS = ("bf16", "eager-bf16")


def training_groups(data: str, num_groups: int, num_negatives: int, seed: int = 0) -> list[dict[str, Any]]:
    """``num_groups`` groups of a Cranfield train query, a judged-relevant document and random other documents,
    each document with a word-overlap teacher score."""
    import pyterrier_marginkd as mkd

    collection = mkd.Collection(data)
    texts = {d["docno"]: d["text"] for d in collection.docs_iter()}
    topics, qrels = collection.topics("train"), collection.qrels("train")
    queries = dict(zip(topics["qid"].astype(str), topics["query"]))
    relevant = qrels[qrels["label"] > 0]
    relevant = relevant.assign(qid=relevant["qid"].astype(str), docno=relevant["docno"].astype(str))
    judged = relevant.groupby("qid")["docno"].apply(set).to_dict()
    rng = random.Random(seed)
    pairs = list(zip(relevant["qid"], relevant["docno"]))
    rng.shuffle(pairs)
    docnos = list(texts)

    def overlap(query: str, text: str) -> float:
        words = set(text.lower().split())
        return float(sum(w in words for w in query.lower().split()))

    groups = []
    for qid, positive in (pairs * (num_groups // len(pairs) + 1))[:num_groups]:
        negatives = []
        while len(negatives) < num_negatives:
            docno = rng.choice(docnos)
            if docno not in judged[qid] and docno not in negatives:
                negatives.append(docno)
        documents = [texts[positive]] + [texts[d] for d in negatives]
        groups.append({"query": queries[qid], "texts": documents,
                       "scores": [overlap(queries[qid], t) for t in documents]})
    return groups


class StepClock:
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self):
        self.ends: list[float] = []

    def tick(self) -> None:
        self.ends.append(time.perf_counter())

    def groups_per_second(self, warmup: int, batch_size: int) -> float:
        timed = self.ends[warmup - 1:] if warmup else self.ends
        return (len(timed) - 1) * batch_size / (timed[-1] - timed[0])


def train_ours(folder: Path, groups: list[dict[str, Any]], args: argparse.Namespace, clock: StepClock,
               work: Path, amp: bool = False, fast: bool = True) -> None:
    """Margin-MSE with our Distiller, from a teacher-score file (one negative) or the groups in memory; ``amp``:
    under bfloat16 autocast; ``fast=False``: torch's own dropout and attention (the first-token last layer kept)."""
    import contextlib

    import pyterrier_marginkd as mkd
    from pyterrier_marginkd.data import Group
    from pyterrier_marginkd.data.scorefiles import format_line
    from pyterrier_marginkd.models import cross_encoder

    if not fast:
        cross_encoder.fast_training = lambda model: contextlib.nullcontext()
    student = mkd.CrossEncoder.from_pretrained(folder, max_length=args.max_length)
    distiller = mkd.Distiller(student, loss=mkd.losses.MarginMSE(), batch_size=args.batch_size,
                              num_negatives=args.num_negatives, lr=args.lr, warmup_ratio=0.1, weight_decay=0.01,
                              max_grad_norm=1.0, max_steps=args.warmup + args.steps, save_steps=10**6,
                              teacher_scale=None, seed=0, amp=amp, output_dir=work / "ours")
    timed_steps(clock)
    if args.num_negatives == 1:
        path = work / "scores.text.tsv"
        with open(path, "w", encoding="utf8") as out:
            for g in groups:
                out.write(format_line(g["scores"][0], g["scores"][1], g["query"], *g["texts"], fmt="text"))
        distiller.fit_file(path)
        return
    source = InMemoryGroups([Group(qid=str(i), query=g["query"], docnos=[f"{i}-{j}" for j in range(len(g["texts"]))],
                                   texts=g["texts"], labels=None, teacher=g["scores"]) for i, g in enumerate(groups)])
    distiller.fit_groups(source)


def timed_steps(clock: StepClock) -> None:
    """Tick ``clock`` at the end of every optimizer step of the Distiller's training loop."""
    from pyterrier_marginkd.training import run

    step = run.optimizer_step

    def timed_step(*a, **kw):
        loss = step(*a, **kw)
        clock.tick()
        return loss

    run.optimizer_step = timed_step


class InMemoryGroups:
    """A group source over a fixed list of groups (with teacher scores), shuffled per epoch."""

    has_teacher_scores = True
    report: dict[str, Any] = {}

    def __init__(self, groups):
        self._groups = groups

    def num_groups(self) -> int:
        return len(self._groups)

    def groups(self, epoch: int):
        order = list(self._groups)
        random.Random(epoch).shuffle(order)
        return order


def train_st(folder: Path, groups: list[dict[str, Any]], args: argparse.Namespace, clock: StepClock,
             work: Path) -> None:
    """Margin-MSE with sentence-transformers' CrossEncoderTrainer and MarginMSELoss."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    model = CrossEncoder(str(folder), num_labels=1, max_length=args.max_length, device="cpu")
    columns: dict[str, list] = {"query": [g["query"] for g in groups]}
    for j in range(args.num_negatives + 1):
        columns["positive" if j == 0 else f"negative_{j}"] = [g["texts"][j] for g in groups]
    columns["label"] = [g["scores"] for g in groups]  # one score per document: the loss takes the margins

    train_with_st(CrossEncoderTrainer, CrossEncoderTrainingArguments, model, Dataset.from_dict(columns),
                  MarginMSELoss(model), args, clock, work)


def train_with_st(trainer_class: type, arguments_class: type, model: Any, dataset: Any, loss: Any,
                  args: argparse.Namespace, clock: StepClock, work: Path) -> None:
    """Train with a sentence-transformers trainer under the benchmark's AdamW settings, ticking ``clock`` at the end
    of every step."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **kw):
            clock.tick()

    training_args = arguments_class(
        output_dir=str(work / "st"), per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps, learning_rate=args.lr, warmup_steps=0.1, weight_decay=0.01,
        max_grad_norm=1.0, save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, logging_strategy="no")
    trainer_class(model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=[Clock()]).train()


def measure(system: str, layers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``system`` on a ``layers``-layer student in this process; groups/s and memory."""
    import torch

    torch.set_num_threads(args.threads)
    groups = training_groups(args.data, (args.warmup + args.steps) * args.batch_size, args.num_negatives)
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        folder = Path(args.students) / f"L{layers}"
        reset_peak()
        before = _status_mib("VmRSS")
        started = time.perf_counter()
        if system == "st":
            train_st(folder, groups, args, clock, Path(tmp))
        else:
            train_ours(folder, groups, args, clock, Path(tmp), amp=system.endswith("bf16"),
                       fast=not system.startswith("eager"))
        seconds = time.perf_counter() - started
        peak = _status_mib("VmHWM")
    return {"system": system, "layers": layers, "steps": len(clock.ends),
            "groups_per_s": clock.groups_per_second(args.warmup, args.batch_size), "seconds": round(seconds, 1),
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "added_by_training_mib": round(peak - before, 1), "torch_threads": torch.get_num_threads()}


def save_students(folder: Path, layers: list[int], max_length: int) -> None:
    """The starting students: the first k layers of all-MiniLM-L6-v2 with one seeded new head, saved as Hugging Face
    folders that both systems load to the same weights."""
    import torch

    import pyterrier_marginkd as mkd

    for k in layers:
        torch.manual_seed(0)
        mkd.CrossEncoder.from_pretrained(mkd.default_model(), num_layers=k, max_length=max_length) \
            .save_pretrained(folder / f"L{k}")


def markdown(report: dict[str, Any]) -> str:
    s, env = report["settings"], report["environment"]
    lines = [f"Margin-MSE training of a MiniLM cross-encoder on Cranfield groups (1 positive + {s['num_negatives']} "
             f"negative(s)), batch {s['batch_size']} groups, max length {s['max_length']}, {s['threads']} torch "
             f"thread(s), {s['steps']} timed steps after {s['warmup']} warm-up steps, median of {s['repeats']} "
             f"alternating runs; torch {env['torch']}, sentence-transformers {env['sentence_transformers']}, "
             f"{env['cpu_count']} CPUs ({env['cpu']}); load average at start / end {env['load_start']} / "
             f"{env['load_end']} (a shared machine: compare within this table).", "",
             "| model | ours groups/s | sentence-transformers groups/s | ours / ST | ours peak RSS (MiB) | ST peak RSS "
             "(MiB) | runs ours | runs ST |", "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for row in report["summary"]:
        lines.append(f"| MiniLM L{row['layers']} | {row['ours_groups_per_s']:.2f} | {row['st_groups_per_s']:.2f} | "
                     f"**{row['ratio']:.2f}x** | {row['ours_peak_rss_mib']:.0f} | {row['st_peak_rss_mib']:.0f} | "
                     f"{row['ours_runs']} | {row['st_runs']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="groups per optimizer step")
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each system")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS + EXTRA_SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--output", default=None, help="write the report to OUTPUT.json and OUTPUT.md")
    parser.add_argument("--students", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args)))
        return
    import sentence_transformers
    import torch

    load_start = load_average()
    runs = []
    with tempfile.TemporaryDirectory(prefix="train-speed-students-") as students:
        save_students(Path(students), args.layers, args.max_length)
        for layers in args.layers:
            for repeat in range(args.repeats):
                order = args.systems if repeat % 2 == 0 else args.systems[::-1]
                for system in order:
                    command = [sys.executable, __file__, *sys.argv[1:], "--students", students,
                               "--one", system, str(layers)]
                    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
                    if done.returncode != 0:
                        sys.exit(f"{system} L{layers} failed (exit code {done.returncode})")
                    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(json.dumps(runs[-1]), flush=True)
    summary = []
    for layers in args.layers:
        row: dict[str, Any] = {"layers": layers}
        for system in args.systems:
            mine = [r for r in runs if r["system"] == system and r["layers"] == layers]
            row[f"{system}_groups_per_s"] = statistics.median(r["groups_per_s"] for r in mine)
            row[f"{system}_peak_rss_mib"] = max(r["peak_rss_mib"] for r in mine)
            row[f"{system}_runs"] = [round(r["groups_per_s"], 2) for r in mine]
        if set(SYSTEMS) <= set(args.systems):
            row["ratio"] = row["ours_groups_per_s"] / row["st_groups_per_s"]
        summary.append(row)
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("one", "students", "output")},
              "environment": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                              "cpu": cpu_name(), "cpu_count": os.cpu_count(), "load_start": load_start,
                              "load_end": load_average()},
              "runs": runs, "summary": summary}
    text = markdown(report) if set(SYSTEMS) <= set(args.systems) else json.dumps(summary, indent=1)
    print(text)
    if args.output:
        write_report(report, text, args.output)


if __name__ == "__main__":
    main()
