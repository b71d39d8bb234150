"""The HTTP reward server: endpoints, errors, dynamic batching and overload (tiny random model, no network)."""

from __future__ import annotations

import asyncio
import re
import threading

import httpx
import pytest
import torch
from asgi_lifespan import LifespanManager
from fastapi.testclient import TestClient
from tiny_models import PAIRS

from vrm.scoring.scores import SequenceScores
from vrm.serving.app import build_app
from vrm.serving.config import ServerConfig

PROMPTS = [p for p, _, _ in PAIRS] + [p for p, _, _ in PAIRS]


RESPONSES = [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS]


JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline):
    return tiny_pipeline(batch_size=32)


async def until(condition, what: str = "condition") -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class RecordingScorer:
    """A fake `score_fn`: records each forward batch, can hold the worker until released; reward = length."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[list[tuple[int, ...]]] = []
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, sequences, prompt_lengths) -> SequenceScores:
        self.batches.append([tuple(s) for s in sequences])
        self.release.wait(timeout=20)
        count = len(sequences)
        reward = torch.tensor([float(len(s)) for s in sequences])
        return SequenceScores(reward, torch.zeros(count), torch.full((count, 4), 0.25), torch.zeros(count, 4))


def test_a_huge_body_is_413_before_it_is_parsed(pipeline, monkeypatch):
    """A 50 MB body is refused from its Content-Length, before it is read and parsed."""
    import json

    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **k: parsed.append(1) or real_loads(*a, **k))
    body = b'{"query": ["' + b"x" * (50 * 1024 * 1024) + b'"]}'
    with TestClient(build_app(pipeline, ServerConfig())) as client:
        response = client.post("/get_reward", content=body, headers=JSON)
        parsed_bodies = len(parsed)
        stats = client.get("/stats").json()
    assert response.status_code == 413, response.text[:200]
    assert "max_body_bytes=16777216" in response.json()["detail"]
    assert parsed_bodies == 0 and stats["items"] == 0


def test_a_streamed_body_is_cut_off_at_the_limit(pipeline):
    """Without a Content-Length (chunked), the bytes are counted as they arrive and the rest is never read."""
    app = build_app(pipeline, ServerConfig(max_body_bytes=100_000))
    sent = []

    async def chunks():
        yield b'{"query": ["'
        for _ in range(500):  # 32 MB if it were all read
            sent.append(1)
            yield b"x" * 65536
        yield b'"]}'

    async def main():
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
                response = await ac.post("/get_reward", content=chunks(), headers=JSON)
                small = await ac.post("/get_reward", json={"query": ["x"]})
                return response, small

    response, small = asyncio.run(main())
    assert response.status_code == 413, response.text[:200]
    assert "max_body_bytes=100000" in response.json()["detail"]
    assert len(sent) <= 3
    assert small.status_code == 400  # the server still answers (no marker in "x": a 400, not a crash)


def test_tokens_per_request_are_limited(pipeline):
    """Tokens per request are limited (not only characters), and the tokenizer stops at the limit."""
    config = ServerConfig(max_request_tokens=200, max_text_chars=10_000)
    with TestClient(build_app(pipeline, config)) as client:
        fits = client.post("/score", json={"prompts": PROMPTS[:2], "responses": RESPONSES[:2]})
        too_many = client.post("/score", json={"prompts": ["hello " * 300] * 50, "responses": ["a"] * 50})
        stats = client.get("/stats").json()
    assert fits.status_code == 200, fits.text
    assert too_many.status_code == 413, too_many.text
    detail = too_many.json()["detail"]
    assert "max_request_tokens=200" in detail
    assert int(re.search(r"in its first (\d+) items", detail).group(1)) < 10  # tokenizing stopped early
    assert stats["items"] == 2


def test_large_requests_are_split_and_interleaved_with_small_ones(pipeline):
    """A 1-item request does not wait for the whole of a large one: it joins the next forward batch."""
    scorer = RecordingScorer(hold_first=True)
    config = ServerConfig(max_batch_size=4, max_wait_ms=0, max_batch_tokens=100)
    app = build_app(pipeline, config)
    app.state.batcher.score_fn = scorer
    batcher = app.state.batcher
    big = {"prompts": [f"{p} {i}" for i, p in enumerate(PROMPTS * 3)], "responses": RESPONSES * 3}
    small = {"prompts": ["Tell me a joke."], "responses": ["No."]}
    small_ids = tuple(pipeline.template.tokenize_single(small["prompts"][0], small["responses"][0])[0])

    async def main():
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
                big_task = asyncio.create_task(ac.post("/score", json=big))
                await until(lambda: len(scorer.batches) == 1, "the first batch of the large request")
                small_task = asyncio.create_task(ac.post("/score", json=small))
                left = len(big["prompts"]) - len(scorer.batches[0])
                await until(lambda: batcher.queued == left + 1, "the small request queued")
                scorer.release.set()
                return await big_task, await small_task

    big_response, small_response = asyncio.run(main())
    assert big_response.status_code == small_response.status_code == 200
    batches = scorer.batches
    assert sum(len(b) for b in batches) == len(big["prompts"]) + 1
    assert len(batches) >= 9  # 36 items, at most 4 per forward
    assert small_ids in batches[1]  # the very next forward batch after it arrived, not the last one
    for batch in batches:  # rows x longest row within max_batch_tokens (one item alone may exceed it)
        assert len(batch) <= 4 and (len(batch) == 1 or len(batch) * max(map(len, batch)) <= 100)
    rewards = [r["reward"] for r in big_response.json()["results"]]  # results stay in request order
    expected = [len(pipeline.template.tokenize_single(p, r)[0]) for p, r in zip(*big.values(), strict=True)]
    assert rewards == [float(n) for n in expected]


def test_a_request_past_its_timeout_gets_503_and_its_work_is_dropped(pipeline):
    scorer = RecordingScorer(hold_first=True)
    app = build_app(pipeline, ServerConfig(max_batch_size=2, max_wait_ms=0, request_timeout_s=1.0))
    app.state.batcher.score_fn = scorer
    batcher = app.state.batcher

    async def main():
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
                slow = await ac.post("/score", json={"prompts": PROMPTS, "responses": RESPONSES})
                queued_after = batcher.queued
                scorer.release.set()
                await until(lambda: not batcher._in_flight, "the held batch to finish")
                after = await ac.post("/score", json={"prompts": PROMPTS[:1], "responses": RESPONSES[:1]})
                return slow, queued_after, after, (await ac.get("/stats")).json()

    slow, queued_after, after, stats = asyncio.run(main())
    assert slow.status_code == 503 and "request_timeout_s=1" in slow.json()["detail"]
    assert slow.headers.get("retry-after")
    assert queued_after == 0  # its other items left the queue
    assert after.status_code == 200
    assert stats["timed_out"] == 1 and stats["batches"] == 2  # the held batch, then the next request's


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"conservative_lambda": float("nan")}, "conservative_lambda must be a finite number"),
        ({"conservative_lambda": float("inf")}, "conservative_lambda must be a finite number"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms must be a finite number"),
        ({"request_timeout_s": float("nan")}, "request_timeout_s must be a finite number"),
        ({"request_timeout_s": float("inf")}, "request_timeout_s must be a finite number"),
        (
            {"max_queue": 8, "max_items_per_request": 16},
            "max_queue (8) must be >= max_items_per_request (16)",
        ),
    ],
)
def test_server_config_rejects_non_finite_numbers_and_a_queue_smaller_than_a_request(settings, message):
    with pytest.raises(ValueError) as error:
        ServerConfig(**settings)
    assert message in str(error.value)
    ServerConfig(max_queue=16, max_items_per_request=16)  # equal is fine
