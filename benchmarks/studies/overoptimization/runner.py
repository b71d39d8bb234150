"""The study's config, its runs and their files.

Every run trains through `benchmarks.studies.training` on the frozen backbone (with the embedding cache, so the
backbone runs once per text) and is scored on the pool and the test pairs; its scores are written as JSON under
`<results>/runs/<name>.json` and the model is deleted, so an interrupted study resumes. Ensemble member m of
seed s trains with seed 1000 s + m on a bootstrap resample of the training pairs (drawn with that seed); its
cached states are assembled from those of the full training set (`assemble_cached_states`), not recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from benchmarks.studies.spec import RunSpec, read_yaml_config
from benchmarks.studies.training import RUN_DEFAULTS, build_arguments, run_options, train_model
from vrm.data.files import atomic_output, write_json


@dataclass
class StudyConfig:
    name: str
    backbone: str
    data: dict[str, Any]
    proxies: dict[str, dict[str, Any]]
    common: dict[str, Any] = field(default_factory=dict)
    gold: dict[str, Any] = field(default_factory=dict)
    ensembles: dict[str, str] = field(default_factory=dict)
    ensemble_members: int = 4
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0])
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    validation_fraction: float = 0.5
    notes: str = ""
    gpu_command: str = ""

    def spec(self, proxy: str, seed: int) -> RunSpec:
        """The training run of a proxy (or `gold`) at a training seed: common options, then its own."""
        own = self.gold if proxy == "gold" else self.proxies[proxy]
        return RunSpec(proxy, seed, {**self.common, **own})


def load_study(path: str) -> StudyConfig:
    """Read and check a study YAML; errors name the file and the field."""
    config = read_yaml_config(path, StudyConfig, "study")
    for name, base in config.ensembles.items():
        if base not in config.proxies:
            raise ValueError(
                f"{path}: ensembles.{name}: {base!r} is not one of the proxies {list(config.proxies)}"
            )
    if config.ensembles and config.ensemble_members < 2:
        raise ValueError(f"{path}: ensemble_members must be at least 2, got {config.ensemble_members}")
    if not config.seeds:
        raise ValueError(f"{path}: seeds: list at least one seed")
    if sorted(config.ns) != config.ns or config.ns[0] < 1:
        raise ValueError(f"{path}: ns: increasing positive integers, got {config.ns}")
    if config.data.get("kind") not in ("synthetic", "alpacaeval"):
        raise ValueError(
            f"{path}: data.kind must be 'synthetic' or 'alpacaeval', got {config.data.get('kind')!r}"
        )
    return config


@dataclass
class RunScores:
    """What one trained proxy (or ensemble member) said about the pool and the test pairs."""

    name: str  # e.g. "bt-s0" or "bt-boot-s0-m2"
    flags: dict[str, Any]
    pool_reward: list[list[float]]
    pool_std: list[list[float]]
    test_chosen: list[float]
    test_rejected: list[float]
    test_std_chosen: list[float]
    test_std_rejected: list[float]


@dataclass
class StudyData:
    """Paths the runs read (prepared by `data.prepare`)."""

    train: str  # proxy training pairs
    test: str  # in-distribution test pairs (error detection)
    pool: str  # rows {prompt, responses, gold_scores}


@dataclass
class ProxyRun:
    """A run of the study: its file name, the proxy whose options it trains with, the training seed, and whether
    it trains on a bootstrap resample (an ensemble member)."""

    name: str
    proxy: str
    seed: int
    bootstrap: bool


def run_specs(config: StudyConfig) -> list[ProxyRun]:
    specs = [
        ProxyRun(f"{proxy}-s{seed}", proxy, seed, False) for proxy in config.proxies for seed in config.seeds
    ]
    for base in dict.fromkeys(config.ensembles.values()):
        for seed in config.seeds:
            for member in range(config.ensemble_members):
                specs.append(ProxyRun(f"{base}-boot-s{seed}-m{member}", base, 1000 * seed + member, True))
    return specs


def read_pool_rows(path: str) -> list[dict[str, Any]]:
    from vrm.evaluation.best_of_n import read_pool

    return read_pool(path, "gold_scores")


def score_model(
    model_dir: str, pool: list[dict[str, Any]], test_path: str, cache: str | None
) -> dict[str, Any]:
    """Rewards and reward_std of every pool candidate and of both sides of every test pair."""
    from vrm.data.rows import load_preferences
    from vrm.evaluation.pairwise import score_examples
    from vrm.scoring.loading import load_scorer

    scorer = load_scorer(model_dir, embedding_cache=cache)
    prompts = [row["prompt"] for row in pool for _ in row["responses"]]
    responses = [response for row in pool for response in row["responses"]]
    scores = scorer.score(prompts, responses)
    reward, std = scores.reward.numpy().astype(float), scores.reward_std.numpy().astype(float)
    pool_reward, pool_std, start = [], [], 0
    for row in pool:
        end = start + len(row["responses"])
        pool_reward.append(reward[start:end].round(6).tolist())
        pool_std.append(std[start:end].round(6).tolist())
        start = end
    chosen, rejected = score_examples(scorer, load_preferences(test_path, split="test"))
    return {
        "pool_reward": pool_reward,
        "pool_std": pool_std,
        "test_chosen": chosen.reward.numpy().round(6).tolist(),
        "test_rejected": rejected.reward.numpy().round(6).tolist(),
        "test_std_chosen": chosen.reward_std.numpy().round(6).tolist(),
        "test_std_rejected": rejected.reward_std.numpy().round(6).tolist(),
    }


def training_tokens(options: dict[str, Any], path: str):
    """The backbone model and the token sequences / prompt lengths the training run with these options builds
    from the pairs of `path` (chosen sequences, then rejected: the order `CachedPairDataset.build` caches them)."""
    from vrm.data.rows import load_preferences
    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.training.backbone import build_model, load_tokenizer

    model_args, _, training_args = build_arguments({**options, "dataset_name": [path]})
    tokenizer = load_tokenizer(model_args)
    model = build_model(model_args)
    template = PreferenceTokenizer.from_arguments(tokenizer, training_args, bool(model.config.is_causal))
    pairs, _ = template.tokenize_pairs(load_preferences(path, split="train"))
    sequences = [p.chosen_input_ids for p in pairs] + [p.rejected_input_ids for p in pairs]
    return model, sequences, [p.prompt_length for p in pairs] * 2, template.tokenizer.pad_token_id


def assemble_cached_states(options: dict[str, Any], source: str, target: str, cache_dir: str) -> int:
    """Write the embedding-cache entry of the pairs in `target` from the cached states of the pairs in `source`
    (a resample or subset of the same texts: no backbone pass). Returns the number of sequences assembled;
    sequences `source` does not have are left to training to embed."""
    import torch
    from safetensors.torch import save_file

    from vrm.data.state_cache import EmbeddingCache, backbone_fingerprint

    cache = EmbeddingCache(cache_dir, progress=False)
    model, known, known_lengths, pad = training_tokens(options, source)
    prompt_states, response_states = cache.states(model, known, known_lengths, pad, "source")
    index = {(tuple(ids), n): i for i, (ids, n) in enumerate(zip(known, known_lengths, strict=True))}
    _, wanted, wanted_lengths, _ = training_tokens(options, target)
    rows = [index.get((tuple(ids), n)) for ids, n in zip(wanted, wanted_lengths, strict=True)]
    if any(row is None for row in rows):
        return 0
    fingerprint = backbone_fingerprint(model)
    entry = cache.entry(model, wanted, wanted_lengths, fingerprint)
    os.makedirs(entry, exist_ok=True)
    take = torch.tensor(rows, dtype=torch.long)
    for chunk, start in enumerate(range(0, len(rows), cache.chunk_size)):
        part = take[start : start + cache.chunk_size]
        path = os.path.join(entry, f"chunk-{chunk:05d}.safetensors")
        with atomic_output(path) as staging:
            save_file(
                {"prompt_states": prompt_states[part], "response_states": response_states[part]}, staging
            )
    meta = {**fingerprint, "sequences": len(rows), "chunk_size": cache.chunk_size,
            "hidden_size": model.config.text_config.hidden_size, "description": f"assembled from {source}"}  # fmt: skip
    write_json(meta, os.path.join(entry, "meta.json"))
    return len(rows)


def bootstrap_file(source: str, target: str, seed: int) -> None:
    """A bootstrap resample (same size, with replacement) of the rows of a jsonl file."""
    with open(source, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    picks = np.random.default_rng(seed).integers(0, len(lines), size=len(lines))
    with atomic_output(target) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.writelines(lines[i] for i in picks)


def execute(run: ProxyRun, config: StudyConfig, data: StudyData, work_dir: str) -> RunScores:
    """Train one run through `VRMTrainer`, score it, delete the model."""
    model_dir = os.path.join(work_dir, "models", config.name, run.name)
    options = run_options(
        config.spec(run.proxy, run.seed),
        config.backbone,
        data.train,
        model_dir,
        os.path.join(work_dir, "embeddings"),
    )
    cache = options.get("embedding_cache")  # None: a fine-tuned backbone, no states to reuse
    if run.bootstrap:
        train = os.path.join(work_dir, "data", config.name, "bootstrap", f"seed{run.seed}.jsonl")
        bootstrap_file(data.train, train, run.seed)
        if cache:
            assemble_cached_states(options, data.train, train, cache)
        options["dataset_name"] = [train]
    train_model(options)
    scores = score_model(model_dir, read_pool_rows(data.pool), data.test, cache)
    shutil.rmtree(model_dir, ignore_errors=True)
    recorded = {
        k: v
        for k, v in {**RUN_DEFAULTS, **options}.items()
        if k not in ("output_dir", "embedding_cache", "model_name_or_path")
    }
    return RunScores(run.name, recorded, **scores)


def read_run(results_dir: str, name: str) -> RunScores | None:
    path = os.path.join(results_dir, "runs", f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return RunScores(**json.load(handle))


def read_runs(config: StudyConfig, results_dir: str) -> dict[str, RunScores]:
    """Every finished run of the study, by name."""
    return {run.name: r for run in run_specs(config) if (r := read_run(results_dir, run.name)) is not None}


def run_study(
    config: StudyConfig,
    data: StudyData,
    results_dir: str,
    work_dir: str,
    runner: Callable[[ProxyRun, StudyConfig, StudyData, str], RunScores] = execute,
    only: Sequence[str] | None = None,
) -> dict[str, RunScores]:
    """Every run of the study (finished runs are files and never retrained)."""
    runs = {}
    for run in run_specs(config):
        if only is not None and run.proxy not in only:
            continue
        scores = read_run(results_dir, run.name)
        if scores is None:
            print(f"[overoptimization {config.name}] {run.name}", flush=True)
            scores = runner(run, config, data, work_dir)
            write_json(asdict(scores), os.path.join(results_dir, "runs", f"{run.name}.json"), indent=None)
        runs[run.name] = scores
    return runs
