"""Peak memory of training each student architecture: a few Margin-MSE steps at batch 16 groups x (1 positive + 4
negatives), max length 256, students built from all-MiniLM-L6-v2 (6 layers) — run by hand, not part of CI.

Each architecture trains in a fresh process, so its peak RSS belongs to it alone; ``--fits 2`` fits two new
students one after the other in that process (does the second fit start higher or peak higher?), ``--sequence``
fits every architecture one after another in one process (a DotEncoder, then a ColBERT, ... as a notebook would)::

    OMP_NUM_THREADS=1 python benchmarks/train_memory.py --fits 2 --output benchmarks/results/train-memory/fresh
    OMP_NUM_THREADS=1 python benchmarks/train_memory.py --sequence --steps 2

Training groups: Cranfield's train queries, each judged-relevant document a positive and random other documents
negatives; every document's text is its abstract followed by the next document's, so nearly every sequence is cut
at ``--max-length``. The teacher is a cheap word-overlap scorer (``pt.apply.doc_score``): the point is the student's
memory, not its quality. Peak RSS per fit is the kernel's high-water mark (``VmHWM``), reset before each fit
through ``/proc/self/clear_refs``; RSS is also sampled every 20 ms to show the swing within a step. glibc keeps
freed blocks of up to 32 MiB (a [80, 256, 384] activation is 30 MiB) in its heap, so RSS counts them too;
``--unmap-large-blocks`` (``mkd.unmap_large_blocks()``, as ``marginkd train --low-memory``; the same as the environment
variable ``MALLOC_MMAP_THRESHOLD_=4194304``) maps blocks from 4 MiB one by one, so that RSS shows what training holds::

    OMP_NUM_THREADS=1 python benchmarks/train_memory.py --fits 2 --gradient-checkpointing --unmap-large-blocks \
        --output benchmarks/results/train-memory/fresh-low-memory

A default fit estimates its step and may switch to those settings by itself (``memory_budget="auto"``); the table
shows the estimate, the budget and what was switched on. ``--memory-budget`` passes another (``none``: never
switch); ``--query-words 140`` lengthens each query with its first judged document's words to 140 words (up to
205 tokens), for paragraph-long queries::

    OMP_NUM_THREADS=1 python benchmarks/train_memory.py --architectures pretts --steps 2 --query-words 140 \
        --output benchmarks/results/train-memory-auto/pretts-paragraph-default
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHITECTURES = ("cross", "dot", "colbert", "pretts")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fin:
        for line in fin:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def rss_mib() -> float:
    """Current resident set size of this process, in MiB."""
    return _status_mib("VmRSS")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS mark of this process (``VmHWM``) to its current RSS."""
    with open("/proc/self/clear_refs", "w") as fout:
        fout.write("5")


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds in a thread while the ``with`` block runs."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mib())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def training_frames(data: str, num_candidates: int, seed: int = 0, query_words: int = 0):
    """Cranfield train candidates (qrels positives + random documents, long texts) and their qrels; with
    ``query_words``, each query is lengthened to that many words with the words of its first judged document's long
    text (paragraph-long queries)."""
    import pandas as pd

    import pyterrier_marginkd as mkd

    collection = mkd.Collection(data)
    docs = list(collection.docs_iter())
    long_text = {d["docno"]: d["text"] + " " + docs[(i + 1) % len(docs)]["text"] for i, d in enumerate(docs)}
    topics, qrels = collection.topics("train"), collection.qrels("train")
    rng = random.Random(seed)
    rows = []
    docnos = list(long_text)
    for qid, query in zip(topics["qid"].astype(str), topics["query"]):
        judged = qrels[(qrels["qid"].astype(str) == qid) & (qrels["label"] > 0)]["docno"].astype(str).tolist()
        others = [d for d in rng.sample(docnos, num_candidates + len(judged)) if d not in judged][:num_candidates]
        if query_words:
            query = " ".join((query + " " + long_text[(judged or others)[0]]).split()[:query_words])
        rows += [{"qid": qid, "query": query, "docno": d, "text": long_text[d]} for d in judged + others]
    return pd.DataFrame(rows), qrels


def overlap_teacher():
    """A cheap lexical teacher: the number of query words found in the text."""
    import pyterrier as pt

    def score(row) -> float:
        words = set(row["text"].lower().split())
        return float(sum(w in words for w in row["query"].lower().split()))

    return pt.apply.doc_score(score)


