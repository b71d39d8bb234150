"""Offline scoring throughput: `vrm score` beside a plain transformers loop and `vrm serve`, in one run.

    python benchmarks/scoring_throughput.py --model minilm-vrm runs/minilm-vrm 600 \\
        --model smollm2-vrm runs/smollm2-vrm 96 --rounds 3 --max_lengths 256 1024

For each `--model LABEL PATH ROWS`, the first ROWS (prompt, chosen) rows of AlpacaEval
(`../shared/data/train/alpacaeval_judged.jsonl.gz`) are scored, in alternating order each round, by
* `vrm score`: `vrm.scoring.score_file` on the pipeline `vrm.scoring.loading.load_scorer` builds with the CLI's
  defaults, in this process (jsonl in, jsonl out, manifest and fsync included; loading the model is not timed);
* a plain loop: the loop a user writes around `AutoModelForSequenceClassification` of the same backbone (its
  weights copied from the vrm checkpoint, a random one-label head): batches of 32 rows in input order,
  `tokenizer(batch, padding=True, truncation=True, max_length=...)` → model → logits, under `torch.no_grad`,
  with the checkpoint's max_length and input format (a text pair for encoders, the chat template for causal LMs);
* `vrm serve` (a subprocess, `--max_batch_size 32 --max_wait_ms 5 --request_timeout_s 3600`, as many torch
  threads as this process) with `--clients` concurrent clients each sending one row per `POST /score` request
  over loopback.
Rows/s are mean ± std over rounds; ratios are taken within each round, then averaged. JSON to `--output`
(written atomically), with a Markdown table beside it.

Each `--max_lengths` value is measured apart, on a copy of the checkpoint whose tokenization reads that max_length
(weights linked, max_prompt_length scaled alike; cut to the backbone's positions), so all three methods score the
same tokens: at the training length of 256 nearly every AlpacaEval row is cut to the cap (median 574 tokens), at
1024 the rows keep their natural lengths. `tokens_per_row` counts what each method runs through the backbone,
padding included (vrm: its length-sorted token-budget batches plus an encoder's prompt-alone pass; the plain
loop: batches of 32 in input order padded to their longest row): the work behind each rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any

import httpx
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.serve_throughput import free_port, start_server, stop_server  # noqa: E402

DATA = os.path.join(HERE, "..", "..", "shared", "data", "train", "alpacaeval_judged.jsonl.gz")
METHODS = ("vrm_score", "plain_loop", "vrm_serve")
# the offline paths have no deadline: neither does the server here (its default 60 s per request would answer 503
# to single rows queued behind a minute of 1024-token batches on one CPU core)
SERVE_SETTINGS = {"max_batch_size": 32, "max_wait_ms": 5, "request_timeout_s": 3600}


def load_rows(path: str, count: int) -> list[dict[str, str]]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows.append({"prompt": row["prompt"], "response": row["chosen"]})
            if len(rows) == count:
                break
    return rows


def plain_classifier(pipeline):
    """`AutoModelForSequenceClassification` of the checkpoint's backbone, with its backbone weights."""
    from transformers import AutoModelForSequenceClassification

    text_config = pipeline.model.config.text_config
    text_config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(text_config, dtype=torch.float32)
    missing = model.base_model.load_state_dict(pipeline.model.backbone.state_dict(), strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"backbone weights do not fit the classifier: {missing.unexpected_keys[:3]}")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pipeline.tokenizer.pad_token_id
    return model.eval()


