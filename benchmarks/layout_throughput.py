"""The shared-prompt layout against two sequences per pair and against TRL's `RewardTrainer` (issue 20).

    python benchmarks/layout_throughput.py            # MiniLM + SmolLM2 on RMB + UltraFeedback (~30 min, 2 cores)
    python benchmarks/layout_throughput.py --backbones minilm --datasets ultrafeedback --steps 2 --output /tmp/l.json

For each backbone and dataset, the same token ids (the first `batch × (warmup + steps)` pairs as vrm tokenizes
them, `--max_length` 512, prompts truncated from the left), batch size and learning rate go through fresh
processes of `train_throughput.py --worker`, side by side:

* `trl`               — `trl.RewardTrainer` (two full sequences per pair, padded together);
* `bt/separate`       — vrm's bt head, chosen and rejected as two sequences (the layout before issue 20);
* `bt/shared_prompt`  — vrm's bt head, one row `[prompt | chosen | rejected]` per pair, pairs packed;
* `vrm/shared_prompt` — the vrm head in the shared layout (and, on encoders, `vrm/separate`, which adds the
  prompt-only pass for h_x).

TRL drops pairs longer than its `max_length` instead of truncating them: `trl_drops` counts the pairs of the
same rows whose untruncated chosen or rejected sequence exceeds it (fed the truncated ids here, TRL drops none).
FLOPs of one training step (`torch.utils.flop_counter`) of vrm and bt in the shared layout on the first batch,
and tokens processed / unique on consecutive batches of the timed pairs, are counted in this process.
The result goes into `benchmarks/results/train_throughput.json` (keys `layout` and `summary`; the file's other
parts are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import torch
from train_throughput import HERE, backbone_path, machine, tokenized_pairs

# ../shared/data from the repository root (a worktree under wt/ sits one level deeper)
SHARED = next(
    (
        path
        for up in (2, 3)
        if os.path.isdir(path := os.path.join(HERE, *[".."] * up, "shared", "data", "train"))
    ),
    os.path.join(HERE, "..", "..", "shared", "data", "train"),
)
DATASETS = {
    "rmb": os.path.join(SHARED, "rmb_pairwise.jsonl.gz"),
    "ultrafeedback": os.path.join(SHARED, "ultrafeedback_sample.jsonl.gz"),
}
BATCH = {"minilm": 8, "smollm2": 4, "smollm2_arch": 4}
CELLS = {  # trainer, layout
    "minilm": [("trl", None), ("bt", "separate"), ("bt", "shared_prompt"), ("vrm", "separate"),
               ("vrm", "shared_prompt")],
    "smollm2": [("trl", None), ("bt", "separate"), ("bt", "shared_prompt"), ("vrm", "shared_prompt")],
    "smollm2_arch": [("trl", None), ("bt", "separate"), ("bt", "shared_prompt"), ("vrm", "shared_prompt")],
}  # fmt: skip


def run_cell(backbone: str, dataset: str, trainer: str, layout: str | None, args) -> dict:
    command = [sys.executable, os.path.join(HERE, "train_throughput.py"), "--worker", "--backbone", backbone]
    command += ["--trainer", trainer, "--data", DATASETS[dataset], "--seed", str(args.seed)]
    command += [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--max_length",
        str(args.max_length),
    ]
    command += ["--batch_size", str(BATCH[backbone])]
    if layout:
        command += ["--pair_layout", layout]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{backbone}/{dataset}/{trainer}/{layout} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def token_and_flop_counts(backbone: str, dataset: str, args) -> dict:
    """Tokens processed / unique per layout, TRL's drops, and FLOPs of one step (vrm and bt, shared layout)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig

    from vrm.data.collate import PreferenceCollator
    from vrm.data.pair_layout import LayoutTokens, SharedPromptCollator, separate_layout_tokens
    from vrm.data.rows import load_preferences
    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.models.modeling import VRMForSequenceClassification
    from vrm.models.pooling import backbone_is_causal
    from vrm.training.losses import preference_loss

    path = backbone_path(backbone)
    is_causal = backbone_is_causal(AutoConfig.from_pretrained(path))
    batch = BATCH[backbone]
    count = batch * (args.warmup + args.steps)
    tokenizer, template, pairs = tokenized_pairs(path, DATASETS[dataset], count, args.max_length, is_causal)
    # TRL's rule on the untruncated sequences of the same rows
    wide = PreferenceTokenizer(tokenizer, max_length=10**6, is_causal=is_causal)
    full, _ = wide.tokenize_pairs(load_preferences(DATASETS[dataset], max_rows=2 * count))
    full = full[:count]
    drops = sum(max(len(p.chosen_input_ids), len(p.rejected_input_ids)) > args.max_length for p in full)
    batches = [pairs[i : i + batch] for i in range(0, len(pairs), batch)]
    collate = SharedPromptCollator(tokenizer.pad_token_id)
    tokens = {
        "separate": [separate_layout_tokens(b, prompt_pass=False).as_tensor() for b in batches],
        "separate_with_prompt_pass": [
            separate_layout_tokens(b, prompt_pass=True).as_tensor() for b in batches
        ],
        "shared_prompt": [collate(b)["layout_tokens"] for b in batches],
    }
    ratios = {name: LayoutTokens.metrics(torch.stack(v).sum(0)) for name, v in tokens.items()}
    shared_inputs = {k: v for k, v in collate(batches[0]).items() if k != "layout_tokens"}
    separate_inputs = {k: v for k, v in PreferenceCollator(tokenizer.pad_token_id)(batches[0]).items()}
    variants = {"bt/separate": ("bt", separate_inputs), "bt/shared_prompt": ("bt", shared_inputs),
                "vrm/shared_prompt": ("vrm", shared_inputs)}  # fmt: skip
    layers = AutoConfig.from_pretrained(path).num_hidden_layers
    # FLOPs are exactly linear in the number of layers (a + L·b): counted at 1 and 2 layers, extrapolated to L
    # (a full step of a 30-layer SmolLM2 under FlopCounterMode costs minutes on the shared 2 cores)
    counted_layers = (1, 2) if args.flops_extrapolate else (layers,)
    counts: dict[str, list[int]] = {name: [] for name in variants}
    for depth in counted_layers:
        config = AutoConfig.from_pretrained(path)
        config.num_hidden_layers = depth
        for name, (head, inputs) in variants.items():
            torch.manual_seed(args.seed)
            model = VRMForSequenceClassification.from_backbone_config(config, head_type=head)
            model.config.response_marker_ids = template.response_marker_ids
            model.train()
            with FlopCounterMode(display=False) as counter:
                preference_loss(model(**inputs), beta_w=0.01, beta_z=0.01).loss.backward()
            counts[name].append(int(counter.get_total_flops()))
            del model
    if args.flops_extrapolate:
        flops = {name: one + (layers - 1) * (two - one) for name, (one, two) in counts.items()}
    else:
        flops = {name: values[0] for name, values in counts.items()}
    prompt_share = sum(2 * p.prompt_length for p in pairs) / sum(
        len(p.chosen_input_ids) + len(p.rejected_input_ids) for p in pairs
    )
    return {
        "pairs": len(pairs),
        "trl_drops": {"pairs_over_max_length": drops, "of": len(full)},
        "prompt_share_of_two_sequence_tokens": prompt_share,
        "tokens": ratios,
        "flops_one_step": flops,
        "flops_counted_at_layers": list(counted_layers),
        "flops_note": "random weights (FLOPs depend on shapes only); first batch of the timed pairs",
    }


