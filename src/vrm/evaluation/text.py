"""Text helpers shared by the `vrm eval` summaries (`vrm.evaluation.plots`, `vrm.evaluation.markdown`) and the benchmarks' reports:
markdown table cells and tables, model and dataset labels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable

from vrm.evaluation.report import PAIRWISE_CONVENTIONS, DatasetReport, EvalReport

MISSING = "–"


def model_name(report: EvalReport) -> str:
    """Basename of the report's model path (`runs/vrm-k3/` -> `vrm-k3`)."""
    model = str(report.model or "model")
    return os.path.basename(os.path.normpath(model)) or model


def model_labels(reports: list[EvalReport]) -> list[str]:
    """One distinct label per report: the model basename, suffixed `#2`, `#3`, ... when repeated."""
    labels, seen = [], {}
    for report in reports:
        name = model_name(report)
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


def dataset_name(source: str) -> str:
    """Basename of a dataset source (a file path, a directory or a hub name)."""
    return os.path.basename(os.path.normpath(source)) or source


def is_pairwise(entry: DatasetReport) -> bool:
    return entry.convention in PAIRWISE_CONVENTIONS


def sources(reports: list[EvalReport], keep: Callable[[DatasetReport], bool]) -> list[str]:
    """Dataset sources of all reports, in first-seen order, whose entries satisfy `keep`."""
    out: list[str] = []
    for report in reports:
        for source, entry in report.datasets.items():
            if source not in out and keep(entry):
                out.append(source)
    return out


def number(value: object) -> float | None:
    """`value` as a float, or None when it is missing or not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def format_cell(value: object, digits: int = 3) -> str:
    """A table cell: `–` when missing, `nan` for NaN, integers as is, floats with `digits` decimals."""
    if value is None:
        return MISSING
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return escape_cell(str(value))


def escape_cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: Iterable[list[str]], left: int = 1) -> list[str]:
    """Lines of a markdown table (the first `left` columns left-aligned, the others right-aligned)."""
    lines = [
        "| " + " | ".join(escape_cell(h) for h in header) + " |",
        "| " + " | ".join(":---" if i < left else "---:" for i in range(len(header))) + " |",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines
