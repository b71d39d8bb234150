"""The over-optimization study, declared in a YAML file: proxies x seeds, best-of-n against a gold reward.

    python -m benchmarks.framework.overoptimization_study benchmarks/experiments/overoptimization/synthetic.yaml

    name: overoptimization_synthetic
    backbone: minilm                       # `minilm` (the pip-installed MiniLM) or a local directory
    data: {kind: synthetic, world_dir: ..., pool_prompts: 100, pool_candidates: 64, pool_seed: 3}
    common: {freeze_backbone: true, max_length: 128, ...}   # `vrm train` flags of every run
    gold: {}                               # synthetic: the true rewards; alpacaeval: `vrm train` flags of the gold
    proxies: {bt: {head_type: bt}, vrm: {head_type: vrm, ...}}
    ensembles: {bt-ensemble: bt}           # a deep ensemble of `ensemble_members` heads of that proxy's flags
    ensemble_members: 4
    seeds: [0, 1, 2]
    lambdas: [0, 0.5, 1, 2, 4]             # lambda of r - lambda * sigma, chosen on the validation prompts
    ns: [1, 2, 4, 8, 16, 32, 64]

Data (`overoptimization_data.prepare`): proxy training pairs, in-distribution test pairs, a pool of candidates
per prompt with gold scores. Every run is `vrm train` on the frozen backbone (`--embedding_cache`, so the
backbone runs once per text) and is scored on the pool and the test pairs; its scores are written as JSON
under `<results>/runs/` and the model is deleted, so an interrupted study resumes. Ensemble member m of seed s
trains with seed 1000 s + m on a bootstrap resample of the training pairs (drawn with that seed); its cached
states are assembled from those of the full training set (`assemble_cached_states`), not recomputed.
The report (`vrm.overoptimization_report`) is built from the run files alone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vrm.data.files import atomic_output, write_json

STUDY_KEYS = {"name", "backbone", "data", "common", "gold", "proxies", "ensembles", "ensemble_members", "seeds",
              "lambdas", "ns", "validation_fraction", "notes", "gpu_command"}  # fmt: skip


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


def load_study(path: str) -> StudyConfig:
    """Read and check a study YAML; errors name the file and the field."""
    from benchmarks.framework.experiment import read_yaml_config

    config = read_yaml_config(path, StudyConfig, STUDY_KEYS, "study")
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
    """Paths the runs read (prepared by `overoptimization_data.prepare`)."""

    train: str  # proxy training pairs
    test: str  # in-distribution test pairs (error detection)
    pool: str  # rows {prompt, responses, gold_scores}


def backbone_path(name: str) -> str:
    from benchmarks.framework.experiment import backbone_path as resolve

    return resolve(name)


def train_flags(
    config: StudyConfig, variant_flags: dict[str, Any], seed: int, train: str, out: str, cache: str
) -> dict[str, Any]:
    """The `vrm train` flags of one run; `--embedding_cache` only where the backbone is frozen."""
    flags = {
        "model_name_or_path": backbone_path(config.backbone),
        "dataset_name": train,
        "output_dir": out,
        "seed": seed,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        **config.common,
        **variant_flags,
    }
    if flags.get("freeze_backbone"):
        flags["embedding_cache"] = cache
    return flags


def train_model(flags: dict[str, Any]) -> str:
    """`vrm train` with these flags (through its own code path); returns the model directory."""
    from benchmarks.framework.experiment import to_argv
    from vrm.cli.train import parse_train_args
    from vrm.training.trainer import run_training

    run_training(*parse_train_args(to_argv(flags)))
    return flags["output_dir"]


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


def training_tokens(flags: dict[str, Any], path: str):
    """The backbone model and the token sequences / prompt lengths `vrm train` with these flags builds from the
    pairs of `path` (chosen sequences, then rejected: the order `CachedPairDataset.build` caches them in)."""
    from benchmarks.framework.experiment import to_argv
    from vrm.cli.train import parse_train_args
    from vrm.data.rows import load_preferences
    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.training.backbone import build_model, load_tokenizer

    model_args, data_args, _ = parse_train_args(to_argv({**flags, "dataset_name": path}))
    tokenizer = load_tokenizer(model_args)
    model = build_model(model_args)
    template = PreferenceTokenizer.from_arguments(tokenizer, data_args, bool(model.config.is_causal))
    pairs, _ = template.tokenize_pairs(load_preferences(path, split="train"))
    sequences = [p.chosen_input_ids for p in pairs] + [p.rejected_input_ids for p in pairs]
    return model, sequences, [p.prompt_length for p in pairs] * 2, template.tokenizer.pad_token_id


def assemble_cached_states(flags: dict[str, Any], source: str, target: str, cache_dir: str) -> int:
    """Write the embedding-cache entry of the pairs in `target` from the cached states of the pairs in `source`
    (a resample or subset of the same texts: no backbone pass). Returns the number of sequences assembled;
    sequences `source` does not have are left to `vrm train` to embed."""
    import torch
    from safetensors.torch import save_file

    from vrm.data.state_cache import EmbeddingCache, backbone_fingerprint

    cache = EmbeddingCache(cache_dir, progress=False)
    model, known, known_lengths, pad = training_tokens(flags, source)
    prompt_states, response_states = cache.states(model, known, known_lengths, pad, "source")
    index = {(tuple(ids), n): i for i, (ids, n) in enumerate(zip(known, known_lengths, strict=True))}
    _, wanted, wanted_lengths, _ = training_tokens(flags, target)
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


@dataclass
class RunSpec:
    name: str
    proxy: str
    seed: int  # the training seed
    bootstrap: bool


def run_specs(config: StudyConfig) -> list[RunSpec]:
    specs = [
        RunSpec(f"{proxy}-s{seed}", proxy, seed, False) for proxy in config.proxies for seed in config.seeds
    ]
    for base in dict.fromkeys(config.ensembles.values()):
        for seed in config.seeds:
            for member in range(config.ensemble_members):
                specs.append(RunSpec(f"{base}-boot-s{seed}-m{member}", base, 1000 * seed + member, True))
    return specs


def execute(spec: RunSpec, config: StudyConfig, data: StudyData, work_dir: str) -> RunScores:
    """Train one run with `vrm train`'s code path, score it, delete the model."""
    cache = os.path.join(work_dir, "embeddings")
    model_dir = os.path.join(work_dir, "models", config.name, spec.name)
    train = data.train
    flags = train_flags(config, config.proxies[spec.proxy], spec.seed, train, model_dir, cache)
    cache = flags.get("embedding_cache")  # None: a fine-tuned backbone, no states to reuse
    if spec.bootstrap:
        train = os.path.join(work_dir, "data", config.name, "bootstrap", f"seed{spec.seed}.jsonl")
        bootstrap_file(data.train, train, spec.seed)
        if cache:
            assemble_cached_states(flags, data.train, train, cache)
        flags["dataset_name"] = train
    train_model(flags)
    scores = score_model(model_dir, read_pool_rows(data.pool), data.test, cache)
    shutil.rmtree(model_dir, ignore_errors=True)
    recorded = {
        k: v for k, v in flags.items() if k not in ("output_dir", "embedding_cache", "model_name_or_path")
    }
    return RunScores(spec.name, recorded, **scores)


