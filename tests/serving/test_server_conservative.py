"""The reward server's conservative reward: per request, and bad lambdas refused with a 4xx."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from tiny_models import PAIRS

from vrm.serving.app import build_app
from vrm.serving.config import ServerConfig

PROMPTS = [p for p, _, _ in PAIRS]


RESPONSES = [c for _, c, _ in PAIRS]


def templated(tokenizer, prompt: str, response: str) -> str:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


@pytest.fixture(scope="module")
def client(stochastic_pipeline):
    with TestClient(build_app(stochastic_pipeline, ServerConfig(conservative_lambda=0.5))) as test_client:
        yield test_client


@pytest.mark.parametrize("requested", [None, 0.0, 1.25])
def test_server_conservative_reward_per_request(client, stochastic_pipeline, stochastic_scores, requested):
    lam = 0.5 if requested is None else requested  # the request's lambda, else the server's
    body = {
        "query": [
            templated(stochastic_pipeline.tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)
        ]
    }
    score_body = {"prompts": PROMPTS, "responses": RESPONSES}
    if requested is not None:
        body["conservative_lambda"] = score_body["conservative_lambda"] = requested
    response = client.post("/get_reward", json=body)
    assert response.status_code == 200, response.text
    wanted = stochastic_scores.reward - lam * stochastic_scores.reward_std
    assert torch.allclose(torch.tensor(response.json()["rewards"]), wanted, atol=1e-5)
    results = client.post("/score", json=score_body).json()["results"]
    assert torch.allclose(torch.tensor([r["reward"] for r in results]), stochastic_scores.reward, atol=1e-5)
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
