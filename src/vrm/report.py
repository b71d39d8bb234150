"""Plots and a markdown summary of `vrm eval` reports (see `vrm.evaluate.evaluate_model`).

* `reliability_diagram` — accuracy vs confidence of every model on every pairwise / RewardBench dataset;
* `objective_weights_heatmap` — the mean objective weights E[w] per subset of a multi-objective model;
* `write_plots` — both of the above into a directory;
* `markdown_summary` / `write_markdown` — several models side by side: metrics per dataset, per-subset
  accuracy, RewardBench sections, RM-Bench difficulties, and warnings (accuracy close to the "longer response
  wins" rule, subsets without pairs).

Matplotlib is imported only by the plotting functions, and always with the non-interactive Agg canvas.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from .fileio import atomic_output

MISSING = "–"
LENGTH_WARNING_TOLERANCE = 0.02
PAIRWISE_CONVENTIONS = ("pairwise", "rewardbench")
BEST_OF_K_CONVENTIONS = ("best-of-k", "rewardbench2")
RM_BENCH_COLUMNS = ("easy", "normal", "hard", "average", "prompts")


# --------------------------------------------------------------------------------------------- helpers


def _model_name(report: dict[str, Any]) -> str:
    """Basename of the report's model path (`runs/vrm-k3/` -> `vrm-k3`)."""
    model = str(report.get("model", "model"))
    return os.path.basename(os.path.normpath(model)) or model


def _model_labels(reports: list[dict[str, Any]]) -> list[str]:
    """One distinct label per report: the model basename, suffixed `#2`, `#3`, ... when repeated."""
    labels, seen = [], {}
    for report in reports:
        name = _model_name(report)
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


def _dataset_name(source: str) -> str:
    """Basename of a dataset source (a file path, a directory or a hub name)."""
    return os.path.basename(os.path.normpath(source)) or source


def _is_pairwise(entry: dict[str, Any]) -> bool:
    return entry.get("convention", "pairwise") in PAIRWISE_CONVENTIONS


def _sources(reports: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool]) -> list[str]:
    """Dataset sources of all reports, in first-seen order, whose entries satisfy `keep`."""
    out: list[str] = []
    for report in reports:
        for source, entry in report.get("datasets", {}).items():
            if source not in out and keep(entry):
                out.append(source)
    return out


def _number(value: Any) -> float | None:
    """`value` as a float, or None when it is missing or not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _fmt(value: Any, digits: int = 3) -> str:
    """A table cell: `–` when missing, `nan` for NaN, integers as is, floats with `digits` decimals."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return _escape(str(value))