def measure(backbone: str, dataset: str, args) -> dict:
    cells: dict[str, list[dict]] = {}
    for repeat in range(0 if args.no_timing else args.repeats):
        for trainer, layout in CELLS[backbone]:
            name = trainer if layout is None else f"{trainer}/{layout}"
            result = run_cell(backbone, dataset, trainer, layout, args)
            cells.setdefault(name, []).append(result)
            print(f"  {backbone}/{dataset} {name:18} run {repeat + 1}: {result['pairs_per_second']:.3f} pairs/s, "
                  f"peak {result['peak_memory_mb']:.0f} MB", flush=True)  # fmt: skip
    table = {
        name: {
            "pairs_per_second": statistics.median(r["pairs_per_second"] for r in runs),
            "pairs_per_second_runs": [r["pairs_per_second"] for r in runs],
            "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in runs),
            "memory_kind": runs[0]["memory_kind"],
        }
        for name, runs in cells.items()
    }
    return {
        "batch_size": BATCH[backbone],
        "trainers": table,
        **token_and_flop_counts(backbone, dataset, args),
    }


def summarize(entry: dict) -> dict:
    """The issue's ratios; a ratio whose cells were not timed (`--no_timing`) is None."""
    speed = {name: cell["pairs_per_second"] for name, cell in entry["trainers"].items()}
    memory = {name: cell["peak_memory_mb"] for name, cell in entry["trainers"].items()}
    flops = entry["flops_one_step"]

    def ratio(a: str, b: str) -> float | None:
        return speed[a] / speed[b] if a in speed and b in speed else None

    return {
        "vrm_bt_over_trl": ratio("bt/shared_prompt", "trl"),
        "vrm_bt_over_trl_peak_memory_mb": {k: memory.get(k) for k in ("bt/shared_prompt", "trl")},
        "vrm_bt_separate_over_trl": ratio("bt/separate", "trl"),
        "vrm_over_bt_flops": flops["vrm/shared_prompt"] / flops["bt/shared_prompt"],
        "vrm_over_bt_flops_peak_memory_mb": {
            k: memory.get(k) for k in ("vrm/shared_prompt", "bt/shared_prompt")
        },
        "vrm_over_bt_time": ratio("bt/shared_prompt", "vrm/shared_prompt"),
        "bt_shared_over_separate_flops": flops["bt/shared_prompt"] / flops["bt/separate"],
        "processed_over_unique_tokens": entry["tokens"]["shared_prompt"]["processed_over_unique_tokens"],
        "processed_over_unique_tokens_separate": entry["tokens"]["separate"]["processed_over_unique_tokens"],
        "trl_drops": entry["trl_drops"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["minilm", "smollm2_arch"], choices=list(CELLS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="Timed optimizer steps per process.")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="Processes per cell (median).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_timing", action="store_true", help="Count tokens and FLOPs only.")
    parser.add_argument(
        "--flops_extrapolate",
        action="store_true",
        help="Count FLOPs at 1 and 2 layers, extrapolate (linear).",
    )
    parser.add_argument("--output", default=os.path.join(HERE, "results", "train_throughput.json"))
    parser.add_argument(
        "--machine_note", default="", help="What else ran on the machine (recorded in the JSON)."
    )
    args = parser.parse_args()
    for backbone in args.backbones:
        backbone_path(backbone)  # convert once, outside the timed processes (cached under CACHE)
    started = time.time()
    layout = {}
    for backbone in args.backbones:
        for dataset in args.datasets:
            layout[f"{backbone}/{dataset}"] = measure(backbone, dataset, args)
    report = {}
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as handle:
            report = json.load(handle)
    previous = report.get("layout", {})
    for name, entry in layout.items():  # --no_timing keeps the timed cells of an earlier run
        earlier = previous.get("cells", {}).get(name, {})
        if not entry["trainers"] and earlier.get("trainers"):
            entry["trainers"] = earlier["trainers"]
            entry["timed_by_an_earlier_command"] = True
    report["layout"] = {
        "commands": [*previous.get("commands", []), "python benchmarks/layout_throughput.py " + shlex.join(sys.argv[1:])],
        "data": {name: os.path.relpath(path, os.path.join(HERE, "..")) for name, path in DATASETS.items()},
        "machine": {**machine(), **({"shared": args.machine_note} if args.machine_note else {})},
        "settings": {**previous.get("settings", {}), **({} if args.no_timing else {
            backbone: {"max_length": args.max_length, "steps": args.steps, "warmup": args.warmup,
                       "repeats": args.repeats, "seed": args.seed, "batch_size": BATCH[backbone]}
            for backbone in args.backbones})},
        "cells": {**previous.get("cells", {}), **layout},
        "wall_seconds": previous.get("wall_seconds", 0.0) + time.time() - started,
    }  # fmt: skip
    report["summary"] = {
        **report.get("summary", {}),
        **{name: summarize(entry) for name, entry in layout.items()},
    }
    from vrm.data.files import write_json

    write_json(report, args.output)
    print(json.dumps(report["summary"], indent=1))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
