"""The terminal output of `vrm eval`: a table per report, plus lines for benchmark scores and data counts.

The pairwise table shows the plug-in calibration (`nll`, `ece` of sigmoid(r+ - r-)) beside the predictive one
(`p-nll`, `p-ece`: integrated over the posterior, with the checkpoint's temperature; `vrm.evaluation.calibration`); the
error-detection table shows, per dataset and subset, the AUROC of each uncertainty signal as a detector of
the wrong pairs side by side: the margin, the posterior std, the flip probability, and any further signal in
`error_auroc` (e.g. an ensemble's `ensemble_std`) as a column of its own.

Long dataset / subset names are cut with an ellipsis (`NAME_WIDTH` characters) so that a row never wraps
into what looks like another row; the JSON report and the markdown summary keep the full names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from vrm.evaluation.report import BestOfKMetrics, DatasetReport, EvalReport, PairwiseMetrics, as_report
from vrm.evaluation.rows import describe_invalid

NAME_WIDTH = 40


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """`name` on one line, cut to `width` characters with an ellipsis."""
    name = " ".join(name.split()) if "\n" in name else name
    return name if len(name) <= width else name[: width - 1] + "…"


def _tokenization_line(name: str, entry: DatasetReport) -> str | None:
    stats = entry.tokenization
    if not stats:
        return None
    truncated = f"truncated {stats.prompt_truncated} prompts, {stats.response_truncated} responses"
    if entry.convention in ("best-of-k", "rewardbench2"):
        return f"{name}: {stats.pairs} answers scored; {truncated} (to fit max_length)"
    dropped = stats.dropped_too_long + stats.dropped_identical
    return (
        f"{name}: {stats.pairs} pairs -> {stats.kept} scored; {truncated}; dropped {dropped} "
        f"({stats.dropped_too_long} too long, {stats.dropped_identical} identical chosen/rejected)"
    )


E_W_SHOWN = 4  # objectives shown in the E(w) cell; a larger K shows its largest weights (all are in the JSON)


def weights_by_name(weights: list[float] | None, names: list[str] | None) -> str:
    """The `E(w)` cell: each objective's mean weight after its name (`objective_k` when the model names none, as
    the server calls them), in the model's order; with more than `E_W_SHOWN` objectives the largest
    `E_W_SHOWN - 1` and how many more; "-" for a model with one objective."""
    weights = weights or []
    if len(weights) < 2:
        return "-"
    names = names if names and len(names) == len(weights) else [f"objective_{k}" for k in range(len(weights))]
    shown = list(range(len(weights)))
    if len(weights) > E_W_SHOWN:
        shown = sorted(sorted(shown, key=lambda k: -weights[k])[: E_W_SHOWN - 1])
    cells = [f"{names[k]} {weights[k]:.2f}" for k in shown]
    if len(shown) < len(weights):
        cells.append(f"+{len(weights) - len(shown)} more")
    return ", ".join(cells)


def _pairwise_table(report: EvalReport):
    from rich.table import Table

    table = Table(title=f"vrm eval — {report.model} ({report.head_type}, K={report.num_objectives})")
    for column in (
        "dataset / subset",
        "pairs",
        "accuracy",
        "ties",
        "margin",
        "nll",
        "ece",
        "p-nll",
        "p-ece",
        "reward_std",
        "E(w)",
    ):
        left = column.startswith("dataset") or column == "E(w)"
        table.add_column(column, justify="left" if left else "right", no_wrap=column.startswith("dataset"))
    return table


ERROR_SIGNALS = (
    "margin",
    "std",
    "flip",
)  # always shown first; other `error_auroc` keys follow in report order


def _error_signals(report: EvalReport) -> list[str]:
    """The uncertainty signals of the report's pairwise entries: margin, std, flip, then any others."""
    names = list(ERROR_SIGNALS)
    for entry in report.datasets.values():
        if not entry.is_pairwise:
            continue
        for metrics in [entry.overall, *entry.subsets.values()]:
            for name in getattr(metrics, "error_auroc", None) or {}:
                if name not in names:
                    names.append(name)
    return names


def _error_table(report: EvalReport, signals: list[str]):
    from rich.table import Table

    table = Table(title="error detection — AUROC for the wrong pairs (0.5 = chance)")
    table.add_column("dataset / subset", justify="left", no_wrap=True)
    for column in ("pairs", "wrong", *signals):
        table.add_column(column, justify="right")
    return table


