"""Two `vrm serve` processes as OpenRLHF's PPO uses them (`--reward.remote_url http://a/get_reward,http://b/get_reward`):
one request per rollout, spread over the servers, each answering with the rewards one server gives."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest
from tiny_models import PAIRS

from benchmarks.serve_throughput import stop_server, wait_until_healthy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openrlhf_payload(tokenizer, prompt: str, response: str) -> dict:
    """What OpenRLHF posts for one rollout: the prompt and response token ids decoded with their special tokens
    (`query`), the templated prompt (`prompts`) and the rollout's label (`labels`, None without a label key)."""
    user = [{"role": "user", "content": prompt}]
    templated_prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    ids = tokenizer(full, add_special_tokens=False).input_ids
    query = tokenizer.decode(ids, skip_special_tokens=False)
    return {"query": [query], "prompts": [templated_prompt], "labels": [None]}


@pytest.mark.slow
def test_two_servers_share_openrlhf_rollouts_and_agree(tmp_path, tiny_pipeline):
    pipeline = tiny_pipeline()
    model = str(tmp_path / "rm")
    pipeline.save_pretrained(model)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    ports = [_free_port(), _free_port()]
    logs = [open(tmp_path / f"server-{i}.log", "w") for i in range(2)]
    servers = []
    try:
        for port, log in zip(ports, logs, strict=True):
            command = [sys.executable, "-m", "vrm", "serve", "--model", model, "--port", str(port)]
            command += ["--log_level", "warning", "--torch_threads", "1"]
            servers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
        for process, port, log in zip(servers, ports, logs, strict=True):
            wait_until_healthy(process, port, lambda log=log: f": see {log.name}", timeout_s=120)
        urls = [f"http://127.0.0.1:{port}/get_reward" for port in ports]
        rollouts = [(p, r) for p, c, r in PAIRS for r in (c, r)]
        payloads = [_openrlhf_payload(pipeline.tokenizer, p, r) for p, r in rollouts]
        with httpx.Client(timeout=60) as client:
            spread = [client.post(urls[i % 2], json=body) for i, body in enumerate(payloads)]  # round robin
            one_server = [client.post(urls[0], json=body) for body in payloads]
            stats = [client.get(url.replace("/get_reward", "/stats")).json() for url in urls]
        assert [a.status_code for a in spread + one_server] == [200] * (2 * len(payloads)), spread[0].text
        spread_rewards = [a.json()["rewards"][0] for a in spread]
        one_rewards = [a.json()["rewards"][0] for a in one_server]
        assert spread_rewards == pytest.approx(one_rewards, abs=1e-5)
        direct = pipeline.score([p for p, _ in rollouts], [r for _, r in rollouts]).reward.tolist()
        assert spread_rewards == pytest.approx(direct, abs=1e-4)
        assert max(spread_rewards) - min(spread_rewards) > 1e-4  # the rewards depend on the rollouts
        # both servers answered their share
        assert stats[0]["requests"] == len(payloads) + (len(payloads) + 1) // 2
        assert stats[1]["requests"] == len(payloads) // 2 > 0
    finally:
        for process in servers:
            stop_server(process)
        for log in logs:
            log.close()
