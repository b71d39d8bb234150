"""Plots of `vrm eval` reports (`vrm.evaluation.report.EvalReport`, see `vrm.evaluation.pairwise.evaluate_model`).

* `reliability_diagram` — accuracy vs confidence of every model on every pairwise / RewardBench dataset;
* `objective_weights_heatmap` — the mean objective weights E[w] per subset of a multi-objective model;
* `write_plots` — both of the above into a directory;
* `markdown_summary` / `write_markdown` — several models side by side as markdown (`vrm.evaluation.markdown`).

Every function takes `EvalReport`s or their JSON dicts. Matplotlib is imported only by the plotting functions,
and always with the non-interactive Agg canvas.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from vrm.data.files import atomic_output
from vrm.evaluation.report import EvalReport, as_report
from vrm.evaluation.text import MISSING, dataset_name, is_pairwise, model_labels, model_name, number, sources
from vrm.evaluation.text import format_cell as _fmt

AnyReport = EvalReport | Mapping[str, Any]


def literal_text(draw: Callable) -> Callable:
    """Run `draw` (a function that builds or saves a figure) with matplotlib's math text off: model, dataset,
    subset and objective names are the user's strings, and two `$` in one would start math mode (and fail to
    parse, or show something else). Tick labels are made when the figure is drawn, so saving needs it too."""

    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


@literal_text
def _save_figure(figure: Any, path: str) -> str:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_output(path) as staging:
        figure.savefig(staging, format="png", dpi=120)
    return path


def _new_figure(width: float, height: float) -> Any:
    """A figure on an Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


# ----------------------------------------------------------------------------------------------- plots


def reliability_diagram(reports: list[AnyReport], path: str) -> str:
    """Accuracy vs confidence of each model's overall calibration bins on each pairwise dataset (one PNG)."""
    return _save_figure(reliability_figure(reports), path)


