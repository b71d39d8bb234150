"""Declarative experiments: variants × seeds, one learning rate per variant chosen on validation, paired tests.

    python -m benchmarks.studies.experiment benchmarks/experiments/synthetic_frozen.yaml [--report_only]

An experiment is a YAML file (examples under `benchmarks/experiments/`):

    name: finegrained_qa_frozen
    backbone: minilm                   # `minilm` (the pip-installed MiniLM) or a local directory / hub id
    data_dir: benchmarks/.cache/fgqa   # train / validation / test paths are relative to it
    train: train.jsonl
    validation: validation.jsonl
    test: {test: test.jsonl}
    eval_subsets: [finegrained_qa]     # optional: validation / test pairs of these subsets only
    common: {freeze_backbone: true, num_train_epochs: 4, ...}      # training options of every run
    grid: {learning_rate: [0.003, 0.01, 0.03]}                   # tried at the first seed, per variant
    seeds: [0, 1, 2]
    baseline: bt                       # every variant is compared with it; more pairs under `comparisons`
    variants:
      bt: {head_type: bt}
      vrm_rw: {head_type: vrm, num_objectives: 5, attribute_names: [...], rating_weight_coef: 1.0}

Training options are fields of `vrm.training`'s argument dataclasses (`benchmarks.studies.training`). Every
variant gets the same tuning effort: each grid point is trained at the first seed and the one with the best
validation accuracy is run at every seed (`select`). A run trains through `VRMTrainer` with the merged options,
then the model scores the validation and test pairs; its `RunResult` (accuracy, per-pair correctness, ECE, how
much E[w] moves with the prompt) is written as JSON under `<results>/runs/<key>.json` and the model directory is
deleted. Finished runs are never retrained (the file is the cache), so an interrupted experiment resumes, and the
report is rebuilt from those files alone (`build_report`).

The report: per test set the mean ± std over seeds of the selected configuration's accuracy; a paired sign-flip
permutation test (`stats.paired_p_value`) of per-pair correctness averaged over seeds between two variants;
where the true objective weights are known (synthetic data), the mean absolute error of E[w] per subset
(`vrm.evaluation.metrics.weight_error`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from benchmarks.studies.report import markdown_table, run_main, write_report
from benchmarks.studies.spec import RunSpec, check_name, grid_points, read_yaml_config
from benchmarks.studies.stats import mean_std, pair_correctness, paired_p_value, sample_std
from benchmarks.studies.training import train_run
from vrm.data.files import write_json
from vrm.evaluation.metrics import weight_error

MODULE = "benchmarks.studies.experiment"


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
        return grid_points(self.grid)


# options each run gets from the runner (its data, seed, output and cache), never from the YAML
RUNNER_OPTIONS = frozenset(
    {"model_name_or_path", "dataset_name", "eval_dataset_name", "output_dir", "seed", "embedding_cache"}
)


def load_experiment(path: str) -> ExperimentConfig:
    """Read and check an experiment YAML; errors name the file and the field."""
    config = read_yaml_config(path, ExperimentConfig, "experiment")
    check_name(config.name, "name", path)
    for variant in config.variants:
        check_name(variant, "variant", path)
    for where, options in [("common", config.common), ("grid", config.grid), *config.variants.items()]:
        owned = sorted(set(options) & RUNNER_OPTIONS)
        if owned:
            raise ValueError(f"{path}: {where} sets {owned}, which the runner sets for each run")
    if config.baseline not in config.variants:
        raise ValueError(
            f"{path}: baseline {config.baseline!r} is not one of the variants {list(config.variants)}"
        )
    if not config.seeds:
        raise ValueError(f"{path}: 'seeds' must list at least one seed")
    for name, options in config.variants.items():
        shadowed = sorted(set(options) & set(config.grid))
        if shadowed:
            raise ValueError(f"{path}: variant {name!r} sets {shadowed}, which the grid sweeps")
    if config.eval_subsets is not None:
        config.eval_subsets = [str(subset) for subset in config.eval_subsets]
    for pair in config.comparisons:
        if len(pair) != 2 or any(name not in config.variants for name in pair):
            raise ValueError(f"{path}: comparison {pair} must name two variants")
    return config


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
    """A finished run as its file holds it (`variant` and `flags`: the spec's name and options)."""

    variant: str
    seed: int
    key: str
    flags: dict[str, Any]
    sets: dict[str, SetResult]  # "validation" and each test set
    # training rows that feed each auxiliary term (`vrm.training.auxiliary_terms`), from train_results.json
    auxiliary_terms: dict[str, int] | None = None

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RunResult:
        sets = {name: SetResult(**entry) for name, entry in values["sets"].items()}
        return cls(**{**values, "sets": sets})


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
            if not examples:
                raise ValueError(f"{path}: no pairs of the eval_subsets {list(subsets)} in the {name} set")
        pairs, _ = scorer.template.tokenize_pairs(examples)
        chosen, rejected = score_pairs(
            scorer.model,
            pairs,
            scorer.tokenizer.pad_token_id,
            progress=False,
            embedding_cache=scorer.embedding_cache,
        )
        correct = pair_correctness(chosen.reward.numpy(), rejected.reward.numpy())
        weights = chosen.objective_weights.numpy()
        multi = weights.shape[-1] > 1
        found = sorted({p.subset for p in pairs if p.subset is not None})
        by_subset = {
            subset: [
                round(float(v), 4) for v in weights[np.array([p.subset == subset for p in pairs])].mean(0)
            ]
            for subset in found
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
    """Train one run through `VRMTrainer`, score it, delete the model."""
    model_dir = os.path.join(work_dir, "models", spec.key)
    cache = os.path.join(work_dir, "embeddings") if spec.options.get("freeze_backbone") else None
    train_run(spec, config.backbone, config.path(config.train), model_dir, cache)
    sets = {"validation": config.path(config.validation)}
    sets.update({name: config.path(path) for name, path in config.test.items()})
    scored = score_sets(model_dir, sets, cache, config.eval_subsets)
    with open(os.path.join(model_dir, "train_results.json"), encoding="utf-8") as handle:
        auxiliary = json.load(handle).get("auxiliary_terms")
    shutil.rmtree(model_dir, ignore_errors=True)
    return RunResult(spec.name, spec.seed, spec.key, spec.options, scored, auxiliary)


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
    """Finished runs are reused by the key of their options; refuse to mix them with runs on other data."""
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
            print(f"[experiment {config.name}] {spec.key}: {json.dumps(spec.options)}", flush=True)
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


# ----- the report ------------------------------------------------------------------------------------------------
def build_report(config: ExperimentConfig, runs: dict[str, list[RunResult]]) -> dict[str, Any]:
    """Mean ± std per variant and set, the chosen grid point, and paired tests against the baseline.

    The paired test conditions on the trained models (per-pair correctness averaged over seeds): it says whether
    the difference on these pairs is chance, not how it varies with training seeds (see the std over seeds).
    Validation p-values are optimistic: the grid point was chosen on validation."""
    sets = ["validation", *config.test]
    table: dict[str, Any] = {}
    for variant, members in runs.items():
        entry: dict[str, Any] = {
            "seeds": [r.seed for r in members],
            "flags": members[0].flags,
            "auxiliary_terms": members[0].auxiliary_terms,
            "sets": {},
        }
        for name in sets:
            accuracy = mean_std([r.sets[name].accuracy for r in members])
            spreads = [r.sets[name].weight_spread for r in members if r.sets[name].weight_spread is not None]
            entry["sets"][name] = {
                "accuracy_mean": accuracy["mean"],
                "accuracy_std": accuracy["std"],
                "ece_mean": float(np.mean([r.sets[name].ece for r in members])),
                "weight_spread_mean": float(np.mean(spreads)) if spreads else None,
                "mean_weights_first_seed": members[0].sets[name].mean_weights,
            }
            if config.true_weights and all(r.sets[name].subset_weights for r in members):
                tied = bool(members[0].flags.get("attribute_names"))
                errors = [
                    weight_error(r.sets[name].subset_weights, config.true_weights, tied) for r in members
                ]
                entry["sets"][name]["weight_error_mean"] = float(np.mean(errors))
                entry["sets"][name]["weight_error_std"] = sample_std(errors)
        table[variant] = entry
    pairs = [[v, config.baseline] for v in runs if v != config.baseline] + config.comparisons
    tests = {}
    for a, b in pairs:
        if a not in runs or b not in runs:
            continue
        seeds = sorted({r.seed for r in runs[a]} & {r.seed for r in runs[b]})
        entry = {}
        for name in sets:
            per_pair = [
                np.mean([r.sets[name].correct for r in runs[v] if r.seed in seeds], axis=0) for v in (a, b)
            ]
            entry[name] = {
                "difference": float((per_pair[0] - per_pair[1]).mean()),
                "p": paired_p_value(*per_pair),
            }
        tests[f"{a} - {b}"] = {"seeds": seeds, "sets": entry}
    return {"experiment": asdict(config), "variants": table, "paired_tests": tests}


def report_markdown(report: dict[str, Any]) -> str:
    """The tables of `build_report` as markdown."""
    config = report["experiment"]
    sets = ["validation", *config["test"]]
    lines = [f"## {config['name']}", ""]
    notes = config.get("notes", "").strip()
    if notes:
        lines += [notes, ""]
    truth = " and the E[w] error against the known weights" if config.get("true_weights") else ""
    lines += [
        "Accuracy is the mean ± std over seeds of the learning setting chosen on validation (`chosen`). ECE, the "
        "E[w] spread (mean total variation of E[w|x] from its average over prompts; 0: the weights ignore the "
        f"prompt){truth} are measured on `{sets[-1]}`, averaged over seeds.",
        "",
    ]
    header = ["variant", *(f"acc {s}" for s in sets), "ECE", "E[w] spread"]
    known = bool(config.get("true_weights"))
    header += ["E[w] error", "chosen", "seeds"] if known else ["chosen", "seeds"]
    rows = []
    last = sets[-1]
    for variant, entry in report["variants"].items():
        cells = [variant]
        for name in sets:
            stat = entry["sets"][name]
            cells.append(f"{stat['accuracy_mean']:.3f} ± {stat['accuracy_std']:.3f}")
        spread = entry["sets"][last]["weight_spread_mean"]
        grid = {k: entry["flags"][k] for k in config["grid"]}
        cells += [f"{entry['sets'][last]['ece_mean']:.3f}", "—" if spread is None else f"{spread:.3f}"]
        if known:
            stat = entry["sets"][last]
            error = stat.get("weight_error_mean")
            cells.append("—" if error is None else f"{error:.3f} ± {stat['weight_error_std']:.3f}")
        cells += [", ".join(f"{k} {v}" for k, v in grid.items()), str(len(entry["seeds"]))]
        rows.append(cells)
    lines += markdown_table(header, rows)
    fed = {v: e["auxiliary_terms"] for v, e in report["variants"].items() if e.get("auxiliary_terms")}
    if fed:
        lines += [
            "",
            "Training rows that feed each auxiliary term (objective labels / attribute ratings / ratings → "
            "weights, of all rows): "
            + "; ".join(
                f"{v} {c['objective_labels']} / {c['attribute_ratings']} / {c['ratings_to_weights']} of {c['rows']}"
                for v, c in fed.items()
            )
            + ".",
        ]
    lines += [
        "",
        "Paired tests (per-pair correctness averaged over seeds; sign-flip permutation, two-sided):",
        "",
    ]
    rows = [
        [name, *(f"{t['sets'][s]['difference']:+.3f} (p {t['sets'][s]['p']:.3f})" for s in sets)]
        for name, t in report["paired_tests"].items()
    ]
    lines += markdown_table(["comparison", *sets], rows)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument(
        "--results_dir",
        default=None,
        help="default: runs/experiments/<name> (copy a finished report to benchmarks/results/ to commit it)",
    )
    parser.add_argument(
        "--work_dir",
        default=os.path.join("benchmarks", ".cache", "experiments"),
        help="models (deleted once scored) and the embedding cache, shared by experiments on the same data",
    )
    parser.add_argument("--variants", nargs="+", default=None, help="run only these (default: all)")
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from finished runs")
    args = parser.parse_args(argv)
    config = load_experiment(args.config)
    results_dir = args.results_dir or os.path.join("runs", "experiments", config.name)
    if not args.report_only:
        run_experiment(config, results_dir, args.work_dir, args.variants)
    report = build_report(
        config, collect(config, results_dir)
    )  # every finished variant, not only those run now
    markdown = report_markdown(report)
    write_report(report, markdown, results_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, MODULE))
