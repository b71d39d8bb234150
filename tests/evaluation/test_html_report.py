"""The HTML report of `vrm eval --html` (hand-built reports, no model needed; one end-to-end run through the
command): self-contained, the markdown summary's tables, the figures inlined, and every image shown by a real
browser (`browser` marker)."""

from __future__ import annotations

import base64
import html
import os
import re

import pytest

pytest.importorskip("matplotlib")

from vrm.cli import main
from vrm.evaluation.html_report import html_report, markdown_to_html, write_html
from vrm.evaluation.markdown import markdown_summary
from vrm.evaluation.plots import write_plots
from vrm.evaluation.report import as_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pairwise(accuracy: float, weights: list[float]) -> dict:
    return {
        "pairs": 40,
        "accuracy": accuracy,
        "ties": 0,
        "nll": 0.6,
        "brier": 0.21,
        "ece": 0.05,
        "calibration_bins": [
            {"low": 0.5, "high": 0.7, "count": 30, "confidence": 0.6, "accuracy": accuracy - 0.1},
            {"low": 0.7, "high": 1.0, "count": 10, "confidence": 0.8, "accuracy": accuracy},
        ],
        "mean_reward_std": 0.3,
        "objective_weights": weights,
        "length_bias": {"longer_wins_accuracy": 0.55, "spearman_reward_length": 0.1},
    }


def _best_of_k(accuracy: float) -> dict:
    return {"prompts": 12, "accuracy": accuracy, "chance": 0.25, "ties": 0, "pairwise_accuracy": 0.6}


@pytest.fixture
def reports() -> list[dict]:
    """A 3-objective model on a pairwise and a best-of-k dataset, and a one-objective model on the pairwise one
    (its name holds markup: the page must show it as text)."""
    vrm = {
        "model": "runs/vrm-k3",
        "head_type": "vrm",
        "num_objectives": 3,
        "objective_names": ["helpful", "harmless", "honest"],
        "datasets": {
            "data/prefs.jsonl": {
                "convention": "pairwise",
                "overall": _pairwise(0.75, [0.5, 0.3, 0.2]),
                "subsets": {
                    "chat": _pairwise(0.8, [0.6, 0.3, 0.1]),
                    "code|math": _pairwise(0.7, [0.2, 0.2, 0.6]),
                },
                "invalid_rows": {"count": 2, "rows": []},
            },
            "data/bok.jsonl": {
                "convention": "best-of-k",
                "overall": _best_of_k(0.5),
                "subsets": {"Focus": _best_of_k(0.58), "Math": _best_of_k(0.42)},
            },
        },
    }
    bt = {
        "model": "runs/<b>bt</b>",
        "head_type": "bt",
        "num_objectives": 1,
        "datasets": {
            "data/prefs.jsonl": {
                "convention": "pairwise",
                "overall": _pairwise(0.66, [1.0]),
                "subsets": {"chat": _pairwise(0.7, [1.0])},
            }
        },
    }
    return [vrm, bt]


def _images(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


def test_html_report_refers_to_nothing_outside_itself(reports):
    page = html_report(reports)
    assert page.startswith("<!doctype html>")
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page)
    assert all(link.startswith("#") for link in re.findall(r"\bhref=\"([^\"]*)\"", page))
    assert not re.search(r"url\(", page)  # no style fetches anything either


def test_html_report_embeds_each_figure_as_a_png(reports):
    page = html_report(reports)
    sources = _images(page)
    # the reliability diagram, one heatmap (only the 3-objective model has one), the best-of-k chart
    assert len(sources) == 3
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        data = base64.b64decode(source.removeprefix("data:image/png;base64,"), validate=True)
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert {"reliability", "weights-vrm-k3", "best-of-k"} <= set(re.findall(r"<figure id=\"([^\"]+)\"", page))


def test_html_report_has_every_table_of_the_markdown_summary(reports):
    page = html_report(reports)
    markdown = markdown_summary(reports)
    tables = [line for line in markdown.splitlines() if line.startswith("| :---")]
    assert page.count("<table>") == len(tables) >= 4
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE):
        assert html.escape(heading) in page
    # a cell holding an escaped pipe, the warnings and a right-aligned number
    assert "<td>code|math</td>" in page
    assert "2 unusable rows skipped" in page
    assert '<td class="num">0.750</td>' in page