@literal_text
def reliability_figure(reports: list[AnyReport]) -> Any:
    """The reliability diagram's figure: confidence in [0.5, 1] against accuracy in [0, 1] (an over-confident
    model's bins fall below 0.5 and must stay visible)."""
    reports = [as_report(r) for r in reports]
    figure = _new_figure(7.5, 6.5)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0.5, 1.0], [0.5, 1.0], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    colors = [f"C{i}" for i in range(10)]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    found = sources(reports, is_pairwise)
    titles, plotted = [], False
    for index, (label, report) in enumerate(zip(model_labels(reports), reports, strict=True)):
        for source in found:
            entry = report.datasets.get(source)
            if entry is None or not is_pairwise(entry):
                continue
            overall = entry.overall
            bins = [
                b
                for b in overall.calibration_bins or []
                if number(b.confidence) is not None and number(b.accuracy) is not None
            ]
            dataset = dataset_name(source)
            titles.append(f"{label} / {dataset} {_fmt(number(overall.ece))}")
            if not bins:
                continue
            confidence = [b.confidence for b in bins]
            accuracy = [b.accuracy for b in bins]
            counts = [int(b.count) for b in bins]
            largest = max(max(counts), 1)
            color = colors[index % len(colors)]
            marker = markers[found.index(source) % len(markers)]
            axes.plot(confidence, accuracy, color=color, linewidth=1.2, alpha=0.8)
            axes.scatter(
                confidence,
                accuracy,
                s=[20 + 180 * c / largest for c in counts],
                color=color,
                marker=marker,
                alpha=0.75,
                edgecolors="black",
                linewidths=0.5,
                label=f"{label} / {dataset}",
            )
            for x, y, count in zip(confidence, accuracy, counts, strict=True):
                # a bin near accuracy 1 gets its count below the marker, clear of the title
                offset = (4, -10) if y > 0.95 else (4, 4)
                axes.annotate(str(count), (x, y), textcoords="offset points", xytext=offset, fontsize=7)
            plotted = True
    if not plotted:
        axes.text(0.75, 0.5, "no calibration bins", ha="center", va="center", color="grey")
    axes.set_xlim(0.5, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("confidence  max(p, 1 - p)")
    axes.set_ylabel("accuracy")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    lines = [", ".join(titles[i : i + 2]) for i in range(0, len(titles), 2)]
    axes.set_title(
        "Reliability diagram — ECE: " + ("\n".join(lines) if lines else MISSING), fontsize=9, pad=10
    )
    figure.tight_layout()
    return figure


def objective_weights_heatmap(report: AnyReport, path: str) -> str | None:
    """Mean objective weights per subset (rows) and objective (columns); None when K == 1 or no weights."""
    figure = weights_figure(report)
    return None if figure is None else _save_figure(figure, path)


HEATMAP_LABEL_WIDTH = 48  # characters of a row label (dataset / subset); longer ones end in an ellipsis


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@literal_text
def weights_figure(report: AnyReport) -> Any:
    """The heatmap's figure, sized from K (0.8 in per column) and the rows (0.32 in each), with room for the
    row labels (cut to `HEATMAP_LABEL_WIDTH` characters), the colour bar and a wrapped title; None when
    there is nothing to draw."""
    report = as_report(report)
    k = int(report.num_objectives or 1)
    if k <= 1:
        return None
    names = report.objective_names or [f"objective {i}" for i in range(k)]
    rows, values = [], []
    for source, entry in report.datasets.items():
        if not is_pairwise(entry):
            continue
        for subset, metrics in entry.subsets.items():
            weights = metrics.objective_weights
            if not weights or len(weights) != k:
                continue
            rows.append(_cut(f"{dataset_name(source)} / {subset}", HEATMAP_LABEL_WIDTH))
            values.append([number(w) if number(w) is not None else math.nan for w in weights])
    if not rows:
        return None

    import textwrap

    import numpy as np

    matrix = np.ma.masked_invalid(np.asarray(values, dtype=float))
    font = 8
    label_inches = 0.6 * font / 72 * max(len(r) for r in rows) + 0.3  # ~0.6 em per character
    name_inches = 0.6 * font / 72 * max(len(str(n)) for n in names) * 0.6 + 0.3  # rotated 30 degrees
    cells_w, cells_h = 0.8 * k, 0.32 * len(rows)
    width = label_inches + cells_w + 1.6  # + colour bar and its label
    height = cells_h + name_inches + 1.2
    figure = _new_figure(width, height)
    left, bottom = label_inches / width, (name_inches + 0.2) / height
    axes = figure.add_axes((left, bottom, cells_w / width, cells_h / height))
    top = float(matrix.max()) if matrix.count() else 1.0
    image = axes.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(top, 1e-6), aspect="auto")
    axes.set_xticks(range(k), labels=[str(n) for n in names], rotation=30, ha="right", fontsize=font)
    axes.set_yticks(range(len(rows)), labels=rows, fontsize=font)
    threshold = 0.6 * max(top, 1e-6)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            text = "nan" if math.isnan(value) else f"{value:.2f}"
            color = "black" if not math.isnan(value) and value > threshold else "white"
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    bar = figure.add_axes(((label_inches + cells_w + 0.2) / width, bottom, 0.2 / width, cells_h / height))
    figure.colorbar(image, cax=bar, label="mean E[w]")
    title = f"Objective weights — {model_name(report)} ({report.head_type or '?'}, K={k})"
    columns = max(int(width * 72 / (0.6 * 10)) - 2, 20)  # characters of 10 pt text across the figure
    figure.suptitle("\n".join(textwrap.wrap(title, columns)), fontsize=10, y=1 - 0.1 / height, va="top")
    return figure


def write_plots(reports: list[AnyReport], directory: str) -> list[str]:
    """Write `reliability.png` and one `weights_<model>.png` per multi-objective model; return the paths."""
    reports = [as_report(r) for r in reports]
    os.makedirs(directory, exist_ok=True)
    paths = [reliability_diagram(reports, os.path.join(directory, "reliability.png"))]
    for label, report in zip(model_labels(reports), reports, strict=True):
        if int(report.num_objectives or 1) <= 1:
            continue
        written = objective_weights_heatmap(
            report, os.path.join(directory, f"weights_{_safe_filename(label)}.png")
        )
        if written is not None:
            paths.append(written)
    return paths
