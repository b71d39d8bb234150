"""The real-data study's tables: selection on validation, grouping of runs by model, summaries over seeds, tests.

* `select` — a sweep's winner: highest validation accuracy, then lowest validation NLL;
* `members` — the runs of a table (group): those trained for it and runs of the same configuration trained for
  another group (the sweep's seed-0 run of the chosen configuration is the main table's seed 0); one
  configuration per model (its most recent run's);
* `summarize` — per model, mean ± std over seeds (`benchmarks.studies.stats.mean_std`) of each set's headline
  metrics;
* `significance` — a − b accuracy per set, and a paired sign-flip permutation test over test pairs of the
  seed-averaged correctness (`benchmarks.studies.stats.paired_p_value`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from benchmarks.studies.stats import mean_std, paired_p_value
from vrm.evaluation.metrics import error_detection

from .config import DIAGNOSTIC_SET, OBJECTIVES
from .runner import RunResult

PERMUTATIONS = 20000  # resamples of each paired test
SUMMARY_METRICS = ("accuracy", "ties", "nll", "ece", "mean_reward_std", "uncertainty_error_auroc")
LENGTH_METRICS = ("accuracy_chosen_longer", "accuracy_chosen_shorter", "spearman_reward_length")


def select(results: Sequence[RunResult], validation: str) -> RunResult:
    """The sweep's winner: highest validation accuracy, then lowest validation NLL."""
    return max(results, key=lambda r: (r.validation_score(validation)[0], -r.validation_score(validation)[1]))


def members(results: Sequence[RunResult], group: str) -> list[RunResult]:
    """Runs of a group and runs of the same configurations trained for another group; where a model has runs
    of several configurations (a grid changed and the sweep chose again), the configuration of its most recent
    run only (the others are printed as left out)."""
    configs = {r.spec.config for r in results if r.spec.group == group}
    found = [r for r in results if r.spec.config in configs]
    latest: dict[str, RunResult] = {}
    for result in found:
        name = result.spec.variant
        if name not in latest or result.finished_at > latest[name].finished_at:
            latest[name] = result
    kept = [r for r in found if r.spec.config == latest[r.spec.variant].spec.config]
    for stale in {r.spec.config for r in found} - {r.spec.config for r in kept}:
        print(f"[study] {group}: runs of an older configuration left out: {stale}", flush=True)
    return kept


