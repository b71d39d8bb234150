"""The server phase of the robustness benchmark: `vrm serve` as a real uvicorn subprocess on 127.0.0.1.

* every bad request of the corpus (`bad_inputs.server_requests`) once, over a plain socket (exact bytes): each must
  get a 4xx naming the field, never a 5xx or a 200; the good ones (`bad_inputs.good_requests`) a 200 with finite
  numbers (and, where asked, no null);
* `load_phase`: `--clients` concurrent clients send a mixed good / bad load (target: 0 responses >= 500, every good
  answer 200 with finite numbers);
* `latency_phase`: 1-item `/score` requests while maximal legal requests (`max_items_per_request` items filling
  `max_request_tokens`) run back to back (target: p99 <= 2 s);
* `slow_clients_phase`: 1,000 half-open connections (headers never finished) and 20 slow-body senders
  (`Content-Length: 1000`, 10 bytes sent) held open while 50 one-item `/get_reward` requests are sent one after
  another on fresh connections (target: p99 <= 2 s, 0 non-200); a silent connection (connects, sends nothing)
  must get 408 and be closed after the server's `timeout_request_read` (its default, 30 s: waited for, bounded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import select
import socket
import subprocess
import time
from collections import Counter
from typing import Any

import bad_inputs  # tests/fixtures (on sys.path: benchmarks/robustness/__init__.py)
import httpx

from benchmarks.robustness.harness import free_port, non_finite_value, subprocess_env, vrm
from benchmarks.serve_throughput import stop_server, wait_until_healthy

QUICK_SERVER = {  # the --quick corpus of bad requests (the conservative_lambda ones always run)
    "query-pad-only",
    "query-whitespace",
    "query-surrogate",
    "score-response-number",
    "malformed-json",
    "json-nested-100k",
    "body-50mb",
    "tokens-over-max-request-tokens",
}
TIMEOUT_REQUEST_READ = (
    30.0  # the server's default (`ServerConfig.timeout_request_read`), which this phase checks
)
HALF_OPEN = 1000
SLOW_BODIES = 20
SLOW_PROBES = 50


def start_server(model: str, port: int, threads: int, log_path: str) -> subprocess.Popen:
    command = vrm("serve", "--model", model, "--port", str(port), "--log_level", "warning")
    if threads:
        command += ["--torch_threads", str(threads)]
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
    return wait_until_healthy(process, port, lambda: f": see {log_path}")


def readable(sock: socket.socket, seconds: float) -> bool:
    """Whether `sock` has data (or was closed) within `seconds` (poll: a descriptor past 1023 is fine)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(int(seconds * 1000)))


def raw_request(
    port: int, request: bad_inputs.BadRequest, timeout: float = 120
) -> tuple[int | None, str, float]:
    """Send `request` over a plain socket (exact bytes, any header); stop sending once the server answered.

    Returns (status or None, response body, seconds)."""
    started = time.perf_counter()
    headers = {"Host": f"127.0.0.1:{port}", "Connection": "close", **request.headers}
    body = request.body
    if body is not None:
        if request.stream:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers.setdefault("Content-Length", str(len(body)))
    head = f"{request.method} {request.path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def answered() -> bool:
            return readable(sock, 0)

        try:
            sock.sendall(head.encode() + b"\r\n")
            if body:
                piece = 1 << 20
                for start in range(0, len(body), piece):
                    if answered():  # an early answer (413): a well-behaved client stops sending
                        break
                    part = body[start : start + piece]
                    sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n" if request.stream else part)
                else:
                    if request.stream:
                        sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection while the body was being sent: read its answer
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except OSError:
            pass
    seconds = time.perf_counter() - started
    match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
    if not match:
        return None, received[:200].decode("utf-8", "replace"), seconds
    text = received.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
    return int(match.group(1)), text, seconds