def build_student(arch: str, model: str, args: argparse.Namespace):
    """A student of ``arch`` from ``model`` at ``--max-length`` (and ``--attn-implementation`` if given)."""
    import pyterrier_marginkd as mkd

    classes = {"cross": mkd.CrossEncoder, "dot": mkd.DotEncoder, "colbert": mkd.ColBERT, "pretts": mkd.PreTT}
    kwargs: dict[str, Any] = {"max_length": args.max_length}
    if args.num_layers:
        kwargs["num_layers"] = args.num_layers
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    return classes[arch].from_pretrained(model, **kwargs)


def distiller_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The Distiller settings of every fit (``gradient_checkpointing`` only when asked, so that the benchmark also
    runs against a library without the option)."""
    kwargs: dict[str, Any] = {"batch_size": args.batch_size, "num_negatives": args.num_negatives,
                              "max_steps": args.steps, "save_steps": 10**6, "seed": 0}
    if args.gradient_checkpointing:
        kwargs["gradient_checkpointing"] = True
    if args.memory_budget is not None:
        kwargs["memory_budget"] = None if args.memory_budget == "none" else (
            args.memory_budget if args.memory_budget == "auto" else float(args.memory_budget))
    return kwargs


def fit_once(arch: str, tr_res, qrels, args: argparse.Namespace) -> dict[str, Any]:
    """Build a student, fit it for ``--steps`` steps and report its memory (peak, before, after, swing) and time."""
    import pyterrier_marginkd as mkd

    gc.collect()
    before_build = rss_mib()
    student = build_student(arch, mkd.default_model(), args)
    attn = getattr(getattr(student.model, "config", None) or student.model.encoder.config, "_attn_implementation",
                   None)
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        distiller = mkd.Distiller(student, overlap_teacher(), loss=mkd.losses.MarginMSE(), teacher_id="overlap",
                                  output_dir=tmp, **distiller_kwargs(args))
        gc.collect()
        before_fit = rss_mib()
        reset_peak()
        started = time.perf_counter()
        with RssSampler() as sampler:
            distiller.fit(tr_res, qrels)
        seconds = time.perf_counter() - started
        peak = _status_mib("VmHWM")
        steps = len(distiller.history)
        memory = distiller.report.get("memory")
    del distiller, student
    gc.collect()
    tail = sampler.samples[len(sampler.samples) // 3:]  # the later steps, past start-up
    return {"architecture": arch, "attn_implementation": attn, "steps": steps, "seconds": round(seconds, 1),
            "rss_before_build_mib": round(before_build, 1), "rss_before_fit_mib": round(before_fit, 1),
            "peak_rss_mib": round(peak, 1), "added_by_fit_mib": round(peak - before_fit, 1),
            "rss_low_during_later_steps_mib": round(min(tail), 1) if tail else None,
            "rss_after_fit_mib": round(rss_mib(), 1), "memory": memory}


def run_in_process(archs: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Fit ``args.fits`` students of each of ``archs`` in this process, one after another."""
    import torch

    torch.set_num_threads(args.threads)
    if args.unmap_large_blocks:
        from pyterrier_marginkd import unmap_large_blocks

        unmap_large_blocks()
    tr_res, qrels = training_frames(args.data, args.candidates, query_words=args.query_words)
    results = []
    for arch in archs:
        for fit in range(args.fits):
            row = {"fit": fit + 1, **fit_once(arch, tr_res, qrels, args)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            results.append(row)
    return results


def _mib(size: float | None) -> str:
    return "-" if size is None else f"{size / 2**20:,.0f}"


def switched(memory: dict[str, Any]) -> str:
    """What the memory budget switched on in a fit (from the Distiller's ``report["memory"]``)."""
    if not memory:
        return "-"
    done = [name for name in ("checkpointing", "unmapped") if memory.get(name)]
    return " + ".join(done) if done else "nothing"


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [f"Training memory: {settings['model_layers']} of all-MiniLM-L6-v2, batch {settings['batch_size']} groups "
             f"x {settings['num_negatives'] + 1} documents, max length {settings['max_length']}, "
             f"{settings['steps']} Margin-MSE steps per fit, gradient checkpointing "
             f"{'on' if settings['gradient_checkpointing'] else 'off'}, torch {report['environment']['torch']}, "
             f"{settings['threads']} thread(s); mode: {report['mode']}"
             + (f"; MALLOC_MMAP_THRESHOLD_={settings['malloc_mmap_threshold']}" if settings['malloc_mmap_threshold']
                else "")
             + ("; mkd.unmap_large_blocks() called first" if settings.get("unmap_large_blocks") else "")
             + (f"; queries lengthened to {settings['query_words']} words" if settings.get("query_words") else "")
             + (f"; memory_budget={settings['memory_budget']}" if settings.get("memory_budget") else "") + ".", "",
             "| process | architecture | fit | attention | RSS before fit (MiB) | peak RSS (MiB) | added by fit "
             "| low RSS, later steps | RSS after fit | s/step | estimate (MiB) | budget (MiB) | switched on |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in report["results"]:
        memory = row.get("memory") or {}
        lines.append(f"| {row['process']} | {row['architecture']} | {row['fit']} | {row['attn_implementation']} | "
                     f"{row['rss_before_fit_mib']:.0f} | **{row['peak_rss_mib']:.0f}** | {row['added_by_fit_mib']:.0f} "
                     f"| {row['rss_low_during_later_steps_mib']:.0f} | {row['rss_after_fit_mib']:.0f} | "
                     f"{row['seconds'] / max(row['steps'], 1):.1f} | {_mib(memory.get('estimate_bytes'))} | "
                     f"{_mib(memory.get('budget_bytes'))} | {switched(memory)} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, text: str, output: str) -> None:
    """Write ``report`` to OUTPUT.json and its Markdown ``text`` to OUTPUT.md."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(report, indent=1))
    out.with_name(out.name + ".md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--data", default=os.path.join(os.environ.get("MARGINKD_DATA", "../shared/data"), "cranfield"))
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="groups per optimizer step")
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=20, help="random documents per query besides its positives")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per fit")
    parser.add_argument("--fits", type=int, default=1, help="students of each architecture fitted in one process")
    parser.add_argument("--num-layers", type=int, default=None, help="keep the first k layers (default: all 6)")
    parser.add_argument("--attn-implementation", default=None, help="e.g. eager or sdpa (default: the model's)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--unmap-large-blocks", action="store_true",
                        help="call mkd.unmap_large_blocks() first (what `marginkd train --low-memory` does)")
    parser.add_argument("--memory-budget", default=None,
                        help="the Distiller's memory_budget: auto, none or bytes (default: the library's default)")
    parser.add_argument("--query-words", type=int, default=0,
                        help="lengthen each query to this many words (paragraph-long queries; 0: Cranfield's own)")
    parser.add_argument("--sequence", action="store_true", help="every architecture in one process, one after another")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None,
                        help="write the report to OUTPUT.json and OUTPUT.md (default: print only)")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_in_process(args.one, args)))
        return
    groups = [args.architectures] if args.sequence else [[arch] for arch in args.architectures]
    forwarded = [a for a in sys.argv[1:] if a != "--sequence"]
    if "--architectures" in forwarded:  # drop the architecture list; --one names each process's own
        start = forwarded.index("--architectures")
        end = start + 1
        while end < len(forwarded) and not forwarded[end].startswith("--"):
            end += 1
        del forwarded[start:end]
    results = []
    for number, archs in enumerate(groups, start=1):
        command = [sys.executable, __file__, *forwarded, "--one", *archs]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        if done.returncode != 0:
            sys.exit(f"{archs} failed (exit code {done.returncode})")
        results += [{"process": number, **row} for row in json.loads(done.stdout.strip().splitlines()[-1])]
    import torch

    report = {"mode": "all architectures in one process" if args.sequence else "each architecture in a fresh process",
              "settings": {"max_length": args.max_length, "batch_size": args.batch_size,
                           "num_negatives": args.num_negatives, "steps": args.steps, "fits": args.fits,
                           "model_layers": f"{args.num_layers or 6} layers", "threads": args.threads,
                           "attn_implementation": args.attn_implementation,
                           "gradient_checkpointing": args.gradient_checkpointing, "data": args.data,
                           "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                           "unmap_large_blocks": args.unmap_large_blocks, "query_words": args.query_words,
                           "memory_budget": args.memory_budget},
              "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count()},
              "results": results}
    text = markdown(report)
    print(text)
    if args.output:
        write_report(report, text, args.output)


if __name__ == "__main__":
    main()
