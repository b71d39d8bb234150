"""Throughput and latency of `vrm serve` with and without dynamic batching (loopback traffic only).

    python benchmarks/serve_throughput.py --model runs/my-rm               # a trained model
    python benchmarks/serve_throughput.py                                   # a tiny random model (overhead only)
    python benchmarks/serve_throughput.py --requests 32 --output /tmp/serve.json     # a quick smoke run

For each mode — `batched` (max_batch_size 32, max_wait_ms 5) and `unbatched` (max_batch_size 1, max_wait_ms 0:
one request per forward) — the server runs as a subprocess (`python -m vrm serve`) on 127.0.0.1, and for
1, 8 and 64 concurrent clients each sending one (prompt, response) pair per `POST /score` request, the script
sends `--requests` requests (or stops at `--time_cap` seconds), then prints requests/s, p50 / p99 latency and
the mean number of items per forward batch (from `/stats`). JSON goes to `--output` (written atomically).
Without `--model`, a tiny random llama-like model is built in a temporary directory: its numbers measure the
server's own overhead, not a real model's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
import torch

PAIRS = [
    ("How do I fix a slow query?", "Add an index on the filtered column, then measure again."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side."),
    ("Is it safe to rewire my house myself?", "Please be careful and ask a licensed electrician first."),
    ("I feel sad today.", "That sounds hard, and your feelings make complete sense. Do you want to talk?"),
    ("Summarize the plot of Hamlet.", "A prince avenges his father's murder, and almost everyone dies."),
]
MODES = {
    "batched": {"max_batch_size": 32, "max_wait_ms": 5},
    "unbatched": {"max_batch_size": 1, "max_wait_ms": 0},
}


def build_tiny_model(directory: str) -> str:
    """A random-initialized tiny llama-like vrm model with a chat-template BPE tokenizer (no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.models.modeling import VRMForSequenceClassification

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([f"{p} {r} user assistant" for p, r in PAIRS] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = VRMForSequenceClassification.from_backbone_config(config, head_type="vrm")
    pref = PreferenceTokenizer(tokenizer, max_length=256, is_causal=model.config.is_causal)
    model.config.response_marker_ids = pref.response_marker_ids
    model.config.input_format = pref.input_format
    model.config.max_length = 256
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model: str, port: int, settings: dict[str, Any], device: str | None, threads: int
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "vrm",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--log_level",
        "warning",
    ]
    for key, value in settings.items():
        command += [f"--{key}", str(value)]
    if device:
        command += ["--device", device]
    if threads:
        command += ["--torch_threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return wait_until_healthy(process, port, lambda: f":\n{process.stderr.read()}")


def wait_until_healthy(
    process: subprocess.Popen, port: int, output: Callable[[], str], timeout_s: float = 180
) -> subprocess.Popen:
    """Poll `/health` until the server answers 200; `output()` says where its log is if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}{output()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start within {timeout_s:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def run_level(base: str, concurrency: int, requests: int, time_cap: float) -> dict[str, Any]:
    """`concurrency` clients send single-pair requests until `requests` were sent or `time_cap` passed."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors = 0
    sent = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        for prompt, response in PAIRS:  # warm up (and open connections)
            await client.post("/score", json={"prompts": [prompt], "responses": [response]})
        before = (await client.get("/stats")).json()
        started = time.perf_counter()
        deadline = started + time_cap

        async def worker() -> None:
            nonlocal sent, errors
            while sent < requests and time.perf_counter() < deadline:
                prompt, response = PAIRS[sent % len(PAIRS)]
                sent += 1
                t0 = time.perf_counter()
                answer = await client.post("/score", json={"prompts": [prompt], "responses": [response]})
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
        after = (await client.get("/stats")).json()
    batches = after["batches"] - before["batches"]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "mean_items_per_batch": round((after["items"] - before["items"]) / batches, 2) if batches else None,
        "capped_by_time": len(latencies) + errors < requests,
    }


def write_json_atomic(data: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default=None, help="A saved vrm model directory (default: a tiny random one)."
    )
    parser.add_argument("--requests", type=int, default=256, help="Requests per concurrency level and mode.")
    parser.add_argument("--time_cap", type=float, default=60.0, help="Seconds at most per level and mode.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--device", default=None, help="Passed to the server (default: cuda if available).")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=1,
        help="The server's torch CPU threads (0: torch's default). With 2 threads on 2 cores busy with other "
        "work, each forward can stall for ~250 ms on thread synchronization; 1 keeps CPU numbers steady.",
    )
    parser.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "serve_throughput.json"),
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        if args.model is None:
            model = build_tiny_model(scratch)
            model_description = (
                "tiny random llama-like vrm model (hidden 64, 2 layers): measures server overhead"
            )
            print(f"[serve_throughput] no --model given: built a {model_description}, in {model}")
        else:
            model = args.model
            model_description = model
        rows = []
        for mode in args.modes:
            port = free_port()
            process = start_server(model, port, MODES[mode], args.device, args.torch_threads)
            try:
                for concurrency in args.concurrency:
                    row = asyncio.run(
                        run_level(f"http://127.0.0.1:{port}", concurrency, args.requests, args.time_cap)
                    )
                    row = {"mode": mode, **MODES[mode], **row}
                    rows.append(row)
                    print(
                        f"[serve_throughput] {mode:<9} c={concurrency:<3} {row['requests_per_s']:8.1f} req/s  "
                        f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms",
                        flush=True,
                    )
            finally:
                stop_server(process)

    header = f"{'mode':<10}{'clients':>8}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'items/fwd':>11}"
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        print(
            f"{row['mode']:<10}{row['concurrency']:>8}{row['requests']:>10}{row['requests_per_s']:>10.1f}"
            f"{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}{row['mean_items_per_batch'] or 0:>11.2f}"
        )
    result = {
        "command": "python " + shlex.join(sys.argv),
        "model": model_description,
        "settings": {**vars(args), "modes": {mode: MODES[mode] for mode in args.modes}},
        "endpoint": "POST /score, one (prompt, response) pair per request, loopback (127.0.0.1)",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "results": rows,
    }
    write_json_atomic(result, args.output)
    print(f"\n[serve_throughput] results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