def by_variant(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Runs grouped by model name (the head and its label), in first-seen order."""
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for result in results:
        groups[result.spec.variant].append(result)
    return dict(groups)


def harmlessness_weight_gap(result: RunResult) -> float | None:
    """Mean E[w_harmlessness] on harmlessness prompts minus on helpfulness prompts (RMB seen categories): how
    much the objective weights move with the prompt (0 = they ignore it; 1 = all-or-nothing)."""
    name = next((n for n in result.metrics if n.endswith(DIAGNOSTIC_SET)), None)
    if name is None:
        return None
    subsets = result.metrics[name].subsets
    index = OBJECTIVES.index("harmlessness")
    means = {}
    for objective in OBJECTIVES:
        found = [(m.objective_weights[index], m.pairs) for k, m in subsets.items() if f"/{objective}/" in k]
        if not found:
            return None
        means[objective] = sum(w * n for w, n in found) / sum(n for _, n in found)
    return means["harmlessness"] - means["helpfulness"]


def diagnostics_summary(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Mean ± std over seeds of the posterior diagnostics (`runner.posterior_diagnostics`) and the weight gap."""
    found = [r.diagnostics for r in runs]
    out = {
        "kl_z": mean_std([sum(d["kl_z_per_dim"]) if "kl_z_per_dim" in d else None for d in found]),
        "active_feature_dims": mean_std([d.get("active_feature_dims") for d in found]),
        "kl_w": mean_std([d.get("kl_w") for d in found]),
        "concentration_total": mean_std([d.get("concentration_total") for d in found]),
    }
    if runs[0].spec.head in ("moe", "vrm"):
        out["harmlessness_weight_gap"] = mean_std([harmlessness_weight_gap(r) for r in runs])
    return out


def pair_set_summary(
    runs: Sequence[RunResult], scores: Sequence[dict], set_name: str
) -> dict[str, Any] | None:
    """Mean ± std over seeds of one pairwise set's metrics, error detection from the per-pair scores."""
    overall = [r.metrics[set_name].overall for r in runs if set_name in r.metrics]
    if not overall:
        return None
    row: dict[str, Any] = {m: mean_std([getattr(o, m) for o in overall]) for m in SUMMARY_METRICS}
    for metric in LENGTH_METRICS:
        row[metric] = mean_std([getattr(o.length_bias, metric) for o in overall])
    row["longer_wins_accuracy"] = overall[0].length_bias.longer_wins_accuracy
    keys = ("reward_chosen", "reward_rejected", "std_chosen", "std_rejected")
    detected = [
        error_detection(*(found[f"{set_name}/{k}"] for k in keys))
        for r, found in zip(runs, scores, strict=True)
        if set_name in r.metrics
    ]
    for signal in ("margin", "std", "flip"):
        row[f"{signal}_error_auroc"] = mean_std([d.get(signal) for d in detected])
    row["selective_accuracy_50"] = mean_std(
        [o.selective_accuracy.curve["0.5"] if o.selective_accuracy else None for o in overall]
    )
    return row


def summarize(results: Sequence[RunResult], pair_sets: Sequence[str]) -> dict[str, Any]:
    """Per model: seeds, spec, and mean ± std over seeds of the headline metrics of each evaluation set."""
    table: dict[str, Any] = {}
    for name, runs in by_variant(results).items():
        row: dict[str, Any] = {"seeds": sorted(r.spec.seed for r in runs), "spec": _spec_dict(runs[0])}
        scores = [r.scores for r in runs]  # each run's per-pair scores, opened once
        for set_name in pair_sets:
            found = pair_set_summary(runs, scores, set_name)
            if found is not None:
                row[set_name] = found
        for set_name, metric in runs[0].metrics.items():
            if set_name.endswith("rm_bench"):
                row[set_name] = {
                    key: mean_std([r.metrics[set_name]["overall"][key] for r in runs])
                    for key in ("easy", "normal", "hard", "average")
                }
            if set_name.endswith("bon_pool"):
                curves = [r.metrics[set_name]["curve"] for r in runs]
                row[set_name] = [
                    {
                        "n": point["n"],
                        "kl_bon": point["kl_bon"],
                        "gold": mean_std([c[i]["gold"] for c in curves]),
                    }
                    for i, point in enumerate(metric["curve"])
                ]
        row["train_seconds"] = mean_std([r.train_seconds for r in runs])
        row["diagnostics"] = diagnostics_summary(runs)
        table[name] = row
    return table


def _spec_dict(result: RunResult) -> dict[str, Any]:
    return asdict(result.spec)


def correctness(results: Sequence[RunResult], variant: str, set_name: str) -> np.ndarray | None:
    """Per test pair, the fraction of the model's seeds that rank it right (r+ > r-)."""
    rows = []
    for result in results:
        if result.spec.variant == variant:
            found = result.scores
            rows.append(
                (found[f"{set_name}/reward_chosen"] > found[f"{set_name}/reward_rejected"]).astype(float)
            )
    return np.mean(rows, 0) if rows else None


def significance(
    results: Sequence[RunResult], pair_sets: Sequence[str], a: str = "vrm", b: str = "bt"
) -> dict[str, dict[str, Any]]:
    """a − b accuracy per set (mean over seeds) and the paired permutation test's p over its test pairs."""
    out = {}
    for set_name in pair_sets:
        first, second = correctness(results, a, set_name), correctness(results, b, set_name)
        if first is None or second is None:
            continue
        out[set_name] = {
            "difference": float(first.mean() - second.mean()),
            "p_value": paired_p_value(first, second, resamples=PERMUTATIONS),
            "pairs": int(first.size),
        }
    return out
