"""An experiment report: effectiveness, significance, model size and speed of named systems, as a table and a plot."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import ir_measures
import numpy as np
import pandas as pd
import pyterrier as pt
from ir_measures import AP, RR, nDCG

from pyterrier_marginkd.models.base import NeuralScorer
from pyterrier_marginkd.models.docstore import StoredReranker
from pyterrier_marginkd.models.io import load

#: measures of a report unless others are given; the first one is plotted against mean response time
DEFAULT_MEASURES = (nDCG @ 10, RR @ 10, AP @ 100)
TABLE_FILE, CSV_FILE, PLOT_FILE = "results.md", "results.csv", "results.png"


def report(systems: Mapping[str, pt.Transformer] | Sequence[pt.Transformer], topics: pd.DataFrame,
           qrels: pd.DataFrame, output_dir: str | os.PathLike, *, baseline: int | str | None = 0,
           names: Sequence[str] | None = None, measures: Sequence[Any] = DEFAULT_MEASURES,
           correction: str | None = "holm", alpha: float = 0.05, plot: bool = True,
           runs: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Evaluate systems with ``pt.Experiment`` and write ``results.md``, ``results.csv`` and ``results.png``.

    ``systems`` is a dict ``{name: transformer}`` or a list (named by ``names``, else by repr). Each system runs
    once over ``topics``; its mean response time (``mrt``, ms per query) is the wall time of that run. For a
    system containing a pyterrier-marginkd re-ranker (the last one in the pipeline) the report also gives its
    parameter count and its throughput (``pairs/s``: (query, document) pairs scored per second of scoring).
    Significance is a paired t-test against ``baseline`` (index or name; None for none), corrected across
    systems by ``correction`` (a statsmodels method such as "holm"; None for none). The plot shows the first
    measure against mrt on a log scale, one labelled point per system (needs matplotlib: the ``plot`` extra).
    ``runs``: a dict that receives each system's result frame by name, so that further comparisons among them
    (``pt.Experiment`` takes frames) need not run the systems again.
    Returns the full table (one row per system), as written to ``results.csv``.
    """
    named = _named_systems(systems, names)
    system_names = [name for name, _ in named]
    baseline_index = _baseline_index(baseline, system_names)
    measures = [ir_measures.parse_measure(m) if isinstance(m, str) else m for m in measures]
    if not measures:
        raise ValueError("measures is empty: give at least one measure, e.g. [nDCG @ 10]")
    if plot:
        _check_matplotlib()
    if len(topics) == 0:
        raise ValueError("topics is empty: there are no queries to evaluate")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)

    if runs is not None and not isinstance(runs, dict):
        raise TypeError(f"runs must be a dict to receive each system's result frame, got {type(runs).__name__}")
    results, speed = [], []
    for name, system in named:
        run, stats = _timed_run(system, topics)
        results.append(run)
        speed.append(stats)
    table = pt.Experiment(results, topics, qrels, measures, names=system_names, baseline=baseline_index,
                          correction=correction if baseline_index is not None else None)
    measure_names = [str(m) for m in measures]
    tests = [c for m in measure_names for c in table.columns if c.startswith(f"{m} ")]
    table = table[["name", *measure_names, *tests]].copy()
    table["params"] = pd.array([s["params"] for s in speed], dtype="Int64")
    table["pairs"] = pd.array([s["pairs"] for s in speed], dtype="Int64")
    table["pairs/s"] = pd.array([s["pairs/s"] for s in speed], dtype="Float64")
    table["mrt"] = [s["mrt"] for s in speed]
    if runs is not None:
        runs.update(zip(system_names, results))
    table.to_csv(output / CSV_FILE, index=False)
    (output / TABLE_FILE).write_text(markdown(table, measure_names, baseline_index, correction, alpha) + "\n")
    if plot:
        plot_quality_latency(table, measure_names[0], output / PLOT_FILE,
                             baseline=None if baseline_index is None else system_names[baseline_index])
    return table


def _named_systems(systems: Mapping[str, pt.Transformer] | Sequence[pt.Transformer],
                   names: Sequence[str] | None) -> list[tuple[str, pt.Transformer]]:
    if isinstance(systems, Mapping):
        if names is not None:
            raise ValueError("give names either as the keys of the systems dict or as names=, not both")
        named = [(str(k), v) for k, v in systems.items()]
    else:
        systems = list(systems)
        names = [repr(s) for s in systems] if names is None else [str(n) for n in names]
        if len(names) != len(systems):
            raise ValueError(f"got {len(names)} names for {len(systems)} systems")
        named = list(zip(names, systems))
    if not named:
        raise ValueError("there are no systems to report on")
    seen = set()
    for name, system in named:
        if not isinstance(system, pt.Transformer):
            raise TypeError(f"system {name!r} is a {type(system).__name__}, not a pt.Transformer")
        if name in seen:
            raise ValueError(f"system name {name!r} is used twice; names must be unique")
        seen.add(name)
    return named


