"""Issue 18, evaluation: best-of-k files, lenient rows, sampling, readable plots and tables, CLI help."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import PAIRS, write_pairs
from test_cli import train_argv
from test_modeling import build

from vrm.cli.main import main
from vrm.evaluation.benchmark_rules import detect_format, rewardbench2_ties_score
from vrm.evaluation.best_of_k import evaluate_best_of_k
from vrm.evaluation.markdown import markdown_summary
from vrm.evaluation.plots import reliability_figure, weights_figure
from vrm.evaluation.rows import InvalidRows, read_eval_rows, stratified_sample
from vrm.evaluation.table import format_report
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.scores import SequenceScores


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tiny_vrm"))
    model, tokenizer, _ = build("llama_chat", num_objectives=3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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


# ----- 1. best-of-k -------------------------------------------------------------------------------------------
def test_best_of_k_file_is_evaluated_and_reported(tmp_path, model_dir, capsys):
    data = write_jsonl_gz(str(tmp_path / "rmb_bestofn.jsonl.gz"), rmb_rows())
    report_path, md_path = str(tmp_path / "r.json"), str(tmp_path / "r.md")
    argv = ["eval", "--model", model_dir, "--dataset", data, "--output", report_path, "--markdown", md_path]
    assert main([*argv, "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "best-of-k" in printed and "pairwise" in printed
    entry = json.load(open(report_path))["datasets"][data]
    assert entry["convention"] == "best-of-k"
    assert set(entry["subsets"]) == {"Helpfulness/Chat/Casual Conversation", "Harmlessness/S1"}

    pipeline = RewardPipeline.from_pretrained(model_dir)  # expected: the same scores computed by hand
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


# ----- 2. odd rows --------------------------------------------------------------------------------------------
def test_eval_scores_empty_answers_and_skips_unusable_rows(tmp_path, model_dir, capsys):
    path = str(tmp_path / "odd.jsonl")
    lines = [json.dumps({"prompt": p, "chosen": c, "rejected": r}) for p, c, r in PAIRS]
    lines.insert(2, "{not json")  # line 3
    lines.insert(4, json.dumps({"prompt": "q", "chosen": "a"}))  # line 5: no rejected answer
    lines.append(json.dumps({"prompt": "q", "chosen": "", "rejected": "a real answer"}))  # empty: scored
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    report_path = str(tmp_path / "r.json")
    assert (
        main(["eval", "--model", model_dir, "--dataset", path, "--output", report_path, "--no_progress"]) == 0
    )
    printed = capsys.readouterr().out
    entry = json.load(open(report_path))["datasets"][path]
    assert entry["overall"]["pairs"] == len(PAIRS) + 1
    assert entry["invalid_rows"]["count"] == 2
    assert [r["location"] for r in entry["invalid_rows"]["rows"]] == [f"{path}:3", f"{path}:5"]
    assert "2 unusable row(s) skipped" in printed and f"{path}:3" in printed
    assert (
        "truncated 0 prompts" in printed and "dropped 0" in printed
    )  # counts in the terminal, not only JSON


def test_train_skip_invalid_rows(tmp_path, llama_backbone_dir, capsys):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS] + [{"prompt": "q", "chosen": "a"}]
    data = write_pairs(str(tmp_path / "train.jsonl"), rows)
    argv = train_argv(llama_backbone_dir, data, str(tmp_path / "run"), max_steps=1)
    assert main(["train", *argv]) == 1  # strict by default
    assert "missing field 'rejected'" in capsys.readouterr().err
    assert main(["train", *argv, "--skip_invalid_rows"]) == 0
    assert f"skipped 1 invalid rows ({data}:7" in capsys.readouterr().out


# ----- 3. sampling --------------------------------------------------------------------------------------------
def test_stratified_sample_is_deterministic_and_keeps_every_subset():
    subsets = ["a"] * 80 + ["b"] * 15 + ["c"] * 5
    first = stratified_sample(subsets, 20, seed=3)
    assert first == stratified_sample(subsets, 20, seed=3) and first != stratified_sample(subsets, 20, seed=4)
    counts = {s: sum(subsets[i] == s for i in first) for s in "abc"}
    assert counts == {"a": 16, "b": 3, "c": 1} and first == sorted(first)
    assert stratified_sample(subsets, 500) == list(range(100))


def test_eval_sample_flag(tmp_path, model_dir, pairs_file):
    reports = []
    for _ in range(2):
        out = str(tmp_path / f"r{len(reports)}.json")
        argv = ["eval", "--model", model_dir, "--dataset", pairs_file, "--sample", "4", "--seed", "1"]
        assert main([*argv, "--output", out, "--no_progress"]) == 0
        reports.append(json.load(open(out))["datasets"][pairs_file])
    assert reports[0]["overall"]["pairs"] == 4 and reports[0] == reports[1]
    assert {name: m["pairs"] for name, m in reports[0]["subsets"].items()} == {"a": 2, "b": 2}
    assert (reports[0]["sample"], reports[0]["seed"], reports[0]["max_rows"]) == (4, 1, None)


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


def test_sampling_keeps_ties_ref_and_tied_rows_together(tmp_path):
    path = tmp_path / "rb2.jsonl"
    row = {"prompt": "p", "chosen": ["a"], "rejected": ["b"]}
    rows = [{**row, "id": f"m{i}", "subset": "Math"} for i in range(10)]
    rows += [{**row, "id": f"{kind}:{n}", "subset": "Ties"} for n in range(10) for kind in ("ref", "tied")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(5):
        picked, _ = read_eval_rows(str(path), "test", sample=6, seed=seed)
        ids = [row["id"] for _, row in picked]
        numbers = [i.partition(":")[2] for i in ids if ":" in i]
        assert numbers and all(numbers.count(n) == 2 for n in numbers)  # ref:N always with tied:N
        assert {f"ref:{n}" for n in numbers} | {f"tied:{n}" for n in numbers} == {i for i in ids if ":" in i}
        # 6 draws: 3 Math rows and 3 Ties prompts
        assert sum(":" not in i for i in ids) == 3 and len(set(numbers)) == 3


# ----- 5. plots and tables ------------------------------------------------------------------------------------
def _report(k: int, subsets: list[str], accuracy: float = 0.3) -> dict:
    metrics = {
        "pairs": 10,
        "accuracy": accuracy,
        "ties": 0,
        "mean_margin": 0.1,
        "nll": 0.7,
        "ece": 0.1,
        "mean_reward_std": 0.2,
        "objective_weights": [1 / k] * k,
        "calibration_bins": [{"confidence": 0.8, "accuracy": 0.2, "count": 10}],
    }
    return {
        "model": "runs/a-model-with-a-rather-long-name-k3",
        "head_type": "vrm",
        "num_objectives": k,
        "objective_names": None,
        "datasets": {
            "rmb_bestofn_pairs.jsonl.gz": {
                "convention": "pairwise",
                "overall": metrics,
                "subsets": {s: metrics for s in subsets},
            }
        },
    }


def test_reliability_diagram_shows_accuracy_from_0_to_1():
    figure = reliability_figure([_report(3, ["a"])])
    assert figure.axes[0].get_ylim() == (0.0, 1.0)


def test_weights_heatmap_is_readable_for_small_k():
    subsets = [f"Helpfulness/Translation/GeneralExcerpt Language Translation {i}" for i in range(30)]
    figure = weights_figure(_report(3, subsets))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    dpi = figure.dpi
    cells = figure.axes[0].get_window_extent(renderer)
    assert cells.width / 3 >= 0.7 * dpi and cells.height / 30 >= 0.3 * dpi  # each cell at least 0.7 x 0.3 in
    whole = figure.bbox
    for text in [figure._suptitle, *figure.axes[0].get_yticklabels()]:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= whole.width and box.y1 <= whole.height, text.get_text()


def test_long_subset_names_do_not_wrap_in_the_terminal_table():
    long_name = "Helpfulness/Translation/GeneralExcerpt Language Translation and much more besides"
    text = format_report(_report(2, [long_name, "b"]))
    lines = [line for line in text.splitlines() if "Helpfulness" in line]
    # one row in the pairwise table and one in the error-detection table, each cut on one line
    assert len(lines) == 2 and all("…" in line for line in lines)
    assert long_name in markdown_summary([_report(2, [long_name, "b"])])  # full names in the markdown


# ----- 6. the command line ------------------------------------------------------------------------------------
def run_vrm(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_version_and_bench_help(capsys):
    from vrm import __version__

    for argv in (["--version"], ["bench", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"vrm {__version__}\n") and "bon" in out


def test_top_level_help_does_not_import_torch():
    result = run_vrm("-X", "importtime", "-m", "vrm", "--help")
    assert result.returncode == 0 and all(command in result.stdout for command in ("train", "eval", "serve"))
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "torch" not in imported and "transformers" not in imported


@pytest.mark.parametrize("command", [["eval"], ["score"], ["serve"], ["bench", "bon"]])
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0 and "(default:" in capsys.readouterr().out


def test_train_help_groups_vrm_options_first_and_checks_choices(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    text = text[text.index("\noptions:") :]  # past the usage line
    order = [text.index(f"\n{title}:") for title in ("model", "data", "training")]
    assert order == sorted(order)
    assert "--accelerate_config" in text and "{bt,ib,moe,vrm,vrm-paper}" in text
    assert order[0] < text.index("--head_type") < order[1] < order[2] < text.index("--beta_w")
    for flag, value in [("--head_type", "nope"), ("--attribute_target", "x"), ("--truncation", "cut")]:
        with pytest.raises(SystemExit):  # refused while parsing: no data read, no model loaded
            main(
                [
                    "train",
                    "--model_name_or_path",
                    "/nonexistent",
                    "--dataset_name",
                    "/nonexistent",
                    flag,
                    value,
                ]
            )
        assert "invalid choice" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: /nonexistent\nhead_type: nope\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config)])
    assert "head_type 'nope' is not one of" in capsys.readouterr().err


def test_each_choice_list_has_one_source():
    """The arguments' choices are the lists of the modules that implement them, not copies."""
    import dataclasses

    from vrm.data.tokenization import INPUT_FORMATS, TRUNCATION_POLICIES
    from vrm.models.config import HEAD_TYPES, HeadConfig
    from vrm.training.arguments import ModelArguments, VRMTrainingArguments
    from vrm.training.losses import ATTRIBUTE_TARGETS, BETA_SCHEDULES

    training = {item.name: item.metadata.get("choices") for item in dataclasses.fields(VRMTrainingArguments)}
    assert training["attribute_target"] is ATTRIBUTE_TARGETS and training["beta_schedule"] is BETA_SCHEDULES
    assert training["truncation"] is TRUNCATION_POLICIES and training["input_format"] is INPUT_FORMATS
    model = {item.name: item for item in dataclasses.fields(ModelArguments)}
    head = {item.name: item for item in dataclasses.fields(HeadConfig)}
    assert model["head_type"].metadata["choices"] is HEAD_TYPES
    assert all(model[name] is head[name] or model[name].metadata == head[name].metadata for name in head)
