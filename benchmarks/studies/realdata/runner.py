"""Train, score and diagnose one run; read the finished runs back.

A run's directory, `study_runs/<setting>/<backbone>/<RunSpec.key>/`, holds `result.json` (spec, key, times,
metrics per evaluation set, posterior diagnostics) and `scores.npz` (per-pair rewards, posterior stds and
response lengths, so that paired tests and error detection are computed from the same numbers as the tables).
The result file is written last (atomically): a run with one is finished and never trained again. Weights are
deleted once scored.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from vrm.data.files import atomic_output, write_json
from vrm.evaluation.report import DatasetReport

from .config import (
    BON_NS,
    DIAGNOSTIC_SET,
    FROZEN_SETTINGS,
    OBJECTIVES,
    RUNS,
    WORK,
    StudyConfig,
    backbone_label,
    data_file,
)
from .specs import RunSpec


@dataclass
class RunResult:
    """A finished run as its result file holds it. `metrics` maps each pairwise set to its `DatasetReport`
    (overall and per subset), RM-Bench sets to theirs, Best-of-N pools to `{"curve": [...]}`; `scores_path` is
    its per-pair scores (None for a run migrated without them, see `recorded`)."""

    spec: RunSpec
    key: str
    train_seconds: float | None
    eval_seconds: float | None
    finished_at: float
    metrics: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    scores_path: str | None = None
    recorded: str | None = None  # a migrated run: where its numbers live (its setting's aggregate record)
    validation: dict[str, float] | None = None  # a migrated sweep run: its validation accuracy and NLL

    def validation_score(self, set_name: str) -> tuple[float, float]:
        """(accuracy, NLL) on the validation set `set_name`: what the sweep chooses by."""
        if set_name in self.metrics:
            overall = self.metrics[set_name].overall
            return overall.accuracy, overall.nll
        if self.validation is None:
            raise ValueError(f"run {self.key} has no validation metrics")
        return self.validation["accuracy"], self.validation["nll"]

    @property
    def complete(self) -> bool:
        """Metrics of every set and per-pair scores: the report can be computed from it."""
        return self.recorded is None and self.scores_path is not None

    @property
    def spec_dict(self) -> dict[str, Any]:
        return asdict(self.spec)

    @cached_property
    def scores(self) -> dict[str, np.ndarray]:
        """The per-pair arrays of `scores.npz` ("<set>/reward_chosen", ...), read once."""
        with np.load(self.scores_path) as found:
            return dict(found)


def runs_directory(setting: str, backbone: str, root: str = RUNS) -> str:
    return os.path.join(root, setting, backbone_label(backbone))


def read_result(path: str) -> RunResult:
    """One result file; pairwise metrics typed (`vrm.evalreport.DatasetReport`), RM-Bench and BoN as dicts."""
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle)
    metrics = {}
    for name, entry in (values.get("metrics") or {}).items():
        pairwise = not name.endswith(("rm_bench", "bon_pool"))
        metrics[name] = DatasetReport.from_dict(entry, f"{path}: metrics.{name}") if pairwise else entry
    directory = os.path.dirname(path)
    scores = os.path.join(directory, "scores.npz")
    return RunResult(
        spec=RunSpec.from_dict(values["spec"]),
        key=values["key"],
        train_seconds=values.get("train_seconds"),
        eval_seconds=values.get("eval_seconds"),
        finished_at=values.get("finished_at") or os.path.getmtime(path),  # before the field: the file's time
        metrics=metrics,
        diagnostics=values.get("diagnostics") or {},
        scores_path=scores if os.path.exists(scores) else None,
        recorded=values.get("recorded"),
        validation=values.get("validation"),
    )


def load_results(setting: str, backbone: str, root: str = RUNS) -> list[RunResult]:
    """The finished runs of a setting and backbone, one per configuration and seed (the latest: a run whose
    key changed is not counted twice), sorted by key."""
    directory = runs_directory(setting, backbone, root)
    if not os.path.isdir(directory):
        return []
    loaded = []
    for key in sorted(os.listdir(directory)):
        path = os.path.join(directory, key, "result.json")
        if os.path.exists(path):
            loaded.append(read_result(path))
    latest = {(r.spec.config, r.spec.seed): r for r in sorted(loaded, key=lambda r: r.finished_at)}
    return sorted(latest.values(), key=lambda r: r.key)


def train_options(spec: RunSpec, cfg: StudyConfig) -> dict[str, Any]:
    """The training options of a run (`benchmarks.studies.training`): the spec's fields as `vrm.training`'s
    arguments; a frozen setting trains the head alone on cached states."""
    frozen = spec.setting in FROZEN_SETTINGS
    max_length = spec.max_length or cfg.max_length
    return {
        "head_type": spec.head,
        "num_objectives": spec.num_objectives,
        "feature_dim": spec.feature_dim,
        "num_samples": spec.num_samples,
        "prior_concentration": spec.prior_concentration,
        "weight_posterior": spec.weight_posterior,
        "prompt_state_gradient": spec.prompt_state_gradient,
        "freeze_backbone": frozen,
        "use_peft": spec.use_peft,
        "dtype": "bfloat16" if spec.bf16 else "float32",
        "max_length": max_length,
        "max_prompt_length": max(cfg.max_prompt_length, max_length // 3),
        "attribute_names": OBJECTIVES if spec.uses_objectives else None,
        "objective_column": "objective" if spec.uses_objectives else None,
        "per_device_train_batch_size": spec.batch_size,
        "num_train_epochs": spec.epochs,
        "learning_rate": spec.learning_rate,
        "head_learning_rate": spec.learning_rate if frozen else None,
        "beta_w": spec.beta,
        "beta_z": spec.beta,
        "objective_label_weight": spec.objective_label_weight,
        "logging_steps": 50,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": spec.bf16,
        "gradient_checkpointing": spec.use_peft,
    }


def train_run(spec: RunSpec, cfg: StudyConfig, model_dir: str) -> None:
    """Train through `VRMTrainer` (`benchmarks.studies.training`), as `vrm train` does."""
    from benchmarks.studies.spec import RunSpec as TrainingSpec
    from benchmarks.studies.training import train_run as train

    cache = os.path.join(WORK, "embeddings")
    train(
        TrainingSpec(spec.head, spec.seed, train_options(spec, cfg)),
        spec.backbone,
        data_file(spec.train),
        model_dir,
        cache,
    )


def evaluate_run(model_dir: str, spec: RunSpec, eval_sets: dict[str, str], tokenized: dict) -> tuple:
    """Metrics per evaluation set (JSON-ready), the per-pair arrays behind them, and posterior diagnostics."""
    from vrm.data.files import read_records
    from vrm.data.rows import load_preferences
    from vrm.evaluation.best_of_n import bon_curve, read_pool, score_pool
    from vrm.evaluation.pairwise import evaluate_rm_bench, metrics_by_subset, score_pairs
    from vrm.scoring.loading import load_scorer

    cache = os.path.join(WORK, "embeddings") if spec.setting in FROZEN_SETTINGS else None
    scorer = load_scorer(model_dir, batch_size=64, embedding_cache=cache)
    metrics: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, path in eval_sets.items():
        if name.endswith("rm_bench"):
            rows = [row for _, row in read_records(path)]
            metrics[name] = evaluate_rm_bench(scorer, rows, progress=False)
            continue
        if name.endswith("bon_pool"):
            pool = read_pool(path, "gold")
            proxy = score_pool(scorer, pool, progress=False)
            gold = [np.asarray(row["gold"], dtype=np.float64) for row in pool]
            metrics[name] = {"curve": bon_curve(proxy, gold, BON_NS)}
            continue
        if name not in tokenized:  # the template is the same for every run of a backbone: tokenize once
            tokenized[name], _ = scorer.template.tokenize_pairs(load_preferences(path))
        pairs = tokenized[name]
        chosen, rejected = score_pairs(
            scorer.model, pairs, scorer.tokenizer.pad_token_id, 64, False, scorer.embedding_cache
        )
        found = {
            "reward_chosen": chosen.reward.numpy(),
            "reward_rejected": rejected.reward.numpy(),
            "std_chosen": chosen.reward_std.numpy(),
            "std_rejected": rejected.reward_std.numpy(),
            "length_chosen": np.array([len(p.chosen_input_ids) - p.prompt_length for p in pairs]),
            "length_rejected": np.array([len(p.rejected_input_ids) - p.prompt_length for p in pairs]),
        }
        metrics[name] = metrics_by_subset(
            chosen, rejected, found["length_chosen"], found["length_rejected"], [p.subset for p in pairs]
        )
        arrays.update({f"{name}/{key}": value for key, value in found.items()})
    diagnostic_set = next((n for n in eval_sets if n.endswith(DIAGNOSTIC_SET)), None)
    diagnostics = posterior_diagnostics(scorer, tokenized[diagnostic_set]) if diagnostic_set else {}
    return metrics, arrays, diagnostics


@torch.no_grad()
def posterior_diagnostics(scorer, pairs: list) -> dict[str, Any]:
    """Is the posterior used? On one test set's chosen responses (frozen states from the cache), with the
    head's own KL terms (`vrm.heads`):

    * `kl_z_per_dim` — KL(q(z|x,y) || N(0, I)) per feature dimension, averaged over responses, and
      `active_feature_dims`, the dimensions above 0.01 nats (posterior collapse leaves few);
    * `kl_w` — KL(q(w|x) || p(w)) averaged over prompts; `concentration_total` — sum_k alpha_k(x) of a Dirichlet
      posterior: a total near K * alpha0 means the weights stay at the prior.
    """
    if scorer.embedding_cache is None:
        return {}
    model, head = scorer.model, scorer.model.head
    prompt_states, response_states = scorer.embedding_cache.states(
        model,
        [p.chosen_input_ids for p in pairs],
        [p.prompt_length for p in pairs],
        scorer.tokenizer.pad_token_id,
        "diagnostics",
    )
    prompt_states, response_states = prompt_states.float(), response_states.float()
    out: dict[str, Any] = {}
    kl_z = head.feature_kl(response_states)
    if kl_z is not None:
        per_dim = kl_z.mean(0)
        out["kl_z_per_dim"] = [round(float(v), 4) for v in per_dim]
        out["active_feature_dims"] = int((per_dim > 0.01).sum())
    kl_w = head.weight_kl(prompt_states)
    if kl_w is not None:
        out["kl_w"] = float(kl_w.mean())
    if head.weight_posterior == "dirichlet":
        out["concentration_total"] = float(head.weight_concentration(prompt_states).sum(-1).mean())
    return out


def execute(
    spec: RunSpec, cfg: StudyConfig, eval_sets: dict[str, str], tokenized: dict, root: str = RUNS
) -> RunResult:
    """Train and evaluate one run unless it is finished (a migrated record without metrics is re-run)."""
    directory = os.path.join(runs_directory(spec.setting, spec.backbone, root), spec.key)
    result_path = os.path.join(directory, "result.json")
    if os.path.exists(result_path):
        found = read_result(result_path)
        if found.complete:
            return found
    print(f"[study] {spec.setting}/{spec.backbone} {spec.group} {spec.variant} seed {spec.seed}", flush=True)
    model_dir = os.path.join(WORK, "models", spec.setting, backbone_label(spec.backbone), spec.key)
    started = time.perf_counter()
    train_run(spec, cfg, model_dir)
    trained = time.perf_counter()
    metrics, arrays, diagnostics = evaluate_run(model_dir, spec, eval_sets, tokenized)
    with atomic_output(os.path.join(directory, "scores.npz")) as staging:
        np.savez_compressed(staging, **arrays)
    result = {
        "spec": asdict(spec),
        "key": spec.key,
        "train_seconds": trained - started,
        "eval_seconds": time.perf_counter() - trained,
        "finished_at": time.time(),
        "metrics": metrics,
        "diagnostics": diagnostics,
    }
    write_json(result, result_path, indent=None)  # compact: every run is committed
    shutil.rmtree(model_dir, ignore_errors=True)  # weights are cheap to re-train; the study keeps scores only
    return read_result(result_path)