def detail_of(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(value, dict) and "detail" in value:
        return str(value["detail"])[:400]
    return text[:300]


def finite_answer(text: str, no_null: bool = False) -> bool:
    """`text` is JSON with only finite numbers (and, with `no_null`, no null anywhere)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return non_finite_value(value) is False and not (no_null and has_null(value))


def has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(has_null(v) for v in value)
    return False


def judge_response(
    request: bad_inputs.BadRequest, status: int | None, text: str, alive: bool
) -> dict[str, Any]:
    refuse = 200 not in request.expect
    out: dict[str, Any] = {
        "case": f"serve:{request.case}",
        "group": "serve",
        "surface": "vrm serve (HTTP)",
        "status": status,
    }
    out["expected"] = "refuse" if refuse else "accept"
    if not alive:
        out.update(outcome="crash", detail="the server process exited")
    elif status is None:
        out.update(outcome="stall", detail=f"no HTTP answer ({text[:100]!r})")
    elif status >= 500:
        out.update(outcome="server_5xx", detail=detail_of(text))
    elif not refuse:
        ok = status == 200 and finite_answer(text, request.no_null)
        out.update(
            outcome="accepted" if ok else "silent" if status == 200 else "false_refusal", detail=text[:200]
        )
    elif status < 300:
        out.update(outcome="silent", detail="200 on a request that must be refused: " + text[:200])
    else:
        detail = detail_of(text)
        out.update(
            outcome="clear_error",
            detail=detail,
            names_field=bool(re.search(request.message, detail)) if request.message else None,
            expected_status=status in request.expect,
        )
    return out


def maximal_request(model: str, items: int = 256, tokens: int = 262_144) -> tuple[bytes, int]:
    """A /score body as large as the default limits allow: `items` pairs of together <= `tokens` tokens."""
    from transformers import PreTrainedTokenizerFast

    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.models.config import VRMConfig

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model)
    template = PreferenceTokenizer.from_model_config(tokenizer, VRMConfig.from_pretrained(model))
    words = "Add an index and measure again, then check the query plan once more.".split()
    prompt = "How do I fix a slow query? Please explain step by step."

    def count(n: int) -> int:
        response = " ".join(words[i % len(words)] for i in range(n))
        prompt_ids, response_ids = template.encode_parts(prompt, response)
        return len(prompt_ids) + len(response_ids)

    low, high = 1, 4096
    while low < high:  # the most words whose pair fits in tokens // items tokens
        middle = (low + high + 1) // 2
        low, high = (middle, high) if count(middle) <= tokens // items else (low, middle - 1)
    response = " ".join(words[i % len(words)] for i in range(low))
    body = json.dumps({"prompts": [prompt] * items, "responses": [response] * items}).encode()
    return body, count(low) * items


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def load_phase(
    base: str, mix: list[bad_inputs.BadRequest], clients: int, seconds: float
) -> dict[str, Any]:
    """`clients` concurrent clients cycle through `mix` (good and bad requests) for `seconds`."""
    statuses: Counter[str] = Counter()
    silent, errors, sent = [], Counter(), 0
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal sent
            position = offset
            while time.perf_counter() < deadline:
                request = mix[position % len(mix)]
                position += 1
                sent += 1
                started = time.perf_counter()
                try:
                    answer = await client.request(
                        request.method, request.path, content=request.body, headers=request.headers
                    )
                except httpx.HTTPError as err:
                    errors[type(err).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[str(answer.status_code)] += 1
                good = 200 in request.expect
                if good and (answer.status_code != 200 or not finite_answer(answer.text, request.no_null)):
                    silent.append(f"{request.case}: {answer.status_code} {answer.text[:100]}")
                elif not good and answer.status_code < 300:
                    silent.append(f"{request.case}: 200 on a request that must be refused")

        await asyncio.gather(*[worker(i * 7) for i in range(clients)])
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": sent,
        "good_requests_in_mix": sum(200 in r.expect for r in mix),
        "bad_requests_in_mix": sum(200 not in r.expect for r in mix),
        "statuses": dict(sorted(statuses.items())),
        "responses_5xx": sum(n for code, n in statuses.items() if code.startswith("5")),
        "transport_errors": dict(errors),
        "wrong_answers": len(silent),
        "wrong_answer_examples": silent[:5],
        "p50_s": round(percentile(latencies, 0.5) or 0, 4),
        "p99_s": round(percentile(latencies, 0.99) or 0, 4),
    }


async def latency_phase(base: str, big: bytes, probes: int, max_seconds: float) -> dict[str, Any]:
    """p50 / p99 of 1-item /score requests while maximal legal requests run back to back."""
    small = {"prompts": ["Tell me a joke."], "responses": ["Why did the chicken cross the road?"]}
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        idle = []
        for _ in range(10):
            started = time.perf_counter()
            await client.post("/score", json=small)
            idle.append(time.perf_counter() - started)
        state = {"in_flight": False, "stop": False}
        big_runs: list[tuple[int, float]] = []

        async def big_loop() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=300) as big_client:
                while not state["stop"]:
                    state["in_flight"] = True
                    started = time.perf_counter()
                    answer = await big_client.post("/score", content=big, headers=headers)
                    big_runs.append((answer.status_code, time.perf_counter() - started))
                    state["in_flight"] = False

        task = asyncio.create_task(big_loop())
        await asyncio.sleep(1.0)  # the first large request is being tokenized / scored
        latencies, statuses = [], Counter()
        deadline = time.perf_counter() + max_seconds
        while len(latencies) < probes and time.perf_counter() < deadline:
            if not state["in_flight"]:
                await asyncio.sleep(0.01)
                continue
            started = time.perf_counter()
            answer = await client.post("/score", json=small)
            elapsed = time.perf_counter() - started
            statuses[str(answer.status_code)] += 1
            if state["in_flight"]:
                latencies.append(elapsed)
        state["stop"] = True
        await task
    return {
        "probes_during_large_requests": len(latencies),
        "probe_statuses": dict(statuses),
        "p50_s": round(percentile(latencies, 0.5) or 0, 4),
        "p99_s": round(percentile(latencies, 0.99) or 0, 4),
        "max_s": round(max(latencies, default=0), 4),
        "idle_p50_s": round(percentile(idle, 0.5) or 0, 4),
        "large_requests": len(big_runs),
        "large_request_statuses": dict(Counter(str(code) for code, _ in big_runs)),
        "large_request_seconds": [round(s, 2) for _, s in big_runs],
    }


def server_phase(work: str, model: str, args: argparse.Namespace) -> tuple[list[dict], dict, dict, dict]:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model)
    user = [{"role": "user", "content": "How do I fix a slow query?"}]
    templated = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": "Add an index."}], tokenize=False
    )
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    bad = bad_inputs.server_requests(tokenizer.pad_token, templated, prompt, big=True)
    good = bad_inputs.good_requests(templated, prompt)
    if args.quick:
        bad = [r for r in bad if r.case in QUICK_SERVER or "lambda" in r.case]
    bad += model_field_requests(templated, prompt)  # always run
    bad += inspector_page_requests()
    big, big_tokens = maximal_request(model)
    port = free_port()
    process = start_server(model, port, args.torch_threads, os.path.join(work, "server.log"))
    results = []
    try:
        for request in [*good, *bad]:
            status, text, seconds = raw_request(port, request)
            result = judge_response(request, status, text, process.poll() is None)
            result["seconds"] = round(seconds, 3)
            results.append(result)
            print(f"[robustness] {result['case']:<50} {status}  {result['outcome']}", flush=True)
        mix_bad = [
            r
            for r in bad_inputs.server_requests(tokenizer.pad_token, templated, prompt, big=False)
            if not r.stream
            and "Content-Length" not in r.headers
            and r.case != "tokens-over-max-request-tokens"
        ]
        mix = [request for pair in zip(good * len(mix_bad), mix_bad, strict=False) for request in pair]
        print(
            f"[robustness] load: {args.clients} clients, {args.load_seconds:g} s, mixed good / bad",
            flush=True,
        )
        load = asyncio.run(load_phase(f"http://127.0.0.1:{port}", mix, args.clients, args.load_seconds))
        print(f"[robustness] load: {load['requests']} requests, statuses {load['statuses']}", flush=True)
        print(f"[robustness] latency: 1-item requests during {big_tokens}-token requests", flush=True)
        latency = asyncio.run(
            latency_phase(f"http://127.0.0.1:{port}", big, args.probes, args.latency_seconds)
        )
        latency.update(large_request_items=256, large_request_tokens=big_tokens, large_request_bytes=len(big))
        load["server_alive_after"] = process.poll() is None
        load["stats"] = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()
        print(
            f"[robustness] slow clients: {HALF_OPEN} half-open + {SLOW_BODIES} slow-body connections, "
            f"{SLOW_PROBES} 1-item /get_reward requests",
            flush=True,
        )
        slow = slow_clients_phase(port, _body_of(good, "good-get-reward"), process)
        print(
            f"[robustness] slow clients: p50 {slow['p50_s']} s, p99 {slow['p99_s']} s, statuses "
            f"{slow['probe_statuses']}, silent connection: {slow['silent_connection']}",
            flush=True,
        )
    finally:
        stop_server(process)
    return results, load, latency, slow


def _body_of(requests: list[bad_inputs.BadRequest], case: str) -> bytes:
    return next(r.body for r in requests if r.case == case)


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards `wanted` (the server, started later, inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft if soft >= wanted else (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard))
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _open(port: int, payload: bytes) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if payload:
            sock.sendall(payload)
        return sock
    except OSError:
        return None


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """What `sock` receives until the peer closes it or `deadline` passes; (bytes, closed)."""
    received = b""
    while time.monotonic() < deadline:
        if not readable(sock, max(0.0, min(1.0, deadline - time.monotonic()))):
            continue
        try:
            data = sock.recv(65536)
        except OSError:
            return received, True
        if not data:
            return received, True
        received += data
    return received, False


def slow_clients_phase(port: int, good_body: bytes, process: subprocess.Popen) -> dict[str, Any]:
    """1,000 half-open and 20 slow-body connections held open while 50 one-item requests are sent one after
    another on fresh connections; then the silent connection's 408 (see the module docstring)."""
    host = f"Host: 127.0.0.1:{port}\r\n"
    half_open_head = f"POST /get_reward HTTP/1.1\r\n{host}Content-Type: application/json\r\n".encode()
    slow_head = (
        f"POST /get_reward HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    out: dict[str, Any] = {
        "half_open_connections": HALF_OPEN,
        "slow_body_connections": SLOW_BODIES,
        "timeout_request_read_s": TIMEOUT_REQUEST_READ,
    }
    out["open_file_limit"] = raise_open_file_limit(HALF_OPEN + SLOW_BODIES + 256)
    started = time.monotonic()
    silent = _open(port, b"")
    held = [_open(port, half_open_head) for _ in range(HALF_OPEN)]
    held += [_open(port, slow_head + b'{"query": ') for _ in range(SLOW_BODIES)]
    out["connections_opened"] = sum(sock is not None for sock in held)
    out["seconds_to_open"] = round(time.monotonic() - started, 2)
    request = bad_inputs.BadRequest("slow-phase-probe", "/get_reward", good_body, expect=(200,))
    latencies, statuses, wrong = [], Counter(), 0
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
        out["health_status"] = health.status_code
    except httpx.HTTPError as err:
        out["health_status"] = f"{type(err).__name__}"
    for _ in range(SLOW_PROBES):
        try:
            status, text, seconds = raw_request(port, request, timeout=30)
        except OSError as err:
            statuses[type(err).__name__] += 1
            continue
        statuses[str(status)] += 1
        latencies.append(seconds)
        if status == 200 and not finite_answer(text):
            wrong += 1
    out["probe_seconds_after_open"] = round(time.monotonic() - started, 2)
    out.update(
        probes=SLOW_PROBES,
        probe_statuses=dict(statuses),
        non_200=sum(n for code, n in statuses.items() if code != "200"),
        wrong_answers=wrong,
        p50_s=round(percentile(latencies, 0.5) or 0, 4),
        p99_s=round(percentile(latencies, 0.99) or 0, 4),
        max_s=round(max(latencies, default=0), 4),
    )
    try:  # after the probes, while the slow clients are still held (if the probes took < timeout_request_read)
        out["health_status_after"] = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code
    except httpx.HTTPError as err:
        out["health_status_after"] = f"{type(err).__name__}"
    # the silent connection: 408 and closed once timeout_request_read passed (waited for at most 15 s more)
    if silent is None:
        out["silent_connection"] = {"outcome": "could not connect"}
    else:
        received, closed = read_until_closed(silent, started + TIMEOUT_REQUEST_READ + 15)
        waited = time.monotonic() - started
        match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
        status = int(match.group(1)) if match else None
        ok = status == 408 and closed and waited >= TIMEOUT_REQUEST_READ - 1
        out["silent_connection"] = {
            "status": status,
            "closed": closed,
            "seconds": round(waited, 2),
            "outcome": "408_and_closed" if ok else "not_408_and_closed",
        }
        silent.close()
    # the held connections got the same treatment: count those answered 408 and closed by now (they were opened
    # up to `seconds_to_open` after the silent one)
    time.sleep(min(5.0, 1.0 + out["seconds_to_open"]))
    answered = 0
    for sock in held[:100]:  # a sample: the rest are closed without reading
        if sock is None:
            continue
        received, closed = read_until_closed(sock, time.monotonic() + 0.05)
        answered += closed and received.startswith(b"HTTP/1.1 408")
    out["held_sample_408_and_closed"] = f"{answered} of {min(100, len(held))}"
    for sock in held:
        if sock is not None:
            sock.close()
    out["server_alive_after"] = process.poll() is None
    return out


def model_field_requests(templated: str, prompt: str) -> list[bad_inputs.BadRequest]:
    """The optional `"model"` field of `/score` and `/get_reward` (which served model scores the request): a name
    not served is a 400 naming the served ones, a non-string or a huge name a 422 naming the field; never a 5xx,
    never a 200."""
    score = {"prompts": ["How do I sort?"], "responses": ["sorted(xs)"]}
    reward = {"query": [templated], "prompts": [prompt]}
    cases = [
        ("model-field-unknown", "/score", {**score, "model": "no-such-model"}, r"not served here", (400,)),
        ("model-field-empty", "/get_reward", {**reward, "model": ""}, r"not served here", (400,)),
        ("model-field-number", "/score", {**score, "model": 7}, r"model", (422,)),
        ("model-field-list", "/get_reward", {**reward, "model": ["a"]}, r"model", (422,)),
        ("model-field-object", "/score", {**score, "model": {"name": "a"}}, r"model", (422,)),
        ("model-field-1mb", "/score", {**score, "model": "m" * 1_000_000}, r"model.*256", (422,)),
        (
            "model-field-surrogate",
            "/get_reward",
            {**reward, "model": "\ud800"},
            r"model|not served",
            (400, 422),
        ),
    ]
    return [
        bad_inputs.BadRequest(case, path, json.dumps(body).encode(), message, expect=expect)
        for case, path, body, message, expect in cases
    ]


def inspector_page_requests() -> list[bad_inputs.BadRequest]:
    """The inspector page (`GET /`) is the one thing at `/`: another method there is a 405, and the page's file
    or a path that climbs out of the package is a 404 (no static files are served); never a 5xx, never a 200."""
    no_body = {"Accept": "text/html"}
    return [
        bad_inputs.BadRequest(
            "inspector-post", "/", b'{"prompts": ["a"]}', r"Method Not Allowed", expect=(405,)
        ),
        bad_inputs.BadRequest(
            "inspector-delete", "/", None, r"Method Not Allowed", "DELETE", no_body, (405,)
        ),
        bad_inputs.BadRequest(
            "inspector-file", "/inspector.html", None, r"Not Found", "GET", no_body, (404,)
        ),
        bad_inputs.BadRequest(
            "inspector-traversal", "/..%2f..%2fpyproject.toml", None, r"Not Found", "GET", no_body, (404,)
        ),
    ]
