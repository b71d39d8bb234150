"""Best-of-k files (one chosen, several rejected): evaluation, reports, and RewardBench 2's scores."""

import gzip
import json

import numpy as np
import pytest
import torch
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.evaluation.benchmark_rules import detect_format, rewardbench2_ties_score
from vrm.evaluation.best_of_k import evaluate_best_of_k
from vrm.evaluation.rows import InvalidRows
from vrm.evaluation.table import format_report
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.scores import SequenceScores


def message(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def rmb_rows() -> list[dict]:
    """RMB's best-of-n format: conversational prompt, one chosen message list, 2-3 losing message lists."""
    rows = []
    for i, (prompt, chosen, rejected) in enumerate(PAIRS):
        losers = [message(rejected), message("No."), *([message("It depends.")] if i % 2 else [])]
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": message(chosen),
                "rejected": losers,
                "objective": "helpfulness",
                "subset": "Helpfulness/Chat/Casual Conversation" if i % 2 else "Harmlessness/S1",
            }
        )
    return rows


def write_jsonl_gz(path: str, rows: list[dict]) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def test_best_of_k_file_is_evaluated_and_reported(tmp_path, three_objective_model_dir, capsys):
    data = write_jsonl_gz(str(tmp_path / "rmb_bestofn.jsonl.gz"), rmb_rows())
    report_path, md_path = str(tmp_path / "r.json"), str(tmp_path / "r.md")
    argv = [
        "eval",
        "--model",
        three_objective_model_dir,
        "--dataset",
        data,
        "--output",
        report_path,
        "--markdown",
        md_path,
    ]
    assert main([*argv, "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "best-of-k" in printed and "pairwise" in printed
    entry = json.load(open(report_path))["datasets"][data]
    assert entry["convention"] == "best-of-k"
    assert set(entry["subsets"]) == {"Helpfulness/Chat/Casual Conversation", "Harmlessness/S1"}

    pipeline = RewardPipeline.from_pretrained(
        three_objective_model_dir
    )  # expected: the same scores computed by hand
    right, wins, pairs = 0, 0, 0
    for row in rmb_rows():
        prompt = row["prompt"]
        answers = [row["chosen"], *row["rejected"]]
        reward = pipeline.score([prompt] * len(answers), answers).reward
        right += bool((reward[0] > reward[1:]).all())
        wins += int((reward[0] > reward[1:]).sum())
        pairs += len(answers) - 1
    overall = entry["overall"]
    assert overall["prompts"] == len(PAIRS) and overall["pairs"] == pairs
    assert overall["accuracy"] == pytest.approx(right / len(PAIRS))
    assert overall["pairwise_accuracy"] == pytest.approx(wins / pairs)
    assert overall["chance"] == pytest.approx((3 * (1 / 3) + 3 * (1 / 4)) / 6)
    markdown = open(md_path).read()
    assert "(best-of-k)" in markdown and "Helpfulness/Chat/Casual Conversation" in markdown


def _fake_scorer(table: dict[str, float]):
    class Scorer:
        def score(self, prompts, responses, progress=False):
            reward = torch.tensor([table[r] for r in responses], dtype=torch.float32)
            n = len(responses)
            return SequenceScores(reward, torch.zeros(n), torch.ones(n, 1), reward[:, None])

    return Scorer()


def test_rewardbench2_convention_and_ties_score():
    rows = [  # RewardBench 2's format: chosen and rejected are lists of texts
        {"id": "1", "prompt": "p", "chosen": ["a"], "rejected": ["b", "c", "d"], "subset": "Focus"},
        {"id": "2", "prompt": "p", "chosen": ["tie"], "rejected": ["tie", "c", "d"], "subset": "Focus"},
        {"id": "3", "prompt": "p", "chosen": ["b"], "rejected": ["a", "c", "d"], "subset": "Math"},
        {"id": "ref:0", "prompt": "p", "chosen": ["a"], "rejected": ["c", "d"], "subset": "Ties"},
        {
            "id": "tied:0",
            "prompt": "p",
            "chosen": ["a", "a2", "a3"],
            "rejected": ["b", "c", "d"],
            "subset": "Ties",
        },
    ]
    assert detect_format(rows) == "rewardbench2"  # not RM-Bench, though a Ties row has 3 and 3 answers
    scores = {"a": 3.0, "a2": 2.9, "a3": 2.5, "b": 2.0, "c": 1.0, "d": 0.0, "tie": 1.5}
    entry = evaluate_best_of_k(
        _fake_scorer(scores), [(f"f:{i}", r) for i, r in enumerate(rows)], InvalidRows()
    )
    bench = entry["rewardbench2"]
    assert bench["subsets"]["Focus"] == pytest.approx((1 + 0.5) / 2)  # a shared top score counts 1/2
    assert bench["subsets"]["Math"] == 0.0
    # ref and tied both right; spread 0.5 < gaps (ref 2.0, tied 0.5)? tied gap 2.5-2.0 = 0.5, not > 0.5
    ties = rewardbench2_ties_score(
        [("ref:0", [3.0], [1.0, 0.0]), ("tied:0", [3.0, 2.9, 2.5], [2.0, 1.0, 0.0])]
    )
    margin = float(np.tanh(min(2.0, 0.5) / 0.5 - 1))
    assert ties["score"] == pytest.approx(0.3 + 0.3 + 0.2 * 0 + 0.2 * 0 + 0.01 * margin)
    assert bench["subsets"]["Ties"] == pytest.approx(ties["score"])
    # 3 of the 6 subsets: their mean is not RewardBench 2's score
    assert bench["score"] is None and bench["note"] == "partial: 3 of 6 subsets"
    assert bench["partial_mean"] == pytest.approx((0.75 + 0.0 + ties["score"]) / 3)
    assert "RewardBench 2" in format_report(
        {"model": "m", "head_type": "vrm", "num_objectives": 1, "datasets": {"rb2.jsonl": entry}}
    )


def test_rewardbench2_score_only_with_all_six_subsets():
    subsets = ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"]
    rows = [
        {"id": str(i), "prompt": "p", "chosen": ["a"], "rejected": ["b", "c"], "subset": s}
        for i, s in enumerate(subsets[:5])
    ] + [
        {"id": "ref:0", "prompt": "p", "chosen": ["a"], "rejected": ["b"], "subset": "Ties"},
        {"id": "tied:0", "prompt": "p", "chosen": ["a", "a2"], "rejected": ["b"], "subset": "Ties"},
    ]
    scorer = _fake_scorer({"a": 3.0, "a2": 2.5, "b": 1.0, "c": 0.0})
    full = evaluate_best_of_k(scorer, [(f"f:{i}", r) for i, r in enumerate(rows)], InvalidRows())
    bench = full["rewardbench2"]
    assert list(bench["subsets"]) == subsets and "note" not in bench
    assert bench["score"] == pytest.approx(np.mean(list(bench["subsets"].values())))
    partial = evaluate_best_of_k(scorer, [(f"f:{i}", r) for i, r in enumerate(rows[:2])], InvalidRows())
    assert partial["rewardbench2"]["score"] is None
    assert partial["rewardbench2"]["note"] == "partial: 2 of 6 subsets"
    assert "no overall score (partial: 2 of 6 subsets)" in format_report(
        {"model": "m", "head_type": "vrm", "num_objectives": 1, "datasets": {"rb2.jsonl": partial}}
    )


def test_hierarchical_subsets_are_rolled_up_by_category_in_the_terminal_table():
    """RMB names leaves `Helpfulness/Code/...`: the terminal table shows one row per top-level category (the
    metrics of all its prompts, exactly), the JSON entry keeps every leaf."""
    from vrm.evaluation.best_of_k import best_of_k_metrics
    from vrm.evaluation.report import BestOfKMetrics, as_report

    leaves = [
        "Helpfulness/Code/Python",
        "Helpfulness/Code/SQL",
        "Helpfulness/Chat",
        "Harmlessness/S1",
        "Harmlessness/S2",
    ]
    scores = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0, "e": 2.5}
    answers = [
        ("a", ["b", "c"]),
        ("c", ["a", "d"]),
        ("b", ["c", "d", "e"]),
        ("e", ["b"]),
        ("d", ["a", "b", "c"]),
    ]
    rows = [
        {"prompt": f"p{i}", "chosen": [chosen], "rejected": rejected, "subset": leaves[i % len(leaves)]}
        for i, (chosen, rejected) in enumerate(answers * 3)
    ]
    entry = evaluate_best_of_k(
        _fake_scorer(scores), [(f"f:{i}", r) for i, r in enumerate(rows)], InvalidRows()
    )
    assert set(entry["subsets"]) == set(leaves)
    text = format_report(
        {"model": "m", "head_type": "vrm", "num_objectives": 1, "datasets": {"rmb.jsonl": entry}}
    )
    assert "Helpfulness/" not in text and "Harmlessness/" not in text
    assert "5 subsets shown as their 2 top-level categories" in text
    report = as_report(
        {"model": "m", "head_type": "vrm", "num_objectives": 1, "datasets": {"rmb.jsonl": entry}}
    )
    from vrm.evaluation.best_of_k import rollup_categories

    rolled = rollup_categories(report.datasets["rmb.jsonl"].subsets)
    for category in ("Helpfulness", "Harmlessness"):
        mine = [r for r in rows if r["subset"].startswith(category + "/")]
        good = [np.array([scores[r["chosen"][0]]]) for r in mine]
        bad = [np.array([scores[x] for x in r["rejected"]]) for r in mine]
        expected = BestOfKMetrics.from_dict(best_of_k_metrics(good, bad))
        for name in (
            "prompts",
            "accuracy",
            "ties",
            "chance",
            "mean_candidates",
            "pairs",
            "pairwise_accuracy",
        ):
            assert getattr(rolled[category], name) == pytest.approx(getattr(expected, name)), (category, name)
        assert rolled[category].mean_margin == pytest.approx(expected.mean_margin)
        assert f"{category}" in text
