"""A markdown summary of several `vrm eval` reports side by side (`vrm eval --markdown`).

Metrics per dataset, per-subset accuracy, RewardBench sections, RM-Bench difficulties, best-of-k results, and
warnings (accuracy close to the "longer response wins" rule, skipped rows, subsets without pairs). Every
function takes `vrm.evaluation.report.EvalReport`s or their JSON dicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from vrm.data.files import atomic_output
from vrm.evaluation.report import BEST_OF_K_CONVENTIONS, EvalReport, PairwiseMetrics, as_report
from vrm.evaluation.text import (
    MISSING,
    dataset_name,
    escape_cell,
    is_pairwise,
    markdown_table,
    model_labels,
    sources,
)
from vrm.evaluation.text import format_cell as _fmt

LENGTH_WARNING_TOLERANCE = 0.02
RM_BENCH_COLUMNS = ("easy", "normal", "hard", "average", "prompts")
BEST_OF_K_COLUMNS = ("prompts", "accuracy", "chance", "ties", "pairwise_accuracy", "pairs", "mean_margin")


def _area(m: PairwiseMetrics) -> float | None:
    return m.selective_accuracy.area if m.selective_accuracy else None


def _length(m: PairwiseMetrics, name: str) -> float | None:
    return getattr(m.length_bias, name) if m.length_bias else None


METRIC_COLUMNS: list[tuple[str, Callable[[PairwiseMetrics], Any]]] = [
    ("pairs", lambda m: m.pairs),
    ("accuracy", lambda m: m.accuracy),
    ("ties", lambda m: m.ties),
    ("NLL", lambda m: m.nll),
    ("Brier", lambda m: m.brier),
    ("ECE", lambda m: m.ece),
    ("mean reward_std", lambda m: m.mean_reward_std or None),  # exactly 0: a head without a posterior, "–"
    ("sel. acc. area", _area),
    ("uncertainty AUROC", lambda m: m.uncertainty_error_auroc),
    ("margin AUROC", lambda m: (m.error_auroc or {}).get("margin")),
    ("flip AUROC", lambda m: (m.error_auroc or {}).get("flip")),
    ("Spearman(reward, length)", lambda m: _length(m, "spearman_reward_length")),
    ("acc chosen-longer", lambda m: _length(m, "accuracy_chosen_longer")),
    ("acc chosen-shorter", lambda m: _length(m, "accuracy_chosen_shorter")),
]


def _longer_wins(reports: list[EvalReport], source: str) -> float | None:
    """Accuracy of "the longer response wins" on a dataset, from the first report that measured it."""
    for report in reports:
        entry = report.datasets.get(source)
        if entry is None or not is_pairwise(entry):
            continue
        value = _length(entry.overall, "longer_wins_accuracy")
        if isinstance(value, int | float):
            return float(value)
    return None


def _warnings(reports: list[EvalReport], labels: list[str]) -> list[str]:
    """Accuracy within 0.02 of the length rule, skipped rows and subsets with 0 pairs (each listed once)."""
    out: list[str] = []
    for source in sources(reports, is_pairwise):
        dataset = dataset_name(source)
        rule = _longer_wins(reports, source)
        for label, report in zip(labels, reports, strict=True):
            entry = report.datasets.get(source)
            if entry is None or rule is None or math.isnan(rule):
                continue
            accuracy = entry.overall.accuracy
            if accuracy is not None and abs(accuracy - rule) <= LENGTH_WARNING_TOLERANCE:
                out.append(
                    f"{label} on {dataset}: accuracy {_fmt(accuracy)} vs longer wins {_fmt(rule)} "
                    f"(accuracy explained by length?)"
                )
    for source in sources(reports, lambda entry: True):
        for report in reports:
            entry = report.datasets.get(source)
            if entry is None:
                continue
            skipped = entry.invalid_rows.count
            message = f"{dataset_name(source)}: {skipped} unusable rows skipped (listed in the JSON report)"
            if skipped and message not in out:
                out.append(message)
            if not is_pairwise(entry):
                continue
            for subset, metrics in entry.subsets.items():
                message = f"{dataset_name(source)} / {subset}: 0 pairs"
                if not metrics.pairs and message not in out:
                    out.append(message)
    return out


def _pairwise_markdown(reports: list[EvalReport], labels: list[str], source: str) -> list[str]:
    """A pairwise dataset: the metric table, accuracy per subset, RewardBench sections."""
    dataset = dataset_name(source)
    lines = [f"## {dataset}", ""]
    rows = []
    for label, report in zip(labels, reports, strict=True):
        entry = report.datasets.get(source)
        if entry is not None:
            rows.append([escape_cell(label), *(_fmt(get(entry.overall)) for _, get in METRIC_COLUMNS)])
    longer_row = [MISSING] * len(METRIC_COLUMNS)
    longer_row[[name for name, _ in METRIC_COLUMNS].index("accuracy")] = _fmt(_longer_wins(reports, source))
    rows.append(["longer wins", *longer_row])
    lines += markdown_table(["model", *(name for name, _ in METRIC_COLUMNS)], rows) + [""]

    entries = [report.datasets.get(source) for report in reports]
    subsets = list(dict.fromkeys(s for e in entries if e is not None for s in e.subsets))
    if subsets:
        lines += [f"### {dataset}: accuracy per subset", ""]
        rows = []
        for subset in subsets:
            found = [e.subsets.get(subset) if e is not None else None for e in entries]
            pairs = next((m.pairs for m in found if m is not None), None)
            cells = [_fmt(m.accuracy if m is not None else None) for m in found]
            rows.append([escape_cell(subset), _fmt(pairs), *cells])
        lines += markdown_table(["subset", "pairs", *labels], rows) + [""]

    benches = [
        (label, e.rewardbench) for label, e in zip(labels, entries, strict=True) if e and e.rewardbench
    ]
    sections = list(dict.fromkeys(s for _, bench in benches for s in bench.sections))
    if sections:
        lines += [f"### {dataset}: RewardBench sections", ""]
        rows = [
            [escape_cell(label), *(_fmt(bench.sections.get(s)) for s in sections), _fmt(bench.score)]
            for label, bench in benches
        ]
        lines += markdown_table(["model", *sections, "score"], rows) + [""]
    return lines


def markdown_summary(reports: list[EvalReport | Mapping[str, Any]]) -> str:
    """Several `vrm eval` reports side by side as a markdown document."""
    reports = [as_report(r) for r in reports]
    labels = model_labels(reports)
    lines = ["# vrm eval summary", ""]
    for label, report in zip(labels, reports, strict=True):
        lines.append(
            f"- **{escape_cell(label)}**: `{report.model or '?'}` ({report.head_type or '?'}, "
            f"K={report.num_objectives})"
        )
    warnings = _warnings(reports, labels)
    lines += [
        "",
        "**Warnings:** " + ("; ".join(escape_cell(w) for w in warnings) if warnings else "none"),
        "",
    ]
    for source in sources(reports, is_pairwise):
        lines += _pairwise_markdown(reports, labels, source)
    for source in sources(reports, lambda entry: entry.convention == "rm-bench"):
        lines += [f"## {dataset_name(source)} (RM-Bench)", ""]
        rows = []
        for label, report in zip(labels, reports, strict=True):
            entry = report.datasets.get(source)
            if entry is None or entry.convention != "rm-bench":
                continue
            for subset, scores in [("overall", entry.overall), *entry.subsets.items()]:
                cells = [_fmt(getattr(scores, c)) for c in RM_BENCH_COLUMNS]
                rows.append(
                    [escape_cell(label), "overall" if subset == "overall" else escape_cell(subset), *cells]
                )
        lines += markdown_table(["model", "subset", *RM_BENCH_COLUMNS], rows, left=2) + [""]
    lines += _best_of_k_markdown(reports, labels)
    return "\n".join(lines).rstrip() + "\n"


def _best_of_k_markdown(reports: list[EvalReport], labels: list[str]) -> list[str]:
    """Best-of-k datasets (RMB best-of-n, RewardBench 2): overall, per subset (full names), RewardBench 2 scores."""
    lines: list[str] = []
    for source in sources(reports, lambda entry: entry.convention in BEST_OF_K_CONVENTIONS):
        entries = [
            (label, report.datasets.get(source)) for label, report in zip(labels, reports, strict=True)
        ]
        entries = [(label, entry) for label, entry in entries if entry]
        lines += [f"## {dataset_name(source)} (best-of-k)", ""]
        rows = [
            [escape_cell(label), *(_fmt(getattr(e.overall, c)) for c in BEST_OF_K_COLUMNS)]
            for label, e in entries
        ]
        lines += markdown_table(["model", *BEST_OF_K_COLUMNS], rows) + [""]
        subsets = list(dict.fromkeys(s for _, e in entries for s in e.subsets))
        if subsets:
            lines += ["### best-of-k accuracy per subset", ""]
            rows = [
                [
                    escape_cell(s),
                    *(_fmt(e.subsets[s].accuracy if s in e.subsets else None) for _, e in entries),
                ]
                for s in subsets
            ]
            lines += markdown_table(["subset", *(label for label, _ in entries)], rows) + [""]
        benches = [(label, e.rewardbench2) for label, e in entries if e.rewardbench2]
        if benches:
            names = list(dict.fromkeys(n for _, b in benches for n in b.subsets))
            rows = [
                [escape_cell(lb), *(_fmt(b.subsets.get(n)) for n in names), _fmt(b.score)]
                for lb, b in benches
            ]
            lines += ["### RewardBench 2", ""] + markdown_table(["model", *names, "score"], rows) + [""]
    return lines


def write_markdown(reports: list[EvalReport | Mapping[str, Any]], path: str) -> str:
    """Write `markdown_summary(reports)` to `path` atomically; return the path."""
    text = markdown_summary(reports)
    with atomic_output(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