def test_html_report_shows_markup_in_names_as_text(reports):
    page = html_report(reports)
    assert "<b>bt</b>" not in page
    assert "&lt;b&gt;bt&lt;/b&gt;" in page


def test_dollar_signs_in_names_are_drawn_as_text_not_math(reports, tmp_path):
    # two `$` in one name would start matplotlib's math mode, which fails to parse `$_$` at savefig
    reports[0]["datasets"]["data/bok.jsonl"]["subsets"]["price $10_vs_$20"] = _best_of_k(0.5)
    reports[0]["objective_names"] = ["a$_$", "b", "c"]
    reports[1]["model"] = "runs/cost$_$x"
    page = html_report(reports)
    assert len(_images(page)) == 3
    assert write_plots([as_report(r) for r in reports], str(tmp_path / "plots"))


def test_html_report_without_pairwise_data_has_no_reliability_diagram(reports):
    only_best_of_k = dict(reports[0], datasets={"data/bok.jsonl": reports[0]["datasets"]["data/bok.jsonl"]})
    page = html_report([only_best_of_k])
    assert len(_images(page)) == 1 and 'id="best-of-k"' in page
    assert 'id="reliability"' not in page


def test_markdown_to_html_renders_headings_lists_and_tables():
    text = "# Title\n\n- **a**: `x<y`\n\n| m | v |\n| :--- | ---: |\n| a\\|b | 1 |\n\nplain & text\n"
    page = markdown_to_html(text)
    assert '<h1 id="title">Title</h1>' in page
    assert "<ul><li><strong>a</strong>: <code>x&lt;y</code></li></ul>" in page
    assert '<th>m</th><th class="num">v</th>' in page
    assert '<td>a|b</td><td class="num">1</td>' in page
    assert "<p>plain &amp; text</p>" in page


def test_write_html_is_atomic_and_leaves_no_staging_file(tmp_path, reports):
    path = str(tmp_path / "out" / "report.html")
    assert write_html(reports, path) == path
    assert open(path, encoding="utf-8").read() == html_report(reports)
    assert os.listdir(tmp_path / "out") == ["report.html"]


def test_eval_command_writes_the_html_report(tmp_path, three_objective_model_dir, pairs_file, capsys):
    path = str(tmp_path / "report.html")
    argv = ["eval", "--model", three_objective_model_dir, "--dataset", pairs_file, "--no_progress"]
    assert main([*argv, "--html", path]) == 0
    assert f"[vrm] HTML report written to {path}" in capsys.readouterr().out
    page = open(path, encoding="utf-8").read()
    assert len(_images(page)) == 2  # the reliability diagram and the weights heatmap (K = 3)
    assert "pairs.jsonl" in page and not re.search(r"https?://", page)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("directory", "--html .* is a directory"),
        ("same-as-output", "--html and --output are the same file"),
        ("under-a-file", "--html .* is not a directory"),
    ],
)
def test_eval_refuses_a_bad_html_path_before_scoring(tmp_path, capsys, where, message):
    report = str(tmp_path / "report.json")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = {
        "directory": str(tmp_path),
        "same-as-output": report,
        "under-a-file": str(blocker / "report.html"),
    }[where]
    # the model does not exist: a refusal that names --html comes before anything loads
    argv = ["eval", "--model", str(tmp_path / "missing"), "--dataset", "x.jsonl", "--output", report]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--html", path])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not os.path.exists(report)


# ----- in a real browser --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.browser
def test_every_image_of_the_html_report_loads_in_a_browser(tmp_path, reports, chromium):
    path = write_html(reports, str(tmp_path / "report.html"))
    chromium.get("file://" + path)
    sizes = chromium.execute_script(
        "return [...document.images].map((image) => [image.complete, image.naturalWidth, image.naturalHeight]);"
    )
    assert len(sizes) == 3
    assert all(complete and width > 0 and height > 0 for complete, width, height in sizes), sizes
    rows = chromium.execute_script("return document.querySelectorAll('table tbody tr').length;")
    assert rows >= 8
