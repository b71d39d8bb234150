"""The conservative reward `reward - lambda * reward_std` in the TRL reward function, the server and bench bon."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import PAIRS
from fastapi.testclient import TestClient
from test_modeling import build

from vrm.cli.main import main
from vrm.evaluation.best_of_n import score_pool
from vrm.scoring.conservative import check_conservative_lambda, conservative_reward
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.reward_function import VRMRewardFunction
from vrm.serving.app import build_app
from vrm.serving.requests import ServerConfig

PROMPTS = [p for p, _, _ in PAIRS]
RESPONSES = [c for _, c, _ in PAIRS]


@pytest.fixture(scope="module")
def pipeline() -> RewardPipeline:
    model, tokenizer, _ = build("llama_chat")
    return RewardPipeline(model, tokenizer)


@pytest.fixture(scope="module")
def expected(pipeline):
    scores = pipeline.score(PROMPTS, RESPONSES)
    assert bool((scores.reward_std > 0).all())  # else the tests below could not tell the forms apart
    return scores


def test_conservative_reward_form_and_lambda_checks():
    assert conservative_reward(2.0, 0.5, 1.5) == 1.25
    assert conservative_reward(np.array([1.0, 0.0]), np.array([0.2, 1.0]), 0.0).tolist() == [1.0, 0.0]
    assert check_conservative_lambda(0) == 0.0 and check_conservative_lambda(2) == 2.0
    for bad in (-0.1, math.nan, math.inf, "1", True):
        with pytest.raises(ValueError, match="conservative_lambda must be"):
            check_conservative_lambda(bad)


def test_reward_function_returns_reward_minus_lambda_std(pipeline, expected):
    for lam in (0.0, 0.5, 3.0):
        rewards = VRMRewardFunction(pipeline, conservative_lambda=lam)(prompts=PROMPTS, completions=RESPONSES)
        assert rewards == pytest.approx((expected.reward - lam * expected.reward_std).tolist(), abs=1e-5)
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="conservative_lambda must be a finite number >= 0"):
            VRMRewardFunction(pipeline, conservative_lambda=bad)


def templated(tokenizer, prompt: str, response: str) -> str:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


@pytest.fixture(scope="module")
def client(pipeline):
    with TestClient(build_app(pipeline, ServerConfig(conservative_lambda=0.5))) as test_client:
        yield test_client


@pytest.mark.parametrize("requested", [None, 0.0, 1.25])
def test_server_conservative_reward_per_request(client, pipeline, expected, requested):
    lam = 0.5 if requested is None else requested  # the request's lambda, else the server's
    body = {"query": [templated(pipeline.tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]}
    score_body = {"prompts": PROMPTS, "responses": RESPONSES}
    if requested is not None:
        body["conservative_lambda"] = score_body["conservative_lambda"] = requested
    response = client.post("/get_reward", json=body)
    assert response.status_code == 200, response.text
    wanted = expected.reward - lam * expected.reward_std
    assert torch.allclose(torch.tensor(response.json()["rewards"]), wanted, atol=1e-5)
    results = client.post("/score", json=score_body).json()["results"]
    assert torch.allclose(torch.tensor([r["reward"] for r in results]), expected.reward, atol=1e-5)
    if lam:
        assert torch.allclose(torch.tensor([r["conservative_reward"] for r in results]), wanted, atol=1e-5)
    else:
        assert all("conservative_reward" not in r for r in results)


@pytest.mark.parametrize("path", ["/get_reward", "/score"])
@pytest.mark.parametrize("value", ["-0.5", "NaN", "Infinity", '"high"'])
def test_server_refuses_a_bad_request_lambda_with_4xx(client, path, value):
    items = '"query": ["x"]' if path == "/get_reward" else '"prompts": ["q"], "responses": ["a"]'
    response = client.post(
        path,
        content=f'{{{items}, "conservative_lambda": {value}}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert "conservative_lambda" in response.json()["detail"]


def test_bench_bon_ranks_by_the_conservative_reward(pipeline, expected, tmp_path, capsys):
    pool = [{"prompt": PROMPTS[0], "responses": RESPONSES}]  # six candidates for one prompt
    plain = score_pool(pipeline, pool, progress=False)[0]
    conservative = score_pool(pipeline, pool, progress=False, conservative_lambda=2.0)[0]
    assert np.allclose(
        conservative, plain - 2.0 * pipeline.score([PROMPTS[0]] * 6, RESPONSES).reward_std.numpy()
    )
    argv = ["bench", "bon", "--pool", "p.jsonl", "--proxy", "m", "--gold_column", "g"]
    with pytest.raises(SystemExit) as exited:  # argparse's usage error, before any model loads
        main([*argv, "--conservative_lambda", "-1"])
    assert exited.value.code == 2
    assert "--conservative_lambda must be a finite number >= 0" in capsys.readouterr().err


def test_pipeline_and_vrm_score_refuse_a_negative_lambda(pipeline, tmp_path, capsys):
    with pytest.raises(ValueError, match="conservative_lambda must be a finite number >= 0"):
        RewardPipeline(pipeline.model, pipeline.tokenizer, conservative_lambda=-0.5)
    model_dir = str(tmp_path / "model")
    pipeline.save_pretrained(model_dir)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "q", "response": "a"}\n')
    argv = ["score", "--model", model_dir, "--input", str(rows), "--output", str(tmp_path / "out.jsonl")]
    assert main([*argv, "--conservative_lambda", "-1"]) == 1
    assert "vrm score: error: conservative_lambda must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
