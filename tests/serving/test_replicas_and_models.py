"""A server over several devices (one model replica per device, each request to the least-loaded one) and several
models in one server (a request's `"model"` field picks one; `/health` lists them)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from asgi_lifespan import LifespanManager
from fastapi.testclient import TestClient
from tiny_models import PAIRS

from vrm.cli import main
from vrm.scoring.pipeline import RewardPipeline
from vrm.serving.app import ServedModel, build_app, served_model_names
from vrm.serving.batching import MAX_REPLICAS, DynamicBatcher, ReplicaPool, replica_devices
from vrm.serving.config import ServerConfig

PROMPTS = [p for p, _, _ in PAIRS]
RESPONSES = [c for _, c, _ in PAIRS]


@pytest.fixture(scope="module")
def first(tiny_model) -> RewardPipeline:
    model, tokenizer, _ = tiny_model("llama_chat", seed=0)
    return RewardPipeline(model, tokenizer)


@pytest.fixture(scope="module")
def second(tiny_model) -> RewardPipeline:
    model, tokenizer, _ = tiny_model("llama_chat", head_type="bt", seed=1, num_objectives=3)
    return RewardPipeline(model, tokenizer)


# ----- replicas ---------------------------------------------------------------------------------------------------
def test_two_cpu_replicas_both_serve_concurrent_requests(tiny_pipeline):
    replicas = [tiny_pipeline(), tiny_pipeline()]  # the same seeded weights on each "device"
    expected = replicas[0].score(PROMPTS, RESPONSES).reward
    app = build_app([ServedModel("tiny", replicas)], ServerConfig(max_wait_ms=20))
    index = [i % len(PROMPTS) for i in range(12)]

    async def scenario():
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answers = await asyncio.gather(
                    *[
                        client.post("/score", json={"prompts": [PROMPTS[i]], "responses": [RESPONSES[i]]})
                        for i in index
                    ]
                )
                return answers, (await client.get("/stats")).json()

    answers, stats = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200] * len(index), [a.text for a in answers]
    got = torch.tensor([a.json()["results"][0]["reward"] for a in answers])
    assert torch.allclose(
        got, expected[index], atol=1e-5
    )  # each answer is its own, whichever replica scored it
    replicas_stats = stats["replicas"]
    assert [(r["model"], r["device"]) for r in replicas_stats] == [("tiny", "cpu"), ("tiny", "cpu")]
    assert all(r["items"] > 0 and r["requests"] > 0 for r in replicas_stats), replicas_stats
    for key in ("batches", "items", "requests"):
        assert stats[key] == sum(r[key] for r in replicas_stats), key
    assert stats["requests"] == len(index) and stats["queued"] == 0


def _counting_batcher(load: int) -> DynamicBatcher:
    batcher = DynamicBatcher(lambda sequences, lengths: None)
    batcher.queued = load
    return batcher


def test_pool_sends_a_request_to_the_least_loaded_replica():
    pool = ReplicaPool([_counting_batcher(5), _counting_batcher(1), _counting_batcher(3)], ["a", "b", "c"])
    assert pool.pick() is pool.batchers[1]
    pool.batchers[1].in_flight_items = 10  # now busy scoring a batch
    assert pool.pick() is pool.batchers[2]


class _Running:
    def done(self) -> bool:
        return False


def test_a_stopped_replica_gets_no_request_while_another_runs():
    stopped, running = _counting_batcher(0), _counting_batcher(7)
    running._task = _Running()  # its worker runs; the other's has stopped (load 0, the least)
    pool = ReplicaPool([stopped, running], ["cpu", "cpu"])
    assert [pool.pick() for _ in range(3)] == [running] * 3


def test_a_replica_whose_queue_cannot_take_the_request_is_passed_over():
    full, roomy = _counting_batcher(1000), _counting_batcher(1010)
    full.in_flight_items = 0
    roomy.max_queue = 2048
    for batcher in (full, roomy):
        batcher._task = _Running()
    pool = ReplicaPool([full, roomy], ["cpu", "cpu"])
    assert pool.pick(items=30) is roomy  # `full` is less loaded, but 1000 + 30 > its max_queue 1024
    assert pool.pick(items=10) is full


def test_devices_of_two_kinds_are_refused(monkeypatch):
    # bf16 on CUDA and fp32 on the CPU would give one request two different rewards
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="mixes cpu and cuda devices"):
        replica_devices("cuda:0,cpu")


def test_an_idle_pool_takes_turns():
    pool = ReplicaPool([_counting_batcher(0), _counting_batcher(0)], ["cpu", "cpu"])
    picks = [pool.batchers.index(pool.pick()) for _ in range(4)]
    assert picks == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("spec", "devices"),
    [(None, ["cpu"]), ("auto", ["cpu"]), ("cpu", ["cpu"]), ("cpu,cpu", ["cpu", "cpu"]), ("all", ["cpu"])],
)
def test_replica_devices_on_a_machine_without_cuda(spec, devices):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the defaults differ")
    assert replica_devices(spec) == devices


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("cpu,,cpu", ["entry 2 is empty"]),
        ("cuda:99", ["cuda:99"]),
        (",".join(["cpu"] * 1000), ["1000 devices", f"at most {MAX_REPLICAS}"]),
        ("cpu,auto", ["'auto' stands alone"]),
        ("gpu0", ["'gpu0' is not a torch device"]),
        ("meta", ["not a CPU or CUDA device"]),
    ],
)
def test_replica_devices_refuses_bad_lists(spec, words):
    with pytest.raises(ValueError) as error:
        replica_devices(spec)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_no_more_cpu_replicas_than_cores(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert replica_devices("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="3 CPU replicas, more than this machine's 2 CPU cores"):
        replica_devices("cpu,cpu,cpu")


# ----- several models -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_models(first, second):
    app = build_app([ServedModel("rm-a", [first]), ServedModel("rm-b", [second])], ServerConfig())
    with TestClient(app) as client:
        yield client


def test_health_lists_every_model_and_describes_the_default(two_models):
    body = two_models.get("/health").json()
    assert (body["model"], body["head_type"], body["num_objectives"]) == ("rm-a", "vrm", 4)
    assert body["models"] == [
        {
            "model": "rm-a",
            "head_type": "vrm",
            "num_objectives": 4,
            "objective_names": [f"objective_{k}" for k in range(4)],
        },
        {
            "model": "rm-b",
            "head_type": "bt",
            "num_objectives": 3,
            "objective_names": [f"objective_{k}" for k in range(3)],
        },
    ]


def test_the_model_field_picks_the_model_that_scores(two_models, first, second, templated):
    pairs = {"prompts": PROMPTS[:3], "responses": RESPONSES[:3]}
    default = two_models.post("/score", json=pairs).json()["results"]
    named_a = two_models.post("/score", json={**pairs, "model": "rm-a"}).json()["results"]
    named_b = two_models.post("/score", json={**pairs, "model": "rm-b"}).json()["results"]
    reward = lambda results: torch.tensor([r["reward"] for r in results])  # noqa: E731
    assert torch.allclose(reward(default), first.score(PROMPTS[:3], RESPONSES[:3]).reward, atol=1e-5)
    assert torch.equal(reward(default), reward(named_a))
    assert torch.allclose(reward(named_b), second.score(PROMPTS[:3], RESPONSES[:3]).reward, atol=1e-5)
    assert not torch.allclose(reward(named_a), reward(named_b), atol=1e-3)
    assert len(named_b[0]["objective_weights"]) == 3
    full, prompt = templated(second.tokenizer, PROMPTS[0], RESPONSES[0])
    answer = two_models.post("/get_reward", json={"query": [full], "prompts": [prompt], "model": "rm-b"})
    assert answer.status_code == 200, answer.text
    assert abs(answer.json()["rewards"][0] - float(reward(named_b)[0])) < 1e-5


@pytest.mark.parametrize(
    ("path", "model", "status", "words"),
    [
        ("/score", "rm-c", 400, ["'rm-c' is not served here", "rm-a, rm-b"]),
        ("/get_reward", "", 400, ["'' is not served here", "rm-a, rm-b"]),
        ("/score", 3, 422, ["model", "valid string"]),
        ("/get_reward", ["rm-a"], 422, ["model", "valid string"]),
        ("/score", "x" * 100_000, 422, ["model", "at most 256 characters"]),
    ],
)
def test_a_bad_model_field_is_a_clear_client_error(two_models, path, model, status, words):
    body = (
        {"prompts": ["Hi"], "responses": ["Hello"], "model": model}
        if path == "/score"
        else {"query": ["Hi Hello"], "prompts": ["Hi"], "model": model}
    )
    answer = two_models.post(path, json=body)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert len(detail) < 500  # a huge name is not echoed back whole
    for word in words:
        assert word in detail, (word, detail)


def test_duplicate_model_names_are_refused():
    assert served_model_names(["runs/a/rm", "runs/b/other"]) == ["rm", "other"]
    assert served_model_names([["runs/a", "runs/b"]]) == ["a + b"]
    with pytest.raises(ValueError, match="same name 'rm' \\(runs/a/rm and runs/b/rm/\\)"):
        served_model_names(["runs/a/rm", "runs/b/rm/"])
    with pytest.raises(ValueError, match="--model_id names one model"):
        served_model_names(["a", "b"], "my-id")


# ----- the command line --------------------------------------------------------------------------------------------
@pytest.fixture
def saved_models(tmp_path, first, second):
    paths = [str(tmp_path / "rm-a"), str(tmp_path / "rm-b")]
    first.save_pretrained(paths[0])
    second.save_pretrained(paths[1])
    return paths


def test_serve_two_models_on_two_cpu_replicas(saved_models, monkeypatch, first, second):
    seen = {}

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app))
    argv = ["serve", "--model", saved_models[0], "--model", saved_models[1], "--devices", "cpu,cpu"]
    assert main(argv) == 0
    with TestClient(seen["app"]) as client:
        health = client.get("/health").json()
        answer = client.post(
            "/score", json={"prompts": PROMPTS[:2], "responses": RESPONSES[:2], "model": "rm-b"}
        )
        stats = client.get("/stats").json()
    assert [m["model"] for m in health["models"]] == ["rm-a", "rm-b"] and health["model"] == "rm-a"
    assert answer.status_code == 200, answer.text
    got = torch.tensor([r["reward"] for r in answer.json()["results"]])
    assert torch.allclose(got, second.score(PROMPTS[:2], RESPONSES[:2]).reward, atol=1e-5)
    assert [(r["model"], r["device"]) for r in stats["replicas"]] == [
        ("rm-a", "cpu"),
        ("rm-a", "cpu"),
        ("rm-b", "cpu"),
        ("rm-b", "cpu"),
    ]


def test_the_single_device_flag_still_works(saved_models, monkeypatch):
    seen = {}

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app))
    assert main(["serve", "--model", saved_models[0], "--device", "cpu"]) == 0
    with TestClient(seen["app"]) as client:
        stats = client.get("/stats").json()
    assert [(r["model"], r["device"]) for r in stats["replicas"]] == [("rm-a", "cpu")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--devices", "cpu,,cpu"], "entry 2 is empty"),
        (["--devices", "cuda:99"], "cuda:99"),
        (["--devices", ",".join(["cpu"] * 1000)], "at most 64 replicas"),
        (["--model", "elsewhere/rm-a"], "same name 'rm-a'"),
        (["--model", "elsewhere/rm-b", "--model_id", "x"], "--model_id names one model"),
    ],
)
def test_serve_refuses_bad_devices_and_names_before_loading(saved_models, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", saved_models[0], *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("vrm serve: error: ")]
    assert len(errors) == 1 and message in errors[0], err


def test_a_served_deep_ensemble_returns_its_members_rewards(tiny_model, tmp_path):
    """`/score` of a deep ensemble gives what `RewardPipeline` (and `vrm score`) give: the members' rewards and
    the aleatoric / epistemic parts of the std, whichever forward batches its items were scored in."""
    paths = []
    for seed in (0, 1):
        model, tokenizer, _ = tiny_model("llama_chat", seed=seed)
        paths.append(str(tmp_path / f"member-{seed}"))
        model.save_pretrained(paths[-1])
        tokenizer.save_pretrained(paths[-1])
    ensemble = RewardPipeline.from_pretrained(paths, device="cpu")
    expected = [ensemble(p, r) for p, r in zip(PROMPTS[:3], RESPONSES[:3], strict=True)]
    with TestClient(build_app(ensemble, ServerConfig(max_batch_size=2))) as client:  # 3 items: 2 batches
        results = client.post("/score", json={"prompts": PROMPTS[:3], "responses": RESPONSES[:3]}).json()[
            "results"
        ]
    for result, direct in zip(results, expected, strict=True):
        assert set(result) == set(direct)
        for key in ("member_rewards", "aleatoric_std", "epistemic_std", "reward"):
            assert result[key] == pytest.approx(direct[key], abs=1e-5), key