def _escape(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: Iterable[list[str]], left: int = 1) -> list[str]:
    """Lines of a markdown table (the first `left` columns left-aligned, the others right-aligned)."""
    lines = [
        "| " + " | ".join(_escape(h) for h in header) + " |",
        "| " + " | ".join(":---" if i < left else "---:" for i in range(len(header))) + " |",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


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


def reliability_diagram(reports: list[dict[str, Any]], path: str) -> str:
    """Accuracy vs confidence of each model's overall calibration bins on each pairwise dataset (one PNG)."""
    return _save_figure(reliability_figure(reports), path)


def reliability_figure(reports: list[dict[str, Any]]) -> Any:
    """The reliability diagram's figure: confidence in [0.5, 1] against accuracy in [0, 1] (an over-confident
    model's bins fall below 0.5 and must stay visible)."""
    figure = _new_figure(7.5, 6.5)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0.5, 1.0], [0.5, 1.0], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    colors = [f"C{i}" for i in range(10)]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    sources = _sources(reports, _is_pairwise)
    titles, plotted = [], False
    for index, (label, report) in enumerate(zip(_model_labels(reports), reports, strict=True)):
        for source in sources:
            entry = report.get("datasets", {}).get(source)
            if entry is None or not _is_pairwise(entry):
                continue
            overall = entry.get("overall", {})
            bins = [
                b
                for b in overall.get("calibration_bins") or []
                if _number(b.get("confidence")) is not None and _number(b.get("accuracy")) is not None
            ]
            dataset = _dataset_name(source)
            titles.append(f"{label} / {dataset} {_fmt(_number(overall.get('ece')))}")
            if not bins:
                continue
            confidence = [b["confidence"] for b in bins]
            accuracy = [b["accuracy"] for b in bins]
            counts = [int(b.get("count", 0)) for b in bins]
            largest = max(max(counts), 1)
            color = colors[index % len(colors)]
            marker = markers[sources.index(source) % len(markers)]
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
                axes.annotate(str(count), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
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
    axes.set_title("Reliability diagram — ECE: " + ("\n".join(lines) if lines else MISSING), fontsize=9)
    figure.tight_layout()
    return figure


def objective_weights_heatmap(report: dict[str, Any], path: str) -> str | None:
    """Mean objective weights per subset (rows) and objective (columns); None when K == 1 or no weights."""
    figure = weights_figure(report)
    return None if figure is None else _save_figure(figure, path)


HEATMAP_LABEL_WIDTH = 48  # characters of a row label (dataset / subset); longer ones end in an ellipsis


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def weights_figure(report: dict[str, Any]) -> Any:
    """The heatmap's figure, sized from K (0.8 in per column) and the rows (0.32 in each), with room for the
    row labels (cut to `HEATMAP_LABEL_WIDTH` characters), the colour bar and a wrapped title; None when
    there is nothing to draw."""
    k = int(report.get("num_objectives", 1) or 1)
    if k <= 1:
        return None
    names = report.get("objective_names") or [f"objective {i}" for i in range(k)]
    rows, values = [], []
    for source, entry in report.get("datasets", {}).items():
        if not _is_pairwise(entry):
            continue
        for subset, metrics in (entry.get("subsets") or {}).items():
            weights = metrics.get("objective_weights")
            if not weights or len(weights) != k:
                continue
            rows.append(_cut(f"{_dataset_name(source)} / {subset}", HEATMAP_LABEL_WIDTH))
            values.append([_number(w) if _number(w) is not None else math.nan for w in weights])
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
    title = f"Objective weights — {_model_name(report)} ({report.get('head_type', '?')}, K={k})"
    columns = max(int(width * 72 / (0.6 * 10)) - 2, 20)  # characters of 10 pt text across the figure
    figure.suptitle("\n".join(textwrap.wrap(title, columns)), fontsize=10, y=1 - 0.1 / height, va="top")
    return figure


def write_plots(reports: list[dict[str, Any]], directory: str) -> list[str]:
    """Write `reliability.png` and one `weights_<model>.png` per multi-objective model; return the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [reliability_diagram(reports, os.path.join(directory, "reliability.png"))]
    for label, report in zip(_model_labels(reports), reports, strict=True):
        if int(report.get("num_objectives", 1) or 1) <= 1:
            continue
        written = objective_weights_heatmap(
            report, os.path.join(directory, f"weights_{_safe_filename(label)}.png")
        )
        if written is not None:
            paths.append(written)
    return paths


# -------------------------------------------------------------------------------------------- markdown

METRIC_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("pairs", lambda m: m.get("pairs")),
    ("accuracy", lambda m: m.get("accuracy")),
    ("ties", lambda m: m.get("ties")),
    ("NLL", lambda m: m.get("nll")),
    ("Brier", lambda m: m.get("brier")),
    ("ECE", lambda m: m.get("ece")),
    ("mean reward_std", lambda m: m.get("mean_reward_std")),
    ("sel. acc. area", lambda m: (m.get("selective_accuracy") or {}).get("area")),
    ("uncertainty AUROC", lambda m: m.get("uncertainty_error_auroc")),
    ("margin AUROC", lambda m: (m.get("error_auroc") or {}).get("margin")),
    ("flip AUROC", lambda m: (m.get("error_auroc") or {}).get("flip")),
    ("Spearman(reward, length)", lambda m: (m.get("length_bias") or {}).get("spearman_reward_length")),
    ("acc chosen-longer", lambda m: (m.get("length_bias") or {}).get("accuracy_chosen_longer")),
    ("acc chosen-shorter", lambda m: (m.get("length_bias") or {}).get("accuracy_chosen_shorter")),
]


def _longer_wins(reports: list[dict[str, Any]], source: str) -> float | None:
    """Accuracy of "the longer response wins" on a dataset, from the first report that measured it."""
    for report in reports:
        entry = report.get("datasets", {}).get(source)
        if entry is None:
            continue
        value = _number(((entry.get("overall") or {}).get("length_bias") or {}).get("longer_wins_accuracy"))
        if value is not None:
            return value
    return None


def _warnings(reports: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """Accuracy within 0.02 of the length rule, and subsets with 0 pairs (each listed once)."""
    out: list[str] = []
    for source in _sources(reports, _is_pairwise):
        dataset = _dataset_name(source)
        rule = _longer_wins(reports, source)
        for label, report in zip(labels, reports, strict=True):
            entry = report.get("datasets", {}).get(source)
            if entry is None or rule is None or math.isnan(rule):
                continue
            accuracy = _number((entry.get("overall") or {}).get("accuracy"))
            if accuracy is not None and abs(accuracy - rule) <= LENGTH_WARNING_TOLERANCE:
                out.append(
                    f"{label} on {dataset}: accuracy {_fmt(accuracy)} vs longer wins {_fmt(rule)} "
                    f"(accuracy explained by length?)"
                )
    for source in _sources(reports, lambda entry: True):
        for report in reports:
            entry = report.get("datasets", {}).get(source) or {}
            skipped = (entry.get("invalid_rows") or {}).get("count")
            message = f"{_dataset_name(source)}: {skipped} unusable rows skipped (listed in the JSON report)"
            if skipped and message not in out:
                out.append(message)
            if not _is_pairwise(entry):
                continue
            for subset, metrics in (entry.get("subsets") or {}).items():
                message = f"{_dataset_name(source)} / {subset}: 0 pairs"
                if not metrics.get("pairs") and message not in out:
                    out.append(message)
    return out


def markdown_summary(reports: list[dict[str, Any]]) -> str:
    """Several `vrm eval` reports side by side as a markdown document."""
    labels = _model_labels(reports)
    lines = ["# vrm eval summary", ""]
    for label, report in zip(labels, reports, strict=True):
        lines.append(
            f"- **{_escape(label)}**: `{report.get('model', '?')}` ({report.get('head_type', '?')}, "
            f"K={report.get('num_objectives', '?')})"
        )
    warnings = _warnings(reports, labels)
    lines += ["", "**Warnings:** " + ("; ".join(_escape(w) for w in warnings) if warnings else "none"), ""]

    for source in _sources(reports, _is_pairwise):
        dataset = _dataset_name(source)
        lines += [f"## {dataset}", ""]
        header = ["model", *(name for name, _ in METRIC_COLUMNS)]
        rows = []
        for label, report in zip(labels, reports, strict=True):
            entry = report.get("datasets", {}).get(source)
            if entry is None:
                continue
            overall = entry.get("overall") or {}
            rows.append([_escape(label), *(_fmt(get(overall)) for _, get in METRIC_COLUMNS)])
        rule = _longer_wins(reports, source)
        longer_row = [MISSING] * len(METRIC_COLUMNS)
        longer_row[[name for name, _ in METRIC_COLUMNS].index("accuracy")] = _fmt(rule)
        rows.append(["longer wins", *longer_row])
        lines += _table(header, rows) + [""]

        subsets: list[str] = []
        for report in reports:
            for subset in (report.get("datasets", {}).get(source) or {}).get("subsets") or {}:
                if subset not in subsets:
                    subsets.append(subset)
        if subsets:
            lines += [f"### {dataset}: accuracy per subset", ""]
            rows = []
            for subset in subsets:
                cells, pairs = [], None
                for report in reports:
                    metrics = ((report.get("datasets", {}).get(source) or {}).get("subsets") or {}).get(
                        subset
                    )
                    cells.append(_fmt((metrics or {}).get("accuracy")))
                    if pairs is None and metrics is not None:
                        pairs = metrics.get("pairs")
                rows.append([_escape(subset), _fmt(pairs), *cells])
            lines += _table(["subset", "pairs", *labels], rows) + [""]

        sections: list[str] = []
        for report in reports:
            entry = report.get("datasets", {}).get(source) or {}
            for section in (entry.get("rewardbench") or {}).get("sections") or {}:
                if section not in sections:
                    sections.append(section)
        if sections:
            lines += [f"### {dataset}: RewardBench sections", ""]
            rows = []
            for label, report in zip(labels, reports, strict=True):
                bench = (report.get("datasets", {}).get(source) or {}).get("rewardbench")
                if not bench:
                    continue
                scores = bench.get("sections") or {}
                rows.append(
                    [_escape(label), *(_fmt(scores.get(s)) for s in sections), _fmt(bench.get("score"))]
                )
            lines += _table(["model", *sections, "score"], rows) + [""]

    for source in _sources(reports, lambda entry: entry.get("convention") == "rm-bench"):
        dataset = _dataset_name(source)
        lines += [f"## {dataset} (RM-Bench)", ""]
        rows = []
        for label, report in zip(labels, reports, strict=True):
            entry = report.get("datasets", {}).get(source)
            if entry is None or entry.get("convention") != "rm-bench":
                continue
            overall = entry.get("overall") or {}
            rows.append([_escape(label), "overall", *(_fmt(overall.get(c)) for c in RM_BENCH_COLUMNS)])
            for subset, scores in (entry.get("subsets") or {}).items():
                rows.append(
                    [_escape(label), _escape(subset), *(_fmt(scores.get(c)) for c in RM_BENCH_COLUMNS)]
                )
        lines += _table(["model", "subset", *RM_BENCH_COLUMNS], rows, left=2) + [""]

    lines += _best_of_k_markdown(reports, labels)
    return "\n".join(lines).rstrip() + "\n"


BEST_OF_K_COLUMNS = ("prompts", "accuracy", "chance", "ties", "pairwise_accuracy", "pairs", "mean_margin")


def _best_of_k_markdown(reports: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """Best-of-k datasets (RMB best-of-n, RewardBench 2): overall, per subset (full names), RewardBench 2 scores."""
    lines: list[str] = []
    for source in _sources(reports, lambda entry: entry.get("convention") in BEST_OF_K_CONVENTIONS):
        entries = [
            (label, report.get("datasets", {}).get(source))
            for label, report in zip(labels, reports, strict=True)
        ]
        entries = [(label, entry) for label, entry in entries if entry]
        lines += [f"## {_dataset_name(source)} (best-of-k)", ""]
        rows = [
            [_escape(label), *(_fmt(e["overall"].get(c)) for c in BEST_OF_K_COLUMNS)] for label, e in entries
        ]
        lines += _table(["model", *BEST_OF_K_COLUMNS], rows) + [""]
        subsets = list(dict.fromkeys(s for _, e in entries for s in e.get("subsets") or {}))
        if subsets:
            lines += ["### best-of-k accuracy per subset", ""]
            rows = [
                [
                    _escape(s),
                    *(_fmt(((e.get("subsets") or {}).get(s) or {}).get("accuracy")) for _, e in entries),
                ]
                for s in subsets
            ]
            lines += _table(["subset", *(label for label, _ in entries)], rows) + [""]
        benches = [(label, e["rewardbench2"]) for label, e in entries if e.get("rewardbench2")]
        if benches:
            names = list(dict.fromkeys(n for _, b in benches for n in b["subsets"]))
            rows = [
                [_escape(lb), *(_fmt(b["subsets"].get(n)) for n in names), _fmt(b["score"])]
                for lb, b in benches
            ]
            lines += ["### RewardBench 2", ""] + _table(["model", *names, "score"], rows) + [""]
    return lines


def write_markdown(reports: list[dict[str, Any]], path: str) -> str:
    """Write `markdown_summary(reports)` to `path` atomically; return the path."""
    text = markdown_summary(reports)

    with atomic_output(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
