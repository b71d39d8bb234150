"""The report of a declarative experiment (`vrm.experiment`): mean +- std over seeds, paired tests, E[w] error.

Statistics: per test set, the mean and std over seeds of the selected configuration's accuracy; a paired
sign-flip permutation test (`scipy.stats.permutation_test`) of per-pair correctness averaged over seeds; where the
true objective weights are known (synthetic data), the mean absolute error of E[w] per subset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.framework.experiment import ExperimentConfig, RunResult


def paired_p_value(a: Sequence[float], b: Sequence[float], resamples: int = 10000) -> float:
    """Two-sided p-value of mean(a - b) = 0 for paired per-pair scores (sign-flip permutation test)."""
    from scipy.stats import permutation_test

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.any(diff):
        return 1.0
    test = permutation_test(
        (diff,),
        np.mean,
        permutation_type="samples",
        n_resamples=resamples,
        alternative="two-sided",
        random_state=0,
    )
    return float(test.pvalue)


def match_objectives(
    subset_weights: dict[str, list[float]], truth: dict[str, list[float]], tied: bool = True
) -> tuple[tuple[int, ...], float]:
    """Which learned objectives stand for the true ones, and the mean absolute error of E[w] per subset then.

    `tied` (a variant trained with ratings): learned objective k is true objective k (rated objectives come
    first). Otherwise nothing names the objectives, so they are matched by the assignment with the smallest
    error (an optimistic reading for that variant). The matched learned weights are renormalised to sum to 1
    (a head with free objectives besides the rated ones)."""
    import itertools

    size = len(next(iter(truth.values())))
    learned_k = len(next(iter(subset_weights.values())))
    choices = [tuple(range(size))] if tied else itertools.permutations(range(learned_k), size)
    best_choice, best = None, math.inf
    for choice in choices:
        errors = []
        for subset, true in truth.items():
            learned = np.asarray([subset_weights[subset][k] for k in choice], dtype=float)
            total = learned.sum()
            errors.extend(np.abs((learned / total if total > 0 else learned) - np.asarray(true, dtype=float)))
        error = float(np.mean(errors))
        if error < best:
            best_choice, best = choice, error
    return best_choice, best


def weight_error(
    subset_weights: dict[str, list[float]], truth: dict[str, list[float]], tied: bool = True
) -> float:
    """Mean absolute error of E[w] per subset against known weights (see `match_objectives`)."""
    return match_objectives(subset_weights, truth, tied)[1]


def build_report(config: ExperimentConfig, runs: dict[str, list[RunResult]]) -> dict[str, Any]:
    """Mean +- std per variant and set, the chosen grid point, and paired tests against the baseline.

    The paired test conditions on the trained models (per-pair correctness averaged over seeds): it says whether
    the difference on these pairs is chance, not how it varies with training seeds (see the std over seeds).
    Validation p-values are optimistic: the grid point was chosen on validation."""
    sets = ["validation", *config.test]
    table: dict[str, Any] = {}
    for variant, members in runs.items():
        entry: dict[str, Any] = {"seeds": [r.seed for r in members], "flags": members[0].flags, "sets": {}}
        for name in sets:
            values = [r.sets[name].accuracy for r in members]
            spreads = [r.sets[name].weight_spread for r in members if r.sets[name].weight_spread is not None]
            entry["sets"][name] = {
                "accuracy_mean": float(np.mean(values)),
                "accuracy_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
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
                entry["sets"][name]["weight_error_std"] = (
                    float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0
                )
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
    from vrm.evaluation.text import markdown_table as _table

    config = report["experiment"]
    sets = ["validation", *config["test"]]
    lines = [f"## {config['name']}", "", config.get("notes", "").strip(), ""]
    truth = " and E[w] error against the known weights" if config.get("true_weights") else ""
    lines += [
        f"ECE, E[w] spread (mean total variation of E[w|x] from its average over prompts; 0: the weights ignore "
        f"the prompt){truth} on `{sets[-1]}`.",
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
        cells += [
            ", ".join(f"{k} {v}" for k, v in grid.items()),
            str(len(entry["seeds"])),
        ]
        rows.append(cells)
    lines += _table(header, rows)
    lines += [
        "",
        "Paired tests (per-pair correctness averaged over seeds; sign-flip permutation, two-sided):",
        "",
    ]
    rows = [
        [name, *(f"{t['sets'][s]['difference']:+.3f} (p {t['sets'][s]['p']:.3f})" for s in sets)]
        for name, t in report["paired_tests"].items()
    ]
    lines += _table(["comparison", *sets], rows)
    return "\n".join(lines) + "\n"
