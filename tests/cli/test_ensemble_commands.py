"""Ensembles through the commands: `vrm train --ensemble_members`, `vrm score / eval / serve / bench bon` with
a multi-head ensemble and with `--model a --model b --ensemble` (tiny backbone, data written in the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from tiny_models import PAIRS

from vrm.cli import main
from vrm.scoring.pipeline import RewardPipeline

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


@pytest.fixture(scope="module")
def data(tmp_path_factory, write_pairs):
    return write_pairs(str(tmp_path_factory.mktemp("ens_data") / "pairs.jsonl"))


@pytest.fixture(scope="module")
def multi_head(tmp_path_factory, llama_backbone_dir, data, train_argv):
    """`vrm train --ensemble_members 3` in its own process, as a user runs it."""
    output = str(tmp_path_factory.mktemp("ens_train") / "model")
    argv = train_argv(llama_backbone_dir, data, output, ensemble_members=3)
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "vrm", "train", *argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, llama_backbone_dir, data, train_argv):
    output = str(tmp_path_factory.mktemp("ens_second") / "model")
    assert main(["train", *train_argv(llama_backbone_dir, data, output, seed=1)]) == 0
    return output


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.slow
def test_trained_multi_head_ensemble_scores_and_evaluates(tmp_path, multi_head, data, write_pairs):
    with open(os.path.join(multi_head, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["ensemble_members"] == 3
    weights = load_file(os.path.join(multi_head, "model.safetensors"))
    decoders = [weights[f"head.members.{n}.decoder.weight"] for n in range(3)]
    assert not torch.equal(decoders[0], decoders[1])  # different init, different bootstrap

    rows = str(tmp_path / "rows.jsonl")
    write_pairs(rows, [{"prompt": p, "response": c} for p, c, _ in PAIRS])
    scores = str(tmp_path / "scores.jsonl")
    assert main(["score", "--model", multi_head, "--input", rows, "--output", scores, "--no_progress"]) == 0
    for row in read_rows(scores):
        assert len(row["member_rewards"]) == 3
        assert row["reward"] == pytest.approx(sum(row["member_rewards"]) / 3, abs=1e-5)
        assert row["reward_std"] ** 2 == pytest.approx(
            row["aleatoric_std"] ** 2 + row["epistemic_std"] ** 2, rel=1e-4
        )
        assert row["epistemic_std"] > 0

    report_path = str(tmp_path / "report.json")
    assert (
        main(["eval", "--model", multi_head, "--dataset", data, "--output", report_path, "--no_progress"])
        == 0
    )
    with open(report_path, encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["ensemble"] == {"kind": "multi-head", "members": 3}
    overall = report["datasets"][data]["overall"]
    assert set(overall["error_auroc"]) == {"margin", "std", "flip", "epistemic_std", "member_margin_std"}
    assert overall["mean_epistemic_std"] > 0


@pytest.mark.slow
def test_one_member_trains_the_same_model_as_before(tmp_path, llama_backbone_dir, data, train_argv):
    outputs = []
    for extra in ([], ["--ensemble_members", "1"]):
        output = str(tmp_path / f"run{len(outputs)}")
        assert main(["train", *train_argv(llama_backbone_dir, data, output, max_steps=2), *extra]) == 0
        outputs.append(load_file(os.path.join(output, "model.safetensors")))
    assert list(outputs[0]) == list(outputs[1])
    for name, value in outputs[0].items():
        assert torch.equal(value, outputs[1][name]), name


@pytest.mark.slow
def test_deep_ensemble_eval_and_score(tmp_path, multi_head, second_model, data, capsys, write_pairs):
    report_path = str(tmp_path / "deep.json")
    argv = ["eval", "--model", multi_head, "--model", second_model, "--ensemble", "--dataset", data]
    assert main([*argv, "--output", report_path, "--no_progress"]) == 0
    with open(report_path, encoding="utf-8") as handle:
        report = json.load(handle)  # one report: the ensemble's
    assert report["model"] == f"{multi_head} + {second_model}"
    assert report["ensemble"] == {"kind": "deep", "members": [multi_head, second_model]}
    assert "epistemic_std" in report["datasets"][data]["overall"]["error_auroc"]

    rows = str(tmp_path / "rows.jsonl")
    write_pairs(rows, [{"prompt": p, "response": c} for p, c, _ in PAIRS])
    scores = str(tmp_path / "scores.jsonl")
    score_argv = [
        "score",
        "--model",
        multi_head,
        "--model",
        second_model,
        "--input",
        rows,
        "--output",
        scores,
    ]
    assert main([*score_argv, "--ensemble", "--no_progress"]) == 0
    singles = [RewardPipeline.from_pretrained(path, device="cpu") for path in (multi_head, second_model)]
    expected = [
        pipeline.score([p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS]).reward for pipeline in singles
    ]
    got = [row["reward"] for row in read_rows(scores)]
    assert got == pytest.approx(((expected[0] + expected[1]) / 2).tolist(), abs=1e-5)

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # several models, no --ensemble
        main([*score_argv[:-2], "--output", str(tmp_path / "other.jsonl")])
    assert exit_info.value.code == 2
    assert "2 --model given: pass --ensemble" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", multi_head, "--ensemble", "--dataset", data])
    assert "--ensemble needs at least two --model" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_loads_a_deep_ensemble_and_answers_get_reward(
    multi_head, second_model, monkeypatch, capsys, templated
):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app))
    assert (
        main(["serve", "--model", multi_head, "--model", second_model, "--ensemble", "--device", "cpu"]) == 0
    )
    pipeline = RewardPipeline.from_pretrained([multi_head, second_model], device="cpu")
    pairs = [templated(pipeline.tokenizer, p, c) for p, c, _ in PAIRS]
    with TestClient(seen["app"]) as client:
        health = client.get("/health").json()
        response = client.post("/get_reward", json={"query": [full for full, _ in pairs]})
    assert response.status_code == 200, response.text
    assert health["model"] == "model + model"
    expected = pipeline.score_texts([full for full, _ in pairs]).reward
    assert response.json()["rewards"] == pytest.approx(expected.tolist(), abs=1e-5)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", multi_head, "--model", second_model])
    assert exit_info.value.code == 2 and "pass --ensemble" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.slow
def test_bench_bon_takes_an_ensemble_proxy(tmp_path, multi_head, second_model, write_pairs):
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": p, "responses": [c, r, c + " " + r], "gold": [1.0, 0.0, 0.5]} for p, c, r in PAIRS]
    write_pairs(str(pool), rows)
    output = str(tmp_path / "bon.json")
    argv = ["bench", "bon", "--pool", str(pool), "--gold_column", "gold", "--n", "1", "2", "--output", output]
    assert main([*argv, "--proxy", multi_head, "--proxy", second_model, "--ensemble", "--no_progress"]) == 0
    with open(output, encoding="utf-8") as handle:
        curves = json.load(handle)["curves"]
    assert list(curves) == [f"{multi_head} + {second_model}"]
