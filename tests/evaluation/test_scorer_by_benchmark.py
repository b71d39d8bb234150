"""Every kind of scorer `vrm eval` loads (a vrm model, a reward model that is not vrm's, a deep ensemble of vrm
models) runs every kind of evaluation file (pairwise, RM-Bench, best-of-k)."""

from __future__ import annotations

import json
import math

import pytest
from tiny_models import PAIRS

from vrm.cli.main import main


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def benchmark_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("benchmarks")
    pairwise = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    rm_bench = [
        {
            "prompt": p,
            "chosen": [c, c + " Indeed.", "**" + c + "**"],
            "rejected": [r, r + " Sure.", "**" + r + "**"],
        }
        for p, c, r in PAIRS
    ]
    best_of_k = [
        {"id": str(i), "prompt": p, "chosen": [c], "rejected": [r, r + " No.", "Maybe."], "subset": "Focus"}
        for i, (p, c, r) in enumerate(PAIRS)
    ]
    return {
        "pairwise": write_rows(directory / "pairwise.jsonl", pairwise),
        "rm_bench": write_rows(directory / "rm_bench.jsonl", rm_bench),
        "best_of_k": write_rows(directory / "best_of_k.jsonl", best_of_k),
    }


@pytest.fixture(scope="module")
def scorers(tmp_path_factory, tiny_model, save_classifier):
    directory = tmp_path_factory.mktemp("scorers")
    paths = []
    for seed in (0, 1):
        model, tokenizer, _ = tiny_model("llama_chat", seed=seed)
        path = str(directory / f"vrm{seed}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    foreign = save_classifier(str(directory / "foreign"), "bert")
    return {"vrm": [paths[0]], "foreign": [foreign], "deep_ensemble": [*paths, "--ensemble"]}


@pytest.mark.parametrize("kind", ["pairwise", "rm_bench", "best_of_k"])
@pytest.mark.parametrize("scorer", ["vrm", "foreign", "deep_ensemble"])
def test_every_scorer_runs_every_evaluation_kind(scorer, kind, scorers, benchmark_files, tmp_path):
    models = [
        item for path in scorers[scorer] for item in (["--model", path] if path != "--ensemble" else [path])
    ]
    output = tmp_path / "report.json"
    argv = ["eval", *models, "--dataset", benchmark_files[kind], "--no_progress", "--output", str(output)]
    assert main(argv) == 0
    entry = json.loads(output.read_text())["datasets"][benchmark_files[kind]]
    overall = entry.get("overall") or entry
    accuracy = overall.get("accuracy", overall.get("average"))  # RM-Bench reports its average
    assert accuracy is not None and 0.0 <= accuracy <= 1.0 and not math.isnan(accuracy), entry
