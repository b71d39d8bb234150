"""The HTTP reward server: endpoints, errors, dynamic batching and overload (tiny random model, no network)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
import torch
from asgi_lifespan import LifespanManager
from fastapi.testclient import TestClient
from tiny_models import PAIRS

from vrm.scoring.pipeline import RewardPipeline
from vrm.serving.app import build_app
from vrm.serving.config import ServerConfig

PROMPTS = [p for p, _, _ in PAIRS] + [p for p, _, _ in PAIRS]


RESPONSES = [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS]


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline) -> RewardPipeline:
    return tiny_pipeline(batch_size=32)


@pytest.fixture(scope="module")
def expected(pipeline):
    return pipeline.score(PROMPTS, RESPONSES)


@pytest.fixture(scope="module")
def client(pipeline):
    config = ServerConfig(max_text_chars=500, max_items_per_request=20, conservative_lambda=0.5)
    with TestClient(build_app(pipeline, config, model_name="tiny-vrm")) as test_client:
        yield test_client


def test_health_describes_the_model(client, pipeline):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"] == "tiny-vrm"
    assert body["head_type"] == "vrm"
    assert body["num_objectives"] == pipeline.model.config.num_objectives == 4
    assert len(body["objective_names"]) == 4
    assert body["conservative_lambda"] == 0.5


def test_score_matches_direct_scoring(client, expected):
    response = client.post("/score", json={"prompts": PROMPTS, "responses": RESPONSES})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(PROMPTS)
    for key in ("reward", "reward_std", "objective_weights", "objective_scores"):
        got = torch.tensor([r[key] for r in results])
        assert torch.allclose(got, getattr(expected, key), atol=1e-5), key
    rewards = torch.tensor([r["reward"] for r in results])
    assert rewards.std() > 1e-4  # the rewards really depend on the inputs
    conservative = torch.tensor([r["conservative_reward"] for r in results])
    assert torch.allclose(conservative, expected.reward - 0.5 * expected.reward_std, atol=1e-5)
    weights = torch.tensor([r["objective_weights"] for r in results])
    assert torch.allclose(weights.sum(-1), torch.ones(len(results)), atol=1e-4)


def test_score_accepts_message_lists(client, expected):
    prompts = [[{"role": "user", "content": PROMPTS[0]}], PROMPTS[1]]
    responses = [RESPONSES[0], [{"role": "assistant", "content": RESPONSES[1]}]]
    response = client.post("/score", json={"prompts": prompts, "responses": responses})
    assert response.status_code == 200, response.text
    rewards = torch.tensor([r["reward"] for r in response.json()["results"]])
    assert torch.allclose(rewards, expected.reward[:2], atol=1e-5)


def test_conservative_reward_absent_without_lambda(pipeline):
    with TestClient(build_app(pipeline, ServerConfig())) as plain:
        result = plain.post("/score", json={"prompts": ["Hi"], "responses": ["Hello"]}).json()["results"][0]
    assert "conservative_reward" not in result
    assert set(result) == {"reward", "reward_std", "objective_weights", "objective_scores"}


@pytest.mark.parametrize("with_prompts", [True, False])
def test_get_reward_matches_score(client, pipeline, expected, with_prompts, templated):
    pairs = [templated(pipeline.tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    body = {"query": [full for full, _ in pairs], "labels": [None] * len(pairs)}
    if with_prompts:
        body["prompts"] = [prompt for _, prompt in pairs]
    response = client.post("/get_reward", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["rewards"] == data["scores"]
    # the server runs with conservative_lambda 0.5: /get_reward returns the conservative reward
    assert torch.allclose(
        torch.tensor(data["rewards"]), expected.reward - 0.5 * expected.reward_std, atol=1e-5
    )


def test_get_reward_plain_reward_and_padding_stripped(pipeline, expected, templated):
    tok = pipeline.tokenizer
    full, prompt = templated(tok, PROMPTS[0], RESPONSES[0])
    padded = tok.pad_token * 3 + full + tok.pad_token * 2  # as decoded from a padded batch
    with TestClient(build_app(pipeline, ServerConfig())) as plain:
        response = plain.post("/get_reward", json={"query": [full, padded], "prompts": [prompt, prompt]})
    assert response.status_code == 200, response.text
    rewards = torch.tensor(response.json()["rewards"])
    assert torch.allclose(rewards, expected.reward[[0, 0]], atol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/get_reward", {"prompts": ["a"]}, 422, ["query", "required"]),
        ("/score", {"prompts": ["a"]}, 422, ["responses", "required"]),
        ("/get_reward", {"query": "not a list"}, 422, ["query"]),
        ("/get_reward", {"query": []}, 400, ["query", "empty list"]),
        ("/score", {"prompts": [], "responses": []}, 400, ["prompts", "empty list"]),
        (
            "/score",
            {"prompts": ["a", []], "responses": ["b", "c"]},
            400,
            ["prompts[1]", "empty conversation"],
        ),
        ("/get_reward", {"query": ["x", ""]}, 400, ["query[1]", "empty"]),
        # padding-only queries and responses of no tokens are the request's fault: 400s, not 500s
        ("/get_reward", {"query": ["<pad><pad><pad>"]}, 400, ["query[0]", "empty", "padding"]),
        ("/get_reward", {"query": ["<pad>"], "prompts": ["<pad>"]}, 400, ["query[0]", "empty"]),
        ("/get_reward", {"query": [" "], "prompts": [" "]}, 400, ["query[0]", "no response", "prompts[0]"]),
        ("/get_reward", {"query": ["ok", " "], "prompts": ["o", " "]}, 400, ["query[1]", "no response"]),
        ("/score", {"prompts": ["a", "b"], "responses": ["c", "d" * 501]}, 413, ["responses[1]", "500"]),
        ("/get_reward", {"query": ["q" * 501]}, 413, ["query[0]", "max_text_chars=500"]),
        ("/get_reward", {"query": ["q"] * 21}, 413, ["21 items", "max_items_per_request=20"]),
        ("/score", {"prompts": ["a", "b"], "responses": ["c"]}, 400, ["2 prompts", "1 responses"]),
        ("/get_reward", {"query": ["a", "b"], "prompts": ["a"]}, 400, ["2 queries", "1 prompts"]),
        ("/get_reward", {"query": ["no template here"]}, 400, ["query[0]", "response starts"]),
        ("/get_reward", {"query": ["a b", "c d"], "prompts": ["x", "y"]}, 400, ["query[0]", "not a prefix"]),
    ],
)
def test_bad_requests_are_clear_errors(client, path, body, status, words):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, (word, detail)


def test_malformed_json_is_400(client):
    response = client.post("/score", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["detail"]


def test_a_failing_batch_does_not_fail_the_requests_batched_with_it(pipeline, expected):
    """A request whose scoring fails fails alone, though it shared a forward batch with a good one."""
    poison = pipeline.template.tokenize_single("poison", "pill")[0]
    app = build_app(pipeline, ServerConfig(max_wait_ms=200))
    score_fn = app.state.batcher.score_fn

    def picky(sequences, prompt_lengths):
        if poison in sequences:
            raise RuntimeError("cannot score poison")
        return score_fn(sequences, prompt_lengths)

    app.state.batcher.score_fn = picky

    async def main():
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
                good, bad = await asyncio.gather(
                    ac.post("/score", json={"prompts": [PROMPTS[0]], "responses": [RESPONSES[0]]}),
                    ac.post("/score", json={"prompts": ["poison"], "responses": ["pill"]}),
                )
                return good, bad, (await ac.get("/stats")).json()

    good, bad, stats = asyncio.run(main())
    assert bad.status_code == 500 and "cannot score poison" in bad.json()["detail"]
    assert good.status_code == 200, good.text
    assert abs(good.json()["results"][0]["reward"] - float(expected.reward[0])) < 1e-5
    # one joint batch that failed, then each request retried alone (and only the bad one failed)
    assert (stats["batches"], stats["failed_batches"], stats["requests"]) == (3, 2, 1)


def test_an_unscoreable_request_is_refused_before_it_reaches_the_model(client):
    before = client.get("/stats").json()
    response = client.post("/get_reward", json={"query": ["plain text, no marker"]})
    assert response.status_code == 400 and "query[0]" in response.json()["detail"]
    after = client.get("/stats").json()
    assert (after["batches"], after["failed_batches"]) == (before["batches"], before["failed_batches"])


def test_concurrent_requests_are_coalesced(pipeline, expected):
    app = build_app(pipeline, ServerConfig(max_batch_size=32, max_wait_ms=100))
    count = 16
    index = [i % len(PROMPTS) for i in range(count)]

    async def main():
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
                responses = await asyncio.gather(
                    *[
                        ac.post("/score", json={"prompts": [PROMPTS[i]], "responses": [RESPONSES[i]]})
                        for i in index
                    ]
                )
                return responses, (await ac.get("/stats")).json()

    responses, stats = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    got = torch.tensor([r.json()["results"][0]["reward"] for r in responses])
    assert torch.allclose(got, expected.reward[index], atol=1e-5)  # every request got its own reward
    assert stats["requests"] == count and stats["items"] == count
    assert stats["batches"] < count  # coalesced
    assert stats["queued"] == 0


def test_overload_answers_503_with_retry_after(tiny_pipeline):
    pipeline = tiny_pipeline()
    release = threading.Event()
    app = build_app(
        pipeline, ServerConfig(max_batch_size=1, max_wait_ms=0, max_queue=2, max_items_per_request=2)
    )
    batcher = app.state.batcher
    score_fn = batcher.score_fn

    def blocked_score(sequences, prompt_lengths):
        release.wait(timeout=10)
        return score_fn(sequences, prompt_lengths)

    batcher.score_fn = blocked_score
    body = {"prompts": ["Hi"], "responses": ["Hello"]}

    async def main():
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:

                async def until(condition):
                    for _ in range(500):
                        if condition():
                            return
                        await asyncio.sleep(0.01)
                    raise AssertionError("timed out")

                # the first is taken by the (blocked) worker, the next two fill the queue
                pending = [asyncio.create_task(ac.post("/score", json=body))]
                await until(lambda: batcher.stats.batches == 1)
                pending += [asyncio.create_task(ac.post("/score", json=body)) for _ in range(2)]
                await until(lambda: batcher.queued == 2)
                rejected = await ac.post("/score", json=body)
                health = await ac.get("/health")  # the event loop stays responsive meanwhile
                release.set()
                done = await asyncio.gather(*pending)
                return rejected, health, done, (await ac.get("/stats")).json()

    rejected, health, done, stats = asyncio.run(main())
    assert rejected.status_code == 503
    assert rejected.headers.get("retry-after") == "1"
    assert "overloaded" in rejected.json()["detail"]
    assert health.status_code == 200
    assert [r.status_code for r in done] == [200, 200, 200]
    assert stats["rejected"] == 1 and stats["requests"] == 3


def test_scoring_crash_fails_only_its_batch(tiny_pipeline):
    app = build_app(tiny_pipeline(), ServerConfig())
    score_fn = app.state.batcher.score_fn
    calls = {"n": 0}

    def flaky_score(sequences, prompt_lengths):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device on fire")
        return score_fn(sequences, prompt_lengths)

    app.state.batcher.score_fn = flaky_score
    with TestClient(app) as test_client:
        first = test_client.post("/score", json={"prompts": ["Hi"], "responses": ["Hello"]})
        second = test_client.post("/score", json={"prompts": ["Hi"], "responses": ["Hello"]})
    assert first.status_code == 500 and "device on fire" in first.json()["detail"]
    assert second.status_code == 200  # the worker survived


def test_openapi_lists_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/get_reward", "/score", "/health", "/stats"} <= set(schema["paths"])
    request = schema["paths"]["/get_reward"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request["$ref"].endswith("GetRewardRequest")
    assert "query" in schema["components"]["schemas"]["GetRewardRequest"]["required"]
    assert "ScoreResult" in schema["components"]["schemas"]


def test_score_returns_what_vrm_score_and_the_pipeline_return(three_objective_model_dir):
    """Named objectives come keyed by name, as in `vrm score` and `RewardPipeline` (one writer of the fields)."""
    from fastapi.testclient import TestClient

    from vrm.scoring.pipeline import RewardPipeline
    from vrm.serving.app import build_app
    from vrm.serving.config import ServerConfig

    pipeline = RewardPipeline.from_pretrained(three_objective_model_dir, device="cpu")
    pipeline.model.config.objective_names = ["helpful", "safe", "warm"]
    expected = pipeline("How do I sort a list?", "Use sorted(xs).")
    with TestClient(build_app(pipeline, ServerConfig())) as client:
        body = {"prompts": ["How do I sort a list?"], "responses": ["Use sorted(xs)."]}
        result = client.post("/score", json=body).json()["results"][0]
    assert set(result) == set(expected)
    assert result["objective_weights_by_name"] == pytest.approx(
        expected["objective_weights_by_name"], abs=1e-6
    )