def _best_of_k_table(report: EvalReport):
    from rich.table import Table

    table = Table(title=f"best-of-k — {report.model} ({report.head_type}, K={report.num_objectives})")
    for column in (
        "dataset / subset",
        "prompts",
        "answers",
        "accuracy",
        "chance",
        "ties",
        "pairwise",
        "margin",
    ):
        table.add_column(column, justify="left" if column.startswith("dataset") else "right", no_wrap=True)
    return table


def format_report(report: EvalReport | Mapping[str, Any]) -> str:
    """A readable table of an evaluation report (one row per dataset and subset), then notes."""
    from io import StringIO

    from rich.console import Console

    from vrm.evaluation.best_of_k import rollup_categories  # (imports torch: only when a table is printed)

    report = as_report(report)
    table, best = _pairwise_table(report), _best_of_k_table(report)
    signals = _error_signals(report)
    errors = _error_table(report, signals)

    def number(value: Any) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    def row(name: str, m: PairwiseMetrics) -> None:
        if not m.pairs:
            table.add_row(short_name(name), "0", *["-"] * 9)
            return
        auroc = m.error_auroc or {}
        wrong = m.pairs - round((m.accuracy or 0.0) * m.pairs)
        errors.add_row(short_name(name), str(m.pairs), str(wrong), *(number(auroc.get(s)) for s in signals))
        weights = m.objective_weights or []
        table.add_row(
            short_name(name),
            str(m.pairs),
            f"{m.accuracy:.3f}",
            str(m.ties),
            f"{m.mean_margin:.3f}",
            f"{m.nll:.3f}" if not math.isnan(m.nll) else "nan",
            f"{m.ece:.3f}",
            number(m.predictive_nll),
            number(m.predictive_ece),
            f"{m.mean_reward_std:.3f}" if m.mean_reward_std else "–",  # exactly 0: a head without a posterior
            weights_by_name(weights, report.objective_names),
        )

    def best_row(name: str, m: BestOfKMetrics) -> None:
        if not m.prompts:
            best.add_row(short_name(name), "0", *["-"] * 6)
            return
        best.add_row(
            short_name(name),
            str(m.prompts),
            f"{m.mean_candidates:.1f}",
            f"{m.accuracy:.3f}",
            f"{m.chance:.3f}",
            str(m.ties),
            f"{m.pairwise_accuracy:.3f} ({m.pairs})",
            f"{m.mean_margin:.3f}",
        )

    notes = []
    for source, entry in report.datasets.items():
        name = os.path.basename(source)
        convention = entry.convention
        if convention == "rm-bench":
            for label, scores in [
                (name, entry.overall),
                *((f"  {short_name(k)}", v) for k, v in entry.subsets.items()),
            ]:
                notes.append(
                    f"{label:<24} RM-Bench ({scores.prompts} prompts): easy {scores.easy:.3f}  "
                    f"normal {scores.normal:.3f}  hard {scores.hard:.3f}  average {scores.average:.3f}"
                )
        elif convention in ("best-of-k", "rewardbench2"):
            best_row(name, entry.overall)
            categories = rollup_categories(entry.subsets)
            for subset, metrics in (categories or entry.subsets).items():
                best_row(f"  {subset}", metrics)
            if categories:
                notes.append(
                    f"{name}: {len(entry.subsets)} subsets shown as their {len(categories)} top-level categories; "
                    "each subset is in the JSON report and --markdown"
                )
            if entry.rewardbench2 is not None:
                bench = entry.rewardbench2
                subsets = "  ".join(f"{k} {v:.3f}" for k, v in bench.subsets.items())
                if bench.score is None:
                    notes.append(f"{name}: RewardBench 2 {subsets}; no overall score ({bench.note})")
                else:
                    notes.append(f"{name}: RewardBench 2 {subsets}; score {bench.score:.3f}")
        else:
            row(name, entry.overall)
            for subset, metrics in entry.subsets.items():
                row(f"  {subset}", metrics)
            if entry.rewardbench is not None:
                sections = "  ".join(f"{k} {v:.3f}" for k, v in entry.rewardbench.sections.items())
                notes.append(f"{name}: RewardBench sections {sections}; score {entry.rewardbench.score:.3f}")
        for line in (
            _tokenization_line(name, entry),
            describe_invalid({"invalid_rows": entry.invalid_rows.to_dict()}),
        ):
            if line:
                notes.append(line if line.startswith(name) else f"{name}: {line}")
    buffer = StringIO()
    console = Console(file=buffer, width=140, force_terminal=False)
    for shown in (table, errors, best):
        if shown.row_count:
            console.print(shown)
    for note in notes:
        console.print(note, markup=False, soft_wrap=True)
    return buffer.getvalue()
