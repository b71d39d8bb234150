"""Evaluation rows (`vrm.evaluation.rows`): unusable rows skipped and counted, stratified sampling."""

import json

from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.evaluation.rows import read_eval_rows, stratified_sample


def test_eval_scores_empty_answers_and_skips_unusable_rows(tmp_path, three_objective_model_dir, capsys):
    path = str(tmp_path / "odd.jsonl")
    lines = [json.dumps({"prompt": p, "chosen": c, "rejected": r}) for p, c, r in PAIRS]
    lines.insert(2, "{not json")  # line 3
    lines.insert(4, json.dumps({"prompt": "q", "chosen": "a"}))  # line 5: no rejected answer
    lines.append(json.dumps({"prompt": "q", "chosen": "", "rejected": "a real answer"}))  # empty: scored
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    report_path = str(tmp_path / "r.json")
    assert (
        main(
            [
                "eval",
                "--model",
                three_objective_model_dir,
                "--dataset",
                path,
                "--output",
                report_path,
                "--no_progress",
            ]
        )
        == 0
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


def test_stratified_sample_is_deterministic_and_keeps_every_subset():
    subsets = ["a"] * 80 + ["b"] * 15 + ["c"] * 5
    first = stratified_sample(subsets, 20, seed=3)
    assert first == stratified_sample(subsets, 20, seed=3) and first != stratified_sample(subsets, 20, seed=4)
    counts = {s: sum(subsets[i] == s for i in first) for s in "abc"}
    assert counts == {"a": 16, "b": 3, "c": 1} and first == sorted(first)
    assert stratified_sample(subsets, 500) == list(range(100))


def test_eval_sample_flag_draws_the_same_stratified_rows_for_a_seed(
    tmp_path, three_objective_model_dir, pairs_file
):
    reports = []
    for _ in range(2):
        out = str(tmp_path / f"r{len(reports)}.json")
        argv = [
            "eval",
            "--model",
            three_objective_model_dir,
            "--dataset",
            pairs_file,
            "--sample",
            "4",
            "--seed",
            "1",
        ]
        assert main([*argv, "--output", out, "--no_progress"]) == 0
        reports.append(json.load(open(out))["datasets"][pairs_file])
    assert reports[0]["overall"]["pairs"] == 4 and reports[0] == reports[1]
    assert {name: m["pairs"] for name, m in reports[0]["subsets"].items()} == {"a": 2, "b": 2}
    assert (reports[0]["sample"], reports[0]["seed"], reports[0]["max_rows"]) == (4, 1, None)


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