def read_run(results_dir: str, name: str) -> RunScores | None:
    path = os.path.join(results_dir, "runs", f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return RunScores(**json.load(handle))


def run_study(
    config: StudyConfig,
    data: StudyData,
    results_dir: str,
    work_dir: str,
    runner: Callable[[RunSpec, StudyConfig, StudyData, str], RunScores] = execute,
    only: Sequence[str] | None = None,
) -> dict[str, RunScores]:
    """Every run of the study (finished runs are files and never retrained)."""
    from dataclasses import asdict

    runs = {}
    for spec in run_specs(config):
        if only is not None and spec.proxy not in only:
            continue
        scores = read_run(results_dir, spec.name)
        if scores is None:
            print(f"[overoptimization {config.name}] {spec.name}", flush=True)
            scores = runner(spec, config, data, work_dir)
            write_json(asdict(scores), os.path.join(results_dir, "runs", f"{spec.name}.json"), indent=None)
        runs[spec.name] = scores
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import platform
    import shlex
    import sys

    import torch

    from benchmarks.framework.overoptimization_data import prepare
    from benchmarks.framework.overoptimization_report import build_report, plot_report, report_markdown

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.framework.overoptimization_study", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("config", help="study YAML")
    parser.add_argument(
        "--results_dir", default=None, help="default: benchmarks/results/overoptimization/<name>"
    )
    parser.add_argument("--work_dir", default=os.path.join("benchmarks", ".cache", "overopt"),
                        help="data, models (deleted once scored) and the embedding cache")  # fmt: skip
    parser.add_argument("--proxies", nargs="+", default=None, help="run only these proxies (default: all)")
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from finished runs")
    args = parser.parse_args(argv)
    config = load_study(args.config)
    results_dir = args.results_dir or os.path.join("benchmarks", "results", "overoptimization", config.name)
    data = prepare(config, args.work_dir)
    runs = {}
    if not args.report_only:
        runs = run_study(config, data, results_dir, args.work_dir, only=args.proxies)
    runs = {spec.name: r for spec in run_specs(config) if (r := read_run(results_dir, spec.name)) is not None}
    meta = {
        "command": "python -m benchmarks.framework.overoptimization_study "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "config": args.config,
        "backbone": config.backbone,
        "data": config.data,
        "notes": config.notes,
        "gpu_command": config.gpu_command,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
    }
    gold_summary = os.path.join(os.path.dirname(data.pool), "gold.json")  # AlpacaEval: how the gold was made
    if os.path.exists(gold_summary):
        with open(gold_summary, encoding="utf-8") as handle:
            meta["gold_summary"] = json.load(handle)
    report = build_report(config, runs, read_pool_rows(data.pool), meta)
    write_json(report, os.path.join(results_dir, "report.json"))
    markdown = report_markdown(report)
    with atomic_output(os.path.join(results_dir, "report.md")) as staging, open(staging, "w") as handle:
        handle.write(markdown)
    plot_report(report, os.path.join(results_dir, "gold_vs_kl.png"))
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
