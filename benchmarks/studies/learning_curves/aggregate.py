"""From run files to the curves: per head and size, mean ± std over seeds; paired tests against bt; bounds.

* `curve_table` — per head and n: train accuracy (on the run's own training pairs), held-out accuracy (the
  setting's first evaluation set, in-distribution), the generalization gap train − held-out, held-out ECE and
  NLL, and the accuracy of every other evaluation set; each `stats.mean_std` over seeds;
* `paired_tests` — for each head against bt at each n, over the seeds both have:
  held-out accuracy a − b with the paired sign-flip permutation test over held-out pairs of the seed-averaged
  correctness (`stats.paired_p_value`, as the real-data study tests; on a set of grouped pairs, RM-Bench's 9 per
  prompt, over prompts of their mean correctness, as a prompt's pairs are not independent), and the gap a − b with the exact
  sign-flip test over seeds (with s seeds its smallest two-sided p is 2 / 2^s) and a paired t-test
  (`scipy.stats.ttest_rel`);
* `held_out_bounds` — per run, upper confidence bounds on the true pairwise error from a held-out sample
  (`clopper_pearson_upper`, `hoeffding_upper`), checked against the error on an independent sample.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.studies.stats import mean_std, paired_p_value

from .runner import RunFile

PERMUTATIONS = 20000
BOUND_DELTA = 0.05  # each bound holds with probability at least 1 - delta over the held-out sample
BASELINE = "bt"


def by_head_and_size(runs: Sequence[RunFile]) -> dict[str, dict[int, list[RunFile]]]:
    """Runs grouped by head name, then training size, each list sorted by seed."""
    groups: dict[str, dict[int, list[RunFile]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[run.spec.name][run.n].append(run)
    return {
        head: {n: sorted(found, key=lambda r: r.spec.seed) for n, found in sorted(sizes.items())}
        for head, sizes in groups.items()
    }


def gap(run: RunFile, held_out: str) -> float:
    return run.metrics["train"]["accuracy"] - run.metrics[held_out]["accuracy"]


def curve_table(
    runs: Sequence[RunFile],
    held_out: str,
    eval_sets: Sequence[str],
    subset_columns: dict[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """{head: {n: row}}: mean ± std over seeds of train / held-out accuracy, the gap, ECE, NLL, other sets, and
    the accuracy of the subsets `subset_columns` names per set (e.g. RM-Bench's hard pairs)."""
    table: dict[str, Any] = {}
    for head, sizes in by_head_and_size(runs).items():
        table[head] = {}
        for n, found in sizes.items():
            row = {
                "seeds": [r.spec.seed for r in found],
                "train_accuracy": mean_std([r.metrics["train"]["accuracy"] for r in found]),
                "held_out_accuracy": mean_std([r.metrics[held_out]["accuracy"] for r in found]),
                "gap": mean_std([gap(r, held_out) for r in found]),
                "held_out_ece": mean_std([r.metrics[held_out]["ece"] for r in found]),
                "held_out_nll": mean_std([r.metrics[held_out]["nll"] for r in found]),
                "train_seconds": mean_std([r.train_seconds for r in found]),
            }
            for name in eval_sets:
                if name != held_out and all(name in r.metrics for r in found):
                    row[f"{name}_accuracy"] = mean_std([r.metrics[name]["accuracy"] for r in found])
                    for subset in (subset_columns or {}).get(name, ()):
                        row[f"{name}_{subset}_accuracy"] = mean_std(
                            [r.metrics[name]["subset_accuracy"][subset] for r in found]
                        )
            table[head][str(n)] = row
    return table


def exact_sign_flip(differences: Sequence[float]) -> float | None:
    """Two-sided p of mean = 0 by every sign flip of the per-seed differences (exact; 1 when all are 0; None
    with a single seed)."""
    if len(differences) < 2:
        return None
    return paired_p_value(np.asarray(differences, dtype=float), np.zeros(len(differences)), resamples=10**6)


def ttest_p(differences: Sequence[float]) -> float | None:
    """Paired t-test p (None with fewer than two seeds or no spread)."""
    from scipy.stats import ttest_1samp

    values = np.asarray(differences, dtype=float)
    if values.size < 2 or np.allclose(values, values[0]):
        return None
    return float(ttest_1samp(values, 0.0).pvalue)


def paired_tests(
    runs: Sequence[RunFile],
    held_out: str,
    test_sets: Sequence[str],
    baseline: str = BASELINE,
    parts: dict[str, tuple[str, Sequence[int]]] | None = None,
) -> dict[str, Any]:
    """{head: {n: tests}} of every head against `baseline` (see the module docstring). `parts` adds tests on
    the pairs at fixed positions of each prompt group of a grouped set: {name: (set, positions)}, e.g. RM-Bench's
    hard pairs, positions 1, 2 and 5 of its 9 (chosen i against rejected j at 3 i + j, i < j)."""
    grouped = by_head_and_size(runs)
    if baseline not in grouped:
        return {}
    out: dict[str, Any] = {}
    for head, sizes in grouped.items():
        if head == baseline:
            continue
        out[head] = {}
        for n, found in sizes.items():
            base = {r.spec.seed: r for r in grouped[baseline].get(n, [])}
            mine = {r.spec.seed: r for r in found}
            seeds = sorted(set(base) & set(mine))
            if not seeds:
                continue
            gaps = [gap(mine[s], held_out) - gap(base[s], held_out) for s in seeds]
            entry: dict[str, Any] = {
                "seeds": seeds,
                "gap_difference": float(np.mean(gaps)),
                "gap_sign_flip_p": exact_sign_flip(gaps),
                "gap_ttest_p": ttest_p(gaps),
            }
            for name in test_sets:
                if not all(name in mine[s].metrics and name in base[s].metrics for s in seeds):
                    continue
                first = np.mean([mine[s].correct(name) for s in seeds], 0)
                second = np.mean([base[s].correct(name) for s in seeds], 0)
                entry[name] = {
                    "accuracy_difference": float(first.mean() - second.mean()),
                    "pairs": int(first.size),
                }
                sizes = mine[seeds[0]].metrics[name].get("group_sizes")
                if sizes:  # pairs of one prompt are not independent: test per prompt (its mean correctness)
                    starts = np.cumsum([0, *sizes[:-1]])
                    first = np.add.reduceat(first, starts) / np.asarray(sizes)
                    second = np.add.reduceat(second, starts) / np.asarray(sizes)
                    entry[name]["tested_units"] = f"{len(sizes)} prompts"
                entry[name]["p_value"] = paired_p_value(first, second, resamples=PERMUTATIONS)
            for name, (source, positions) in (parts or {}).items():
                if not all(source in mine[s].metrics and source in base[s].metrics for s in seeds):
                    continue
                sizes = mine[seeds[0]].metrics[source]["group_sizes"]
                if len(set(sizes)) != 1:
                    raise ValueError(
                        f"{source}: positions need groups of one size, got sizes {sorted(set(sizes))}"
                    )
                index = list(positions)

                def part(found: list[RunFile], source=source, width=sizes[0], index=index) -> np.ndarray:
                    return np.mean([r.correct(source).reshape(-1, width)[:, index].mean(1) for r in found], 0)

                first, second = part([mine[s] for s in seeds]), part([base[s] for s in seeds])
                entry[name] = {
                    "accuracy_difference": float(first.mean() - second.mean()),
                    "pairs": int(first.size * len(index)),
                    "tested_units": f"{first.size} prompts",
                    "p_value": paired_p_value(first, second, resamples=PERMUTATIONS),
                }
            out[head][str(n)] = entry
    return out


def clopper_pearson_upper(errors: int, pairs: int, delta: float = BOUND_DELTA) -> float:
    """One-sided (1 - delta) Clopper-Pearson upper bound on a binomial error rate: the exact binomial tail."""
    from scipy.stats import beta

    if errors >= pairs:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, pairs - errors))