def _baseline_index(baseline: int | str | None, names: list[str]) -> int | None:
    if baseline is None:
        return None
    if isinstance(baseline, str):
        if baseline not in names:
            raise KeyError(f"baseline {baseline!r} is not one of the systems {names}")
        return names.index(baseline)
    if not -len(names) <= baseline < len(names):
        raise ValueError(f"baseline index {baseline} is out of range for {len(names)} systems")
    return baseline % len(names)


def last_neural_scorer(system: pt.Transformer) -> NeuralScorer | None:
    """The last pyterrier-marginkd re-ranker inside a pipeline (searching subtransformers; a re-ranker reading a
    document store counts as its student), or None."""
    if isinstance(system, NeuralScorer):
        return system
    if isinstance(system, StoredReranker):
        return system.student
    try:
        children = pt.inspect.subtransformers(system)
    except pt.inspect.InspectError:
        return None
    found = None
    for child in children.values():
        for sub in child if isinstance(child, list) else [child]:
            found = last_neural_scorer(sub) or found
    return found


@contextlib.contextmanager
def _metered(scorer: NeuralScorer | None) -> Iterator[dict[str, float]]:
    """Count the pairs ``scorer`` scores, and the seconds it spends scoring them, inside the block: pairs of texts
    (``score_pairs``) and pairs of a query and a stored document (``score_stored``), each counted once when one
    calls the other."""
    meter = {"pairs": 0, "seconds": 0.0}
    if scorer is None:
        yield meter
        return
    depth = [0]

    def metered(method):
        def wrapped(queries, *args, **kwargs):
            depth[0] += 1
            started = time.perf_counter()
            try:
                return method(queries, *args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    meter["seconds"] += time.perf_counter() - started
                    meter["pairs"] += len(queries)
        return wrapped
    names = [name for name in ("score_pairs", "score_stored") if hasattr(scorer, name)]
    for name in names:
        setattr(scorer, name, metered(getattr(scorer, name)))
    try:
        yield meter
    finally:
        for name in names:
            delattr(scorer, name)


def _timed_run(system: pt.Transformer, topics: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run ``system`` on all topics at once (as pt.Experiment does to measure mrt) and collect speed figures."""
    scorer = last_neural_scorer(system)
    with _metered(scorer) as meter:
        started = time.perf_counter()
        run = system.transform(topics)
        elapsed = time.perf_counter() - started
    stats: dict[str, Any] = {"params": None, "pairs": None, "pairs/s": None, "mrt": elapsed * 1000 / len(topics)}
    if scorer is not None:
        stats["params"] = scorer.num_parameters()
        stats["pairs"] = int(meter["pairs"])
        stats["pairs/s"] = meter["pairs"] / meter["seconds"] if meter["seconds"] > 0 else None
    return run, stats


def _format_count(value: float | None) -> str:
    if value is None or pd.isna(value):
        return "–"
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def markdown(table: pd.DataFrame, measure_names: Sequence[str], baseline: int | None = None,
             correction: str | None = "holm", alpha: float = 0.05) -> str:
    """A readable Markdown table of a report: measures (``*`` marks a significant difference from the baseline),
    the baseline p-value of the first measure, parameters, pairs/s and mrt."""
    first = measure_names[0]
    p_column = f"{first} p-value corrected" if correction else f"{first} p-value"
    rows = []
    for i, row in table.reset_index(drop=True).iterrows():
        cells = [str(row["name"])]
        for m in measure_names:
            marker = "*" if baseline is not None and i != baseline and _significant(row, m, correction, alpha) else ""
            cells.append(f"{row[m]:.4f}{marker}")
        if baseline is not None:
            p_value = row.get(p_column)
            cells.append("–" if p_value is None or pd.isna(p_value) else f"{p_value:.3g}")
        cells += [_format_count(row["params"]), _format_count(row["pairs/s"]), f"{row['mrt']:.1f}"]
        rows.append(cells)
    header = ["system", *measure_names] + ([f"p ({first})"] if baseline is not None else []) \
        + ["params", "pairs/s", "mrt (ms)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    if baseline is not None:
        how = f", {correction}-corrected" if correction else ""
        lines += ["", f"\\* significantly different from {table['name'].iloc[baseline]} (paired t-test, "
                      f"p < {alpha:g}{how}); p is the baseline test's p-value for {first}."]
    return "\n".join(lines)


def _significant(row: pd.Series, measure: str, correction: str | None, alpha: float) -> bool:
    if correction and f"{measure} reject" in row.index:
        return bool(row[f"{measure} reject"])
    p_value = row.get(f"{measure} p-value")
    return p_value is not None and not pd.isna(p_value) and p_value < alpha


def _check_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("the report's plot needs matplotlib: pip install pyterrier-marginkd[plot] "
                          "(or pass plot=False)")


def plot_quality_latency(table: pd.DataFrame, measure: str, path: str | os.PathLike, *,
                         baseline: str | None = None) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Write a PNG of ``measure`` against mean response time (log scale), one labelled point per system; labels
    of close systems are moved apart so that none overlaps another label or a point. Returns each label's box in
    pixels ``(x0, y0, x1, y1)``."""
    _check_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(7, 4.5), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    mrt = np.maximum(table["mrt"].to_numpy(dtype=float), 1e-3)
    quality = table[measure].to_numpy(dtype=float)
    low, high = mrt.min() / 2, mrt.max() * 4
    for name, x, y in zip(table["name"], mrt, quality):
        is_baseline = name == baseline
        axes.scatter([x], [y], s=60, marker="s" if is_baseline else "o", color="grey" if is_baseline else "C0",
                     zorder=3)
    axes.set_xscale("log")
    axes.set_xlim(low, high)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    spread = max(quality.max() - quality.min(), 0.02)
    axes.set_ylim(quality.min() - 0.15 * spread, quality.max() + 0.25 * spread)
    axes.set_xlabel("mean response time per query (ms, log scale)")
    axes.set_ylabel(measure)
    axes.set_title(f"{measure} against mean response time")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    boxes = _place_labels(figure, axes, [str(n) for n in table["name"]], mrt, quality, np.sqrt(low * high))
    figure.savefig(path, format="png")
    return boxes


#: label offsets from a point (in points), tried in order: beside it, then further above and below
_OFFSETS = [(6, 6), (6, -12)] + [(6, sign * step) for step in range(18, 120, 10) for sign in (1, -1)]


def _place_labels(figure, axes, names: list[str], xs: np.ndarray, ys: np.ndarray,
                  middle: float) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Annotate each point with its name at the first offset whose text box overlaps no label placed so far and no
    point (greedy, top to bottom); labels point left of points in the plot's right half. Returns the boxes."""
    renderer = figure.canvas.get_renderer()
    to_pixels = axes.transData.transform
    points = [to_pixels((x, y)) for x, y in zip(xs, ys)]
    taken: list[tuple[float, float, float, float]] = []
    placed = []
    for i in sorted(range(len(names)), key=lambda j: -ys[j]):
        right_half = xs[i] > middle
        label = None
        for dx, dy in _OFFSETS:
            if label is not None:
                label.remove()
            label = axes.annotate(names[i], (xs[i], ys[i]), textcoords="offset points",
                                  xytext=(-dx if right_half else dx, dy), fontsize=8,
                                  ha="right" if right_half else "left", va="bottom",
                                  arrowprops=None if abs(dy) <= 12 else {"arrowstyle": "-", "color": "0.6",
                                                                         "lw": 0.6})
            box = label.get_window_extent(renderer)
            extent = (box.x0, box.y0, box.x1, box.y1)
            clear = not any(_overlap(extent, other) for other in taken) and not any(
                _overlap(extent, (px - 4, py - 4, px + 4, py + 4)) for k, (px, py) in enumerate(points) if k != i)
            if clear:
                break
        taken.append(extent)
        placed.append((names[i], extent))
    return placed


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def markdown_table(table: pd.DataFrame) -> str:
    """A Markdown table of ``table`` (floats to 4 significant digits; the +/- count columns left out)."""
    columns = [c for c in table.columns if not c.endswith(("+", "-"))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table[columns].iterrows():
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def deployed_report(file_name: str, output: Path, quantize: str, candidates: pt.Transformer, teacher_name: str,
                     teacher: pt.Transformer, folders: dict[str, Path], topics: pd.DataFrame, qrels: pd.DataFrame,
                     scorer_kwargs: dict, shared_docs: dict, verbose: bool,
                     deploy: Callable[[str, NeuralScorer], pt.Transformer] | None = None) -> pd.DataFrame:
    """The students as deployed on a CPU: each trained student loaded with ``quantize`` (int8 query encoder; the
    stored document vectors stay fp32), against the fp32 teacher in one run — quality (paired t-test against the
    teacher) and pairs/s as a multiple of the teacher's. Appended to results.md, written to ``file_name``.
    ``deploy(name, student)`` gives the re-ranker of a loaded student (default: a DotEncoder reading
    ``shared_docs``)."""
    systems: dict[str, pt.Transformer] = {teacher_name: candidates >> teacher}
    for name, folder in folders.items():
        student = load(folder / "student", quantize=quantize, **scorer_kwargs)
        deployed = student.share_doc_vectors(shared_docs) if deploy is None else deploy(name, student)
        systems[f"{name[:-1]}, {quantize})"] = candidates >> deployed
    if verbose:
        print(f"the students as deployed ({quantize}) against the teacher, on {len(topics)} queries", flush=True)
    table = report(systems, topics, qrels, output / "report" / "deployed", baseline=0, plot=False)
    table["x teacher pairs/s"] = table["pairs/s"] / table["pairs/s"].iloc[0]
    table.to_csv(output / "report" / file_name, index=False)
    shown = table[["name", "nDCG@10", "RR@10", *[c for c in table.columns if c.startswith("nDCG@10 p-value corr")],
                   "pairs/s", "x teacher pairs/s", "mrt"]]
    with open(output / "report" / TABLE_FILE, "a") as f:
        f.write(f"\nThe students as deployed ({quantize} query encoders, fp32 document vectors) against the fp32 "
                f"teacher (paired t-test, Holm-corrected; pairs/s of one run, as a multiple of the teacher's):"
                f"\n\n{markdown_table(shown)}\n")
    return table
