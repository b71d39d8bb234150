"""Train one run (a head on a nested training subset) through `VRMTrainer`, score it, write its run file.

A run file, `learning_curves_runs/<setting>/<RunSpec.key>.json`, holds the spec, the subset's digest, the train
and evaluation seconds, and per scored set (`train` = the run's own training pairs, then the setting's
evaluation sets) accuracy, ties, NLL and ECE of the plug-in probability sigmoid(r+ - r-), plus the per-pair
correctness (r+ > r-) as packed bits, so paired tests and held-out bounds are computed from the same numbers as
the tables; a set of grouped pairs (`SettingStates.group_sizes`: RM-Bench's 9 pairs per prompt) also keeps the
accuracy of each subset and the sizes of its prompt groups. It is written last, atomically: a run with a file is finished and never trained again. No weights
are kept.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.studies.spec import RunSpec
from vrm.data.files import write_json
from vrm.evaluation.metrics import calibration, pair_probabilities

from .plan import HeadPlan, SettingPlan, run_spec, size_value
from .subsets import nested_subset, subset_digest

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
RUNS = os.path.join(HERE, "results", "learning_curves_runs")


def pack_bits(correct: np.ndarray) -> str:
    """Per-pair 0/1 as base64 of `np.packbits` (the file stays small; `unpack_bits` reverses it)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=np.uint8)).tobytes()).decode("ascii")


def unpack_bits(text: str, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:count].astype(np.float64)


def pair_metrics(
    reward_chosen: np.ndarray,
    reward_rejected: np.ndarray,
    keep_pairs: bool,
    subsets: list[str] | None = None,
    group_sizes: list[int] | None = None,
) -> dict[str, Any]:
    """Accuracy (strict r+ > r-), ties, Bradley-Terry NLL and ECE of sigmoid(r+ - r-); per-pair bits if asked;
    the accuracy of each of `subsets` (one name per pair) and the pairs' `group_sizes` when given."""
    margin = np.asarray(reward_chosen, dtype=np.float64) - np.asarray(reward_rejected, dtype=np.float64)
    correct = margin > 0
    found = calibration(pair_probabilities(reward_chosen, reward_rejected))
    out = {
        "pairs": int(margin.size),
        "accuracy": float(correct.mean()),
        "ties": float((margin == 0).mean()),
        "nll": float(found["nll"]),
        "ece": float(found["ece"]),
    }
    if keep_pairs:
        out["correct_bits"] = pack_bits(correct)
    if subsets is not None:
        names = np.asarray(subsets)
        out["subset_accuracy"] = {str(s): float(correct[names == s].mean()) for s in sorted(set(subsets))}
    if group_sizes is not None:
        if sum(group_sizes) != margin.size:
            raise ValueError(f"group sizes add up to {sum(group_sizes)}, not the {margin.size} pairs")
        out["group_sizes"] = list(group_sizes)
    return out