def hoeffding_upper(errors: int, pairs: int, delta: float = BOUND_DELTA) -> float:
    """errors / pairs + sqrt(ln(1 / delta) / (2 pairs)), capped at 1."""
    return min(1.0, errors / pairs + math.sqrt(math.log(1.0 / delta) / (2 * pairs)))


def held_out_bounds(
    runs: Sequence[RunFile], bound_set: str, check_set: str | None, shifted_set: str | None = None
) -> dict[str, Any]:
    """Per head and n: the pairwise error on the sample the bound is computed from, its Clopper-Pearson and
    Hoeffding upper bounds, and the error on an independent sample of the same distribution (`check_set`, or
    the second half of `bound_set` when it is None, the bound then using the first half) and on a shifted one;
    `covered` is the fraction of runs whose check error is at most the Clopper-Pearson bound."""
    out: dict[str, Any] = {}
    for head, sizes in by_head_and_size(runs).items():
        out[head] = {}
        for n, found in sizes.items():
            rows = []
            for run in found:
                correct = run.correct(bound_set)
                if check_set is None:
                    half = correct.size // 2
                    sample, check = correct[:half], correct[half:]
                else:
                    sample, check = correct, run.correct(check_set)
                errors, pairs = int(round((1 - sample).sum())), int(sample.size)
                row = {
                    "error": errors / pairs,
                    "clopper_pearson": clopper_pearson_upper(errors, pairs),
                    "hoeffding": hoeffding_upper(errors, pairs),
                    "check_error": float(1 - check.mean()),
                }
                if shifted_set:
                    row["shifted_error"] = float(1 - run.correct(shifted_set).mean())
                rows.append(row)
            entry = {key: mean_std([r[key] for r in rows]) for key in rows[0]}
            entry["covered"] = float(np.mean([r["check_error"] <= r["clopper_pearson"] for r in rows]))
            if shifted_set:
                entry["shifted_covered"] = float(
                    np.mean([r["shifted_error"] <= r["clopper_pearson"] for r in rows])
                )
            entry["pairs"] = int(found[0].correct(bound_set).size // (2 if check_set is None else 1))
            out[head][str(n)] = entry
    return out
