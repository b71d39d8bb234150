"""The real server (uvicorn on 127.0.0.1, as `vrm serve` runs it) keeps serving while hundreds of clients hold
half-open connections or send their bodies slowly, times those clients out, and still limits the requests it
serves at once (`vrm.serving.connections`)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from vrm.serving.app import build_app, uvicorn_settings
from vrm.serving.config import ServerConfig


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline):
    return tiny_pipeline()


@contextlib.contextmanager
def serving(pipeline, config: ServerConfig) -> Iterator[str]:
    """The app served by uvicorn with `vrm serve`'s settings on a free 127.0.0.1 port, in a thread; its URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(pipeline, config), log_level="warning", backlog=2048, **uvicorn_settings(config)
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):  # bounded: 10 s
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()


def open_sockets(url: str, count: int, payload: bytes) -> list[socket.socket]:
    """`count` connections to the server that each sent `payload` (an unfinished request) and nothing more."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        if payload:
            sock.sendall(payload)
        sockets.append(sock)
    return sockets


HALF_OPEN = (
    b"POST /get_reward HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"  # no blank line
)
SLOW_BODY = (
    b"POST /get_reward HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b'Content-Length: 1000\r\n\r\n{"query": ["'
)


def good_requests(url: str, query: str) -> None:
    """/health and a 1-item /get_reward answer 200 within a few seconds, on new connections."""
    with httpx.Client(timeout=5.0) as client:
        started = time.monotonic()
        health = client.get(f"{url}/health")
        assert health.status_code == 200, health.text
        reward = client.post(f"{url}/get_reward", json={"query": [query]})
        assert reward.status_code == 200, reward.text
        assert len(reward.json()["rewards"]) == 1
        assert time.monotonic() - started < 5


def test_half_open_and_slow_clients_do_not_stop_good_requests(pipeline, templated):
    query = templated(pipeline.tokenizer, "Hi", "Hello!")[0]
    sockets: list[socket.socket] = []
    with serving(pipeline, ServerConfig()) as url:  # the default limits: limit_concurrency=128
        try:
            sockets += open_sockets(url, 300, HALF_OPEN)
            sockets += open_sockets(url, 200, b"")  # connected, sent nothing
            sockets += open_sockets(url, 20, SLOW_BODY)  # headers in, 1000-byte body never finished
            time.sleep(0.5)  # the server has accepted them all
            for _ in range(3):
                good_requests(url, query)
            for sock in sockets[-20:]:  # the slow senders go on trickling
                sock.sendall(b"x")
            good_requests(url, query)
        finally:
            for sock in sockets:
                sock.close()


def read_all(sock: socket.socket, limit_s: float) -> bytes:
    """What the server sends until it closes the connection (bounded by `limit_s`)."""
    sock.settimeout(limit_s)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


@pytest.mark.slow
def test_requests_not_received_in_time_get_408_and_are_closed(pipeline, templated):
    query = templated(pipeline.tokenizer, "Hi", "Hello!")[0]
    with serving(pipeline, ServerConfig(timeout_request_read=1.0)) as url:
        half_open, idle, slow = (open_sockets(url, 1, payload)[0] for payload in (HALF_OPEN, b"", SLOW_BODY))
        try:
            started = time.monotonic()
            for sock in (half_open, idle, slow):
                answer = read_all(sock, 5.0)
                assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
                assert b"not received in full within timeout_request_read" in answer
            assert time.monotonic() - started < 4
            # a request sent whole within the limit, and then a second one on the same connection, are answered
            with httpx.Client(timeout=5.0) as client:
                for _ in range(2):
                    assert client.post(f"{url}/get_reward", json={"query": [query]}).status_code == 200
                    time.sleep(0.6)
        finally:
            for sock in (half_open, idle, slow):
                sock.close()


@pytest.mark.slow
def test_limit_concurrency_still_limits_requests_but_not_idle_connections(pipeline, templated):
    query = templated(pipeline.tokenizer, "Hi", "Hello!")[0]
    # limit 2; requests wait 1.5 s in the batcher for others to join, so two of them fill the limit
    config = ServerConfig(limit_concurrency=2, max_wait_ms=1500)
    with serving(pipeline, config) as url:
        sockets = open_sockets(url, 50, HALF_OPEN) + open_sockets(url, 5, SLOW_BODY)
        try:
            time.sleep(0.3)
            with httpx.Client(
                timeout=5.0
            ) as client:  # half-open connections and unfinished bodies: not counted
                assert client.get(f"{url}/health").status_code == 200
            answers: list[int] = []

            def post() -> None:
                with httpx.Client(timeout=10.0) as client:
                    answers.append(client.post(f"{url}/get_reward", json={"query": [query]}).status_code)

            threads = [threading.Thread(target=post) for _ in range(2)]
            for thread in threads:
                thread.start()
            time.sleep(0.7)  # both are received and waiting in the batcher
            with httpx.Client(timeout=5.0) as client:
                assert client.get(f"{url}/health").status_code == 503  # the limit counts requests
            for thread in threads:
                thread.join(timeout=10)
            assert answers == [200, 200]
        finally:
            for sock in sockets:
                sock.close()