@torch.no_grad()
def score_states(model, data) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in rewards (the posterior mean for vrm / ib) of the chosen and rejected responses from states."""
    model.eval()
    rewards = []
    for states in (data.chosen, data.rejected):
        parts = []
        for start in range(0, len(data), 1024):
            part = slice(start, start + 1024)
            out = model(prompt_states=data.prompt[part], response_states=states[part])
            parts.append(out.logits.squeeze(-1).double().numpy())
        rewards.append(np.concatenate(parts))
    return rewards[0], rewards[1]


def training_options(setting: SettingPlan, head: HeadPlan, spec: RunSpec, states) -> dict[str, Any]:
    """`vrm train` options of a run on cached states (`benchmarks.studies.training.build_arguments`)."""
    return {
        "model_name_or_path": states.backbone_dir,
        "output_dir": None,
        "head_type": head.head_type,
        "freeze_backbone": True,
        "seed": spec.seed,
        "max_steps": spec.options["steps"],
        "per_device_train_batch_size": setting.schedule.batch_size,
        "learning_rate": head.learning_rate,
        "head_learning_rate": head.learning_rate,
        "beta_w": head.beta,
        "beta_z": head.beta,
        "attribute_names": states.attribute_names if head.labels else None,
        "objective_column": states.objective_column if head.labels else None,
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": not torch.cuda.is_available(),
        **head.options,
    }


def train_on_states(options: dict[str, Any], train_data):
    """A `VRMTrainer` run on precomputed states (the frozen-backbone path); returns the trained model."""
    from benchmarks.studies.training import build_arguments
    from vrm.training import VRMTrainer

    with tempfile.TemporaryDirectory(prefix="lc-run-") as output_dir:
        model_args, _, training_args = build_arguments({**options, "output_dir": output_dir})
        trainer = VRMTrainer(model=model_args, args=training_args, train_dataset=train_data)
        trainer.train()
        return trainer.model


@dataclass
class RunFile:
    """A finished run as its file holds it."""

    spec: RunSpec
    n: int
    subset: str
    train_seconds: float
    eval_seconds: float
    metrics: dict[str, dict[str, Any]]

    def correct(self, set_name: str) -> np.ndarray:
        entry = self.metrics[set_name]
        return unpack_bits(entry["correct_bits"], entry["pairs"])


def run_path(spec: RunSpec, setting: str, root: str = RUNS) -> str:
    return os.path.join(root, setting, f"{spec.key}.json")


def read_run(path: str) -> RunFile:
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle)
    spec = values["spec"]
    return RunFile(
        spec=RunSpec(spec["name"], spec["seed"], spec["options"]),
        n=values["n"],
        subset=values["subset"],
        train_seconds=values["train_seconds"],
        eval_seconds=values["eval_seconds"],
        metrics=values["metrics"],
    )


def load_runs(setting: str, root: str = RUNS) -> list[RunFile]:
    directory = os.path.join(root, setting)
    if not os.path.isdir(directory):
        return []
    return [
        read_run(os.path.join(directory, f)) for f in sorted(os.listdir(directory)) if f.endswith(".json")
    ]


def run_result(
    spec: RunSpec, n: int, indices, started: float, trained: float, metrics: dict[str, Any]
) -> dict[str, Any]:
    """One run file's content: its spec and key, the size and digest of its training subset, the seconds spent
    training (`started` to `trained`) and evaluating (`trained` to now), and its metrics per set."""
    return {
        "spec": asdict(spec),
        "key": spec.key,
        "n": n,
        "subset": subset_digest(indices),
        "train_seconds": round(trained - started, 2),
        "eval_seconds": round(time.perf_counter() - trained, 2),
        "metrics": metrics,
    }


def write_run(result: dict[str, Any], path: str) -> None:
    write_json(result, path, indent=None)


def execute_frozen(setting: SettingPlan, head: HeadPlan, size, seed: int, states, root: str = RUNS) -> str:
    """Train and score one frozen-backbone run unless its file exists; returns the run file's path."""
    available = len(states.train)
    n = size_value(size, available)
    spec = run_spec(setting, head, n, seed)
    path = run_path(spec, setting.name, root)
    if os.path.exists(path):
        return path
    print(f"[learning_curves] {setting.name} {head.name} n={n} seed {seed}", flush=True)
    indices = nested_subset(available, n, seed)
    train_data = states.train_subset(indices, keep_labels=head.labels)
    options = training_options(setting, head, spec, states)
    started = time.perf_counter()
    model = train_on_states(options, train_data)
    trained = time.perf_counter()
    metrics = {"train": pair_metrics(*score_states(model, train_data), keep_pairs=False)}
    for name, data in states.eval_sets.items():
        groups = states.group_sizes.get(name)
        metrics[name] = pair_metrics(
            *score_states(model, data),
            keep_pairs=True,
            subsets=None if groups is None else [str(p.subset) for p in data.pairs],
            group_sizes=groups,
        )
    write_run(run_result(spec, n, indices, started, trained, metrics), path)
    return path


def execute_finetune(
    setting: SettingPlan, head: HeadPlan, size, seed: int, files: dict, root: str = RUNS
) -> str:
    """Fine-tune MiniLM end to end on a nested subset (a subset file of the training rows), score it on the
    training subset and the evaluation files; returns the run file's path."""
    from benchmarks.studies.backbones import backbone_path
    from benchmarks.studies.training import train_model
    from vrm.data.files import read_records, write_jsonl
    from vrm.data.rows import load_preferences
    from vrm.evaluation.pairwise import score_pairs
    from vrm.scoring.loading import load_scorer

    rows = [row for _, row in read_records(files["train"])]
    n = size_value(size, len(rows))
    spec = run_spec(setting, head, n, seed)
    path = run_path(spec, setting.name, root)
    if os.path.exists(path):
        return path
    print(f"[learning_curves] {setting.name} {head.name} n={n} seed {seed}", flush=True)
    indices = nested_subset(len(rows), n, seed)
    work = tempfile.mkdtemp(prefix="lc-ft-")
    try:
        subset_file = os.path.join(work, "train.jsonl")
        write_jsonl([rows[i] for i in indices], subset_file)
        options = {
            "model_name_or_path": backbone_path("minilm"),
            "dataset_name": [subset_file],
            "output_dir": os.path.join(work, "model"),
            "head_type": head.head_type,
            "seed": seed,
            "max_steps": spec.options["steps"],
            "per_device_train_batch_size": setting.schedule.batch_size,
            "learning_rate": head.learning_rate,
            "beta_w": head.beta,
            "beta_z": head.beta,
            "max_length": 192,
            "max_prompt_length": 64,
            "attribute_names": ["helpfulness", "harmlessness"] if head.labels else None,
            "objective_column": "objective" if head.labels else None,
            "logging_steps": 1000,
            "use_cpu": not torch.cuda.is_available(),
            **head.options,
        }
        started = time.perf_counter()
        model_dir = train_model(options)
        trained = time.perf_counter()
        scorer = load_scorer(model_dir, batch_size=32)
        metrics = {}
        for name, source in (("train", subset_file), *((k, v) for k, v in files.items() if k != "train")):
            pairs, _ = scorer.template.tokenize_pairs(load_preferences(source))
            chosen, rejected = score_pairs(scorer.model, pairs, scorer.tokenizer.pad_token_id, 32, False)
            metrics[name] = pair_metrics(
                chosen.reward.numpy(), rejected.reward.numpy(), keep_pairs=name != "train"
            )
        write_run(run_result(spec, n, indices, started, trained, metrics), path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