def plain_batches(tokenizer, rows, max_length: int, causal: bool, batch_size: int = 32):
    """The plain loop's inputs: batches of `batch_size` rows in input order, tokenized with padding and
    truncation (a text pair for encoders, the chat template for causal LMs)."""
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        if causal:
            texts = [
                tokenizer.apply_chat_template(
                    [
                        {"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["response"]},
                    ],
                    tokenize=False,
                )
                for r in batch
            ]
            yield tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        else:
            yield tokenizer(
                [r["prompt"] for r in batch],
                [r["response"] for r in batch],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )


def plain_loop(model, tokenizer, rows, max_length: int, causal: bool, batch_size: int = 32) -> None:
    """The baseline a user writes: tokenize a batch (padding, truncation), run the model, read the logits."""
    with torch.no_grad():
        for inputs in plain_batches(tokenizer, rows, max_length, causal, batch_size):
            model(**inputs).logits.float().tolist()


def tokens_per_row(pipeline, rows, max_length: int, causal: bool) -> dict[str, float]:
    """Backbone tokens (padding included) per row of vrm's scorer and of the plain loop on `rows`: `vrm score`
    sorts and batches each chunk of `score_file`'s default `chunk_size` rows apart (the shared-prompt tree
    path, which packs prompts once, is not counted: these rows have distinct prompts)."""
    import inspect

    from vrm.scoring.score_file import score_file
    from vrm.scoring.scores import separate_prompt_pass, token_budget_batches

    chunk = inspect.signature(score_file).parameters["chunk_size"].default
    encoded = [pipeline.template.tokenize_single(r["prompt"], r["response"]) for r in rows]
    sequences = [ids for ids, _ in encoded]
    pad = pipeline.tokenizer.pad_token_id

    def padded(found: list[list[int]]) -> int:
        batches = token_budget_batches(found, pipeline.batch_size, pad)
        return sum(len(index) * ids.shape[1] for index, ids, _ in batches)

    vrm = 0
    for start in range(0, len(encoded), chunk):
        part = encoded[start : start + chunk]
        vrm += padded([ids for ids, _ in part])
        if separate_prompt_pass(pipeline.model):
            vrm += padded([list(p) for p in dict.fromkeys(tuple(ids[:n]) for ids, n in part)])
    plain = sum(
        int(b["input_ids"].numel()) for b in plain_batches(pipeline.tokenizer, rows, max_length, causal)
    )
    real = sum(len(s) for s in sequences)
    return {
        "vrm_score": round(vrm / len(rows), 1),
        "plain_loop": round(plain / len(rows), 1),
        "unpadded": round(real / len(rows), 1),
    }


def at_max_length(path: str, max_length: int, work: str) -> str:
    """`path` itself when its tokenization reads `max_length`, else a copy (weights and code linked) whose config
    reads `max_length` and a max_prompt_length scaled alike."""
    with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    tokenization = config["tokenization"]
    if tokenization["max_length"] == max_length:
        return path
    source = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]  # two runs/*/final stay apart
    copy = os.path.join(work, f"{os.path.basename(os.path.normpath(path))}-{source}-max{max_length}")
    os.makedirs(copy, exist_ok=True)
    for name in os.listdir(path):
        if name != "config.json" and not os.path.exists(os.path.join(copy, name)):
            os.symlink(os.path.abspath(os.path.join(path, name)), os.path.join(copy, name))
    share = tokenization.get("max_prompt_length") or tokenization["max_length"] // 2
    tokenization["max_prompt_length"] = max(1, share * max_length // tokenization["max_length"])
    tokenization["max_length"] = max_length
    with open(os.path.join(copy, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
    return copy


async def serve_clients(base: str, rows: list[dict[str, str]], clients: int) -> None:
    """`clients` concurrent clients, each sending one row per `POST /score` until all rows are scored."""
    queue: asyncio.Queue = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                row = queue.get_nowait()
                response = await client.post(
                    "/score", json={"prompts": [row["prompt"]], "responses": [row["response"]]}
                )
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(clients)))


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.mean(values), 3),
        "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
    }


