"""No reward leaves the server unless it is finite: lambda is bounded (1e6) and strictly typed, per request and
per server (single model and deep ensemble), and a model output that is NaN or infinite answers an error naming
the item instead of a 200 with `null`."""

from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient
from tiny_models import PAIRS

from vrm.cli import main
from vrm.scoring.conservative import MAX_CONSERVATIVE_LAMBDA
from vrm.scoring.pipeline import RewardPipeline
from vrm.serving.app import build_app
from vrm.serving.config import ServerConfig

PROMPTS = [p for p, _, _ in PAIRS]


RESPONSES = [c for _, c, _ in PAIRS]


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline) -> RewardPipeline:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, tiny_model) -> RewardPipeline:
    """A deep ensemble of two saved tiny models."""
    root = tmp_path_factory.mktemp("finite_ensemble")
    paths = []
    for seed in (0, 1):
        model, tokenizer, _ = tiny_model("llama_chat", seed=seed)
        path = str(root / f"m{seed}")
        RewardPipeline(model, tokenizer).save_pretrained(path)
        paths.append(path)
    return RewardPipeline.from_pretrained(paths, device="cpu")


def bodies(tokenizer, templated, lam, prompts=PROMPTS, responses=RESPONSES) -> dict[str, dict]:
    query = [templated(tokenizer, p, r)[0] for p, r in zip(prompts, responses, strict=True)]
    return {
        "/get_reward": {"query": query, "conservative_lambda": lam},
        "/score": {"prompts": prompts, "responses": responses, "conservative_lambda": lam},
    }


@pytest.mark.parametrize("model", ["single", "ensemble"])
def test_a_huge_request_lambda_is_422_not_null_rewards(request, model, templated):
    pipeline = request.getfixturevalue("pipeline" if model == "single" else "ensemble")
    with TestClient(build_app(pipeline, ServerConfig())) as client:
        for path, body in bodies(pipeline.tokenizer, templated, 1e300).items():
            response = client.post(path, json=body)
            assert response.status_code == 422, (path, response.text)
            assert "conservative_lambda" in response.json()["detail"]
            assert "1e+06" in response.json()["detail"]
        # the largest lambda allowed still gives finite rewards, the same as computed here
        scores = pipeline.score(PROMPTS, RESPONSES)
        wanted = scores.reward.double() - MAX_CONSERVATIVE_LAMBDA * scores.reward_std.double()
        for path, body in bodies(pipeline.tokenizer, templated, MAX_CONSERVATIVE_LAMBDA).items():
            response = client.post(path, json=body)
            assert response.status_code == 200, (path, response.text)
            data = response.json()
            got = (
                data["rewards"]
                if path == "/get_reward"
                else [r["conservative_reward"] for r in data["results"]]
            )
            assert all(isinstance(v, float) and math.isfinite(v) for v in got)
            assert torch.allclose(torch.tensor(got, dtype=torch.float64), wanted, rtol=1e-4)


@pytest.mark.parametrize("path", ["/get_reward", "/score"])
@pytest.mark.parametrize("value", ['"0.5"', "true", "false", "1e300", "1000000.5", "[1]"])
def test_the_request_lambda_is_a_strict_bounded_number(pipeline, path, value):
    items = '"query": ["x"]' if path == "/get_reward" else '"prompts": ["q"], "responses": ["a"]'
    with TestClient(build_app(pipeline, ServerConfig())) as client:
        response = client.post(
            path,
            content=f'{{{items}, "conservative_lambda": {value}}}',
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 422, response.text
    assert "conservative_lambda" in response.json()["detail"]


def test_an_integer_request_lambda_is_accepted(pipeline):
    with TestClient(build_app(pipeline, ServerConfig())) as client:
        response = client.post(
            "/score",
            content='{"prompts": ["q"], "responses": ["a"], "conservative_lambda": 1}',
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["conservative_reward"] == pytest.approx(result["reward"] - result["reward_std"], abs=1e-6)


def test_the_server_lambda_is_bounded_too():
    with pytest.raises(ValueError, match=r"conservative_lambda must be a finite number >= 0 and <= 1e\+06"):
        ServerConfig(conservative_lambda=1e300)
    assert ServerConfig(conservative_lambda=MAX_CONSERVATIVE_LAMBDA).conservative_lambda == 1e6


@pytest.mark.parametrize("models", [["somewhere"], ["one", "two", "--ensemble"]])
def test_vrm_serve_refuses_a_huge_lambda_before_loading(capsys, models):
    argv = [item for model in models for item in (["--model", model] if model != "--ensemble" else [model])]
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *argv, "--conservative_lambda", "1e300"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "vrm serve: error: conservative_lambda must be a finite number >= 0 and <= 1e+06, got 1e+300"
    )


def broken(app, field: str, value: float) -> None:
    """Make the model behind `app` give `value` as `field` of the longest sequence of every batch."""
    batcher = app.state.batcher
    score_fn = batcher.score_fn

    def score(sequences, prompt_lengths):
        scores = score_fn(sequences, prompt_lengths)
        longest = max(range(len(sequences)), key=lambda row: len(sequences[row]))
        getattr(scores, field)[longest] = value
        return scores

    batcher.score_fn = score


# item 1 is the longest: the one the broken model fails on
TWO_RESPONSES = [RESPONSES[0], RESPONSES[1] + " and a few more words to make this response the longest one"]


@pytest.mark.parametrize("model", ["single", "ensemble"])
@pytest.mark.parametrize(
    ("field", "value"), [("reward", math.nan), ("reward", -math.inf), ("reward_std", math.inf)]
)
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_a_non_finite_model_output_is_an_error_naming_the_item(request, templated, model, field, value, lam):
    pipeline = request.getfixturevalue("pipeline" if model == "single" else "ensemble")
    app = build_app(pipeline, ServerConfig(max_wait_ms=0))
    broken(app, field, value)
    with TestClient(app) as client:
        for path, body in bodies(pipeline.tokenizer, templated, lam, PROMPTS[:2], TWO_RESPONSES).items():
            response = client.post(path, json=body)
            if field == "reward_std" and lam == 0 and path == "/get_reward":  # the std is not returned
                assert response.status_code == 200, response.text
                assert all(math.isfinite(v) for v in response.json()["rewards"])
                continue
            assert response.status_code == 500, (path, response.text)
            detail = response.json()["detail"]
            assert ("query[1]" if path == "/get_reward" else "prompts[1] / responses[1]") in detail
            assert "not finite" in detail
            assert "null" not in response.text


def test_a_non_finite_objective_score_is_an_error_naming_the_item(pipeline):
    app = build_app(pipeline, ServerConfig(max_wait_ms=0))
    broken(app, "objective_scores", math.nan)
    with TestClient(app) as client:
        response = client.post("/score", json={"prompts": PROMPTS[:2], "responses": TWO_RESPONSES})
    assert response.status_code == 500, response.text
    assert "prompts[1] / responses[1]" in response.json()["detail"]
    assert "objective_scores=nan" in response.json()["detail"]
