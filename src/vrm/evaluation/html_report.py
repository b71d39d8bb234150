"""`vrm eval` reports as one self-contained HTML page (`vrm eval --html report.html`).

The page holds what the other outputs hold, drawn by the same code:

* the tables of `vrm.evaluation.markdown.markdown_summary` (metrics per dataset, accuracy per subset,
  RewardBench sections, RM-Bench difficulties, best-of-k results, warnings), rendered from its markdown, so
  that the markdown and the HTML summaries cannot disagree;
* the figures of `vrm.evaluation.plots` (the reliability diagram, one objective-weights heatmap per
  multi-objective model) and, for best-of-k datasets, `best_of_k_figure`: accuracy per subset of each model
  against the accuracy of a random pick (the report's `chance`, 1 / C(k, #chosen) averaged over prompts).

Every figure is a PNG inlined as a base64 `data:` URI and the styles are inline: the file refers to nothing
outside itself, so it can be mailed, attached to a run or opened on a machine without network.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping
from typing import Any

from vrm.data.files import atomic_output
from vrm.evaluation.markdown import markdown_summary
from vrm.evaluation.plots import literal_text, reliability_figure, weights_figure
from vrm.evaluation.report import BEST_OF_K_CONVENTIONS, EvalReport, as_report
from vrm.evaluation.text import dataset_name, is_pairwise, model_labels, number, sources

AnyReport = EvalReport | Mapping[str, Any]
FIGURE_DPI = 90  # the reliability diagram and a heatmap side by side on a 1400-pixel-wide page

STYLE = """
body { margin: 0 auto; max-width: 1400px; padding: 16px 24px 48px; color: #1d2430;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 22px; margin: 8px 0 12px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d8dee6; }
h3 { font-size: 15px; margin: 18px 0 6px; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f5f8; padding: 1px 4px;
       border-radius: 3px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { border: 1px solid #d8dee6; padding: 3px 8px; white-space: nowrap; }
th { background: #f3f5f8; white-space: normal; min-width: 3em; vertical-align: bottom; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
.figures { display: flex; flex-wrap: wrap; gap: 16px 24px; align-items: flex-start; }
figure { margin: 8px 0 16px; display: table; }  /* a table: the caption wraps at the image's width */
figure img { max-width: 100%; height: auto; border: 1px solid #e6eaef; }
figcaption { display: table-caption; caption-side: bottom; color: #5f6b7a; font-size: 12px; margin-top: 4px; }
nav { color: #5f6b7a; font-size: 13px; }
nav a { color: #2f6fd6; margin-right: 12px; }
"""


# ----- figures ------------------------------------------------------------------------------------------------
@literal_text
def figure_data_uri(figure: Any) -> str:
    """A matplotlib figure as a `data:image/png;base64,...` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@literal_text
def best_of_k_figure(reports: list[AnyReport]) -> Any:
    """Best-of-k accuracy of each model overall and per subset (one panel per best-of-k dataset), with the
    accuracy of a random pick (`chance`) marked on each row; None without best-of-k data."""
    reports = [as_report(r) for r in reports]
    found = sources(reports, lambda entry: entry.convention in BEST_OF_K_CONVENTIONS)
    if not found:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = model_labels(reports)
    panels = []
    for source in found:
        entries = [
            (label, report.datasets.get(source)) for label, report in zip(labels, reports, strict=True)
        ]
        entries = [(label, entry) for label, entry in entries if entry is not None]
        rows = ["overall", *dict.fromkeys(s for _, entry in entries for s in entry.subsets)]
        panels.append((source, entries, rows))
    height = sum(0.9 + 0.28 * len(rows) * max(1, len(entries)) ** 0.5 for _, entries, rows in panels) + 0.6
    width = 8.0
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(panels), 1, squeeze=False)
    for axes, (source, entries, rows) in zip(grid[:, 0], panels, strict=True):
        bar = 0.8 / max(1, len(entries))
        for index, (label, entry) in enumerate(entries):
            metrics = [entry.overall if row == "overall" else entry.subsets.get(row) for row in rows]
            accuracy = [number(m.accuracy) if m is not None else None for m in metrics]
            positions = [i - 0.4 + bar * (index + 0.5) for i in range(len(rows))]
            axes.barh(
                [p for p, a in zip(positions, accuracy, strict=True) if a is not None],
                [a for a in accuracy if a is not None],
                height=bar,
                color=f"C{index % 10}",
                label=label,
            )
        for i, row in enumerate(rows):
            chances = [
                number((entry.overall if row == "overall" else entry.subsets.get(row)).chance)
                for _, entry in entries
                if row == "overall" or row in entry.subsets
            ]
            chance = next((c for c in chances if c is not None), None)
            if chance is not None:
                axes.plot([chance, chance], [i - 0.45, i + 0.45], color="black", linewidth=1.5)
        axes.set_yticks(range(len(rows)), labels=[_cut(row, 40) for row in rows], fontsize=8)
        axes.invert_yaxis()
        axes.set_xlim(0.0, 1.0)
        axes.set_xlabel("best-of-k accuracy (black tick: a random pick's)", fontsize=8)
        axes.set_title(f"{dataset_name(source)} (best-of-k)", fontsize=10)
        axes.grid(True, axis="x", alpha=0.3)
        axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def report_figures(reports: list[AnyReport]) -> list[tuple[str, str, Any]]:
    """(anchor, caption, figure) of every figure the reports have: the reliability diagram (pairwise
    datasets), each multi-objective model's weights heatmap, the best-of-k chart."""
    reports = [as_report(r) for r in reports]
    figures = []
    if sources(reports, is_pairwise):
        caption = (
            "Reliability diagram: accuracy against confidence max(p, 1 - p) of each model's calibration bins "
            "(marker size and number: pairs in the bin); the dashed line is perfect calibration."
        )
        figures.append(("reliability", caption, reliability_figure(reports)))
    for label, report in zip(model_labels(reports), reports, strict=True):
        figure = weights_figure(report)
        if figure is not None:
            caption = f"{label}: mean objective weights E[w] per dataset / subset."
            figures.append((f"weights-{_slug(label)}", caption, figure))
    figure = best_of_k_figure(reports)
    if figure is not None:
        caption = "Best-of-k: how often each model ranks a prompt's best answer first, against chance."
        figures.append(("best-of-k", caption, figure))
    return figures


# ----- the markdown summary as HTML ---------------------------------------------------------------------------
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _inline(text: str) -> str:
    """Escaped text with the markdown summary's inline marks: **bold** and `code`."""
    out = html.escape(text, quote=True)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(inner)]


def _table(lines: list[str]) -> str:
    header, alignment, *rows = (_cells(line) for line in lines)
    numeric = [spec.endswith(":") and not spec.startswith(":") for spec in alignment]
    klass = [' class="num"' if right else "" for right in numeric]
    head = "".join(f"<th{k}>{_inline(cell)}</th>" for k, cell in zip(klass, header, strict=False))
    body = "".join(
        "<tr>"
        + "".join(f"<td{k}>{_inline(cell)}</td>" for k, cell in zip(klass, row, strict=False))
        + "</tr>"
        for row in rows
    )
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def markdown_to_html(text: str) -> str:
    """The markdown `markdown_summary` writes (headings, bullet lists, paragraphs, tables, **bold**, `code`) as
    HTML; every piece of text is escaped."""
    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            index += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            title = line[level:].strip()
            out.append(f'<h{level} id="{_slug(title)}">{_inline(title)}</h{level}>')
            index += 1
        elif line.startswith("|"):
            end = index
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            out.append(_table(lines[index:end]))
            index = end
        elif line.startswith("- "):
            items = []
            while index < len(lines) and lines[index].startswith("- "):
                items.append(f"<li>{_inline(lines[index][2:])}</li>")
                index += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            paragraph = []
            while (
                index < len(lines) and lines[index].strip() and not lines[index].startswith(("#", "|", "- "))
            ):
                paragraph.append(lines[index])
                index += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


# ----- the page -----------------------------------------------------------------------------------------------
def html_report(reports: list[AnyReport]) -> str:
    """Several `vrm eval` reports side by side as one self-contained HTML document."""
    reports = [as_report(r) for r in reports]
    summary = markdown_to_html(markdown_summary(reports))
    figures = report_figures(reports)
    parts = []
    for anchor, caption, figure in figures:
        parts.append(
            f'<figure id="{html.escape(anchor)}"><img src="{figure_data_uri(figure)}" '
            f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
    headings = re.findall(r'<h2 id="([^"]+)">(.*?)</h2>', summary)
    links = [f'<a href="#{anchor}">{title}</a>' for anchor, title in headings]
    if figures:
        links.append('<a href="#figures">figures</a>')
    title = "vrm eval report: " + ", ".join(model_labels(reports))
    figures_html = (
        '<h2 id="figures">Figures</h2>\n<div class="figures">\n' + "\n".join(parts) + "\n</div>"
        if parts
        else ""
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f"<nav>{' '.join(links)}</nav>\n{summary}\n{figures_html}\n</body></html>\n"
    )


def write_html(reports: list[AnyReport], path: str) -> str:
    """Write `html_report(reports)` to `path` atomically; return the path."""
    text = html_report(reports)
    with atomic_output(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