def measure(
    label: str, path: str, count: int, args: argparse.Namespace, work: str, max_length: int
) -> dict[str, Any]:
    from vrm.scoring.loading import load_scorer
    from vrm.scoring.score_file import score_file

    path = at_max_length(path, max_length, work)
    label = f"{label}@{max_length}"
    rows = load_rows(args.data, count)
    source = os.path.join(work, f"{label}.jsonl")
    with open(source, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    pipeline = load_scorer(path, device="cpu", batch_size=args.batch_size)  # `vrm score`'s defaults
    causal = bool(pipeline.model.config.is_causal)
    max_length = pipeline.template.max_length
    classifier = plain_classifier(pipeline)
    port = free_port()
    threads = torch.get_num_threads()
    server = start_server(path, port, SERVE_SETTINGS, "cpu", threads)
    base = f"http://127.0.0.1:{port}"
    output = os.path.join(work, f"{label}.scored.jsonl")
    runs = {
        "vrm_score": lambda part: score_file(pipeline, part, output, progress=False, overwrite=True),
        "plain_loop": lambda part: plain_loop(
            classifier, pipeline.tokenizer, rows if part == source else rows[:32], max_length, causal
        ),
        "vrm_serve": lambda part: asyncio.run(
            serve_clients(base, rows if part == source else rows[:32], args.clients)
        ),
    }
    warm = os.path.join(work, f"{label}.warmup.jsonl")
    with open(warm, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows[:32])
    seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    try:
        for method in METHODS:  # warm-up: one untimed batch each
            runs[method](warm)
        for round_index in range(args.rounds):
            order = METHODS[round_index % 3 :] + METHODS[: round_index % 3]
            for method in order:
                started = time.perf_counter()
                runs[method](source)
                seconds[method].append(time.perf_counter() - started)
                print(f"[{label}] round {round_index}: {method} {seconds[method][-1]:.1f} s", flush=True)
    finally:
        stop_server(server)
    rate = {m: [count / s for s in seconds[m]] for m in METHODS}
    return {
        "label": label,
        "model": path,
        "head_type": pipeline.model.config.head_type,
        "backbone": pipeline.model.config.text_config.model_type,
        "is_causal": causal,
        "rows": count,
        "max_length": max_length,
        "tokens_per_row": tokens_per_row(pipeline, rows, max_length, causal),
        "seconds": {m: [round(s, 3) for s in seconds[m]] for m in METHODS},
        "rows_per_s": {m: mean_std(rate[m]) for m in METHODS},
        "ratio_vrm_score_over_plain_loop": mean_std(
            [a / b for a, b in zip(rate["vrm_score"], rate["plain_loop"], strict=True)]
        ),
        "ratio_vrm_score_over_vrm_serve": mean_std(
            [a / b for a, b in zip(rate["vrm_score"], rate["vrm_serve"], strict=True)]
        ),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Offline scoring throughput (`benchmarks/scoring_throughput.py`)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu_count']} CPU cores ({result['machine']['torch_threads']} torch threads), "
        f"torch {result['machine']['torch']}, GPU: {result['machine']['cuda'] or 'none'}; "
        f"{result['rounds']} rounds, methods in rotating order; rows/s mean ± std over rounds.  ",
        f"Data: the first N (prompt, chosen) rows of {result['data']}.",
        "",
        "| model | head | rows | max_length | tokens/row: unpadded, vrm, plain | vrm score rows/s | "
        "plain loop rows/s | vrm serve rows/s | score / plain | score / serve |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        rate = r["rows_per_s"]
        tokens = r["tokens_per_row"]
        lines.append(
            f"| {r['label']} ({r['backbone']}) | {r['head_type']} | {r['rows']} | {r['max_length']} | "
            f"{tokens['unpadded']:.0f}, {tokens['vrm_score']:.0f}, {tokens['plain_loop']:.0f} | "
            + " | ".join(f"{rate[m]['mean']:.2f} ± {rate[m]['std']:.2f}" for m in METHODS)
            + f" | {r['ratio_vrm_score_over_plain_loop']['mean']:.2f} ± {r['ratio_vrm_score_over_plain_loop']['std']:.2f}"
            + f" | {r['ratio_vrm_score_over_vrm_serve']['mean']:.2f} ± {r['ratio_vrm_score_over_vrm_serve']['std']:.2f} |"
        )
    lines += ["", result["notes"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        nargs=3,
        action="append",
        metavar=("LABEL", "PATH", "ROWS"),
        required=True,
        help="A saved vrm model to measure, and how many rows to score with it.",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--max_lengths",
        type=int,
        nargs="+",
        default=[256],
        help="Token budgets to measure at, each apart (a copy of each checkpoint reads it; cut to the backbone).",
    )
    parser.add_argument("--clients", type=int, default=64, help="Concurrent `vrm serve` clients.")
    parser.add_argument("--batch_size", type=int, default=32, help="`vrm score --batch_size` (its default).")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--notes", default="", help="How the models were made (goes into the results).")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "scoring_throughput.json"))
    args = parser.parse_args(argv)
    from vrm.data.files import write_json

    results = []
    with tempfile.TemporaryDirectory(prefix="vrm-scoring-throughput-") as work:
        for max_length in args.max_lengths:
            for label, path, count in args.model:
                results.append(measure(label, path, int(count), args, work, max_length))
    result = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv or sys.argv[1:])]),
        "data": "../shared/data/train/alpacaeval_judged.jsonl.gz",
        "rounds": args.rounds,
        "clients": args.clients,
        "vrm_score_batch_size": args.batch_size,
        "plain_loop_batch_size": 32,
        "serve_settings": SERVE_SETTINGS,
        "machine": machine(),
        "notes": args.notes,
        "results": results,
    }
    write_json(result, args.output)
    markdown_path = os.path.splitext(args.output)[0] + ".md"
    with open(markdown_path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(markdown(result))
    os.replace(markdown_path + ".tmp", markdown_path)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
