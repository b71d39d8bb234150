"""The report of the over-optimization study, built from its run files and the pool's gold scores alone.

Per proxy (a single head, or an ensemble assembled from its members' runs) and seed: lambda of r - lambda * sigma
chosen on the validation pool prompts (`selection.select_lambda`), then on the test pool prompts the best-of-n
gold curve by r (plain) and by r - lambda * sigma (conservative); on the test pairs the accuracy, the
error-detection AUROC of each uncertainty signal and the spread of sigma. Then mean ± std over seeds
(`benchmarks.studies.stats.mean_std`).

The pool's gold scores and response lengths are what the report needs besides the runs; `pool_record` keeps them
as `<results>/pool.json` beside `runs/`, so the report is rebuilt from the results directory alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmarks.studies.overoptimization.runner import RunScores, StudyConfig
from benchmarks.studies.overoptimization.selection import (
    PairScores,
    PoolScores,
    ensemble_pairs,
    ensemble_pool,
    gold_curve,
    select_lambda,
    split_prompts,
    std_spread,
    uncertainty_aurocs,
)
from benchmarks.studies.report import fmt, markdown_table
from benchmarks.studies.stats import mean_std, pair_correctness

SIGNALS = ("margin", "std", "flip", "member_margin_std")
ESTIMATOR = (
    "exact expectation over all n-subsets of each pool (vrm.evaluation.best_of_n.bon_curve, Gao et al. 2022)"
)


def pool_record(pool: list[dict[str, Any]]) -> dict[str, Any]:
    """What the report reads of the pool: each candidate's gold score and length in characters."""
    return {
        "gold_scores": [[float(g) for g in row["gold_scores"]] for row in pool],
        "response_chars": [[len(str(r)) for r in row["responses"]] for row in pool],
    }


def run_pool(run: RunScores) -> PoolScores:
    std = [np.asarray(s, dtype=np.float64) for s in run.pool_std]
    has_std = any(np.any(s > 0) for s in std)
    return PoolScores([np.asarray(r, dtype=np.float64) for r in run.pool_reward], std if has_std else None)


def run_pairs(run: RunScores) -> PairScores:
    arrays = [np.asarray(v, dtype=np.float64) for v in (run.test_chosen, run.test_rejected)]
    stds = [np.asarray(v, dtype=np.float64) for v in (run.test_std_chosen, run.test_std_rejected)]
    if not any(np.any(s > 0) for s in stds):
        return PairScores(*arrays)
    return PairScores(*arrays, *stds)


def proxy_scores(
    config: StudyConfig, runs: dict[str, RunScores], proxy: str, seed: int
) -> tuple[PoolScores, PairScores] | None:
    """The pool and pair scores of a proxy at a seed (an ensemble's from its members); None if not all run."""
    if proxy in config.proxies:
        run = runs.get(f"{proxy}-s{seed}")
        return None if run is None else (run_pool(run), run_pairs(run))
    base = config.ensembles[proxy]
    members = [runs.get(f"{base}-boot-s{seed}-m{m}") for m in range(config.ensemble_members)]
    if any(m is None for m in members):
        return None
    return ensemble_pool([run_pool(m) for m in members]), ensemble_pairs([run_pairs(m) for m in members])


def pool_sigma_ranks(scores: PoolScores, gold: list[np.ndarray], lengths: list[np.ndarray]) -> dict | None:
    """What sigma follows among the pool's candidates: Spearman correlation of sigma with the gold score, with
    the response length (characters) and with the reward r, within each prompt, averaged over prompts."""
    from vrm.evaluation.metrics import spearman

    if scores.std is None:
        return None
    out = {}
    for name, other in (("gold", gold), ("length", lengths), ("reward", scores.reward)):
        values = [spearman(s, o) for s, o in zip(scores.std, other, strict=True)]
        out[name] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan
    return out


def build_report(
    config: StudyConfig, runs: dict[str, RunScores], pool: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    """The study's report from its runs and the `pool_record` of its pool."""
    gold = [np.asarray(g, dtype=np.float64) for g in pool["gold_scores"]]
    lengths = [np.asarray(n, dtype=np.float64) for n in pool["response_chars"]]
    validation, test = split_prompts(len(gold), config.validation_fraction, seed=0)
    ns = [n for n in config.ns if n <= max(len(g) for g in gold)]
    oracle = gold_curve(PoolScores(gold, None), gold, ns, prompts=test)
    proxies: dict[str, Any] = {}
    for proxy in [*config.proxies, *config.ensembles]:
        per_seed = []
        for seed in config.seeds:
            scores = proxy_scores(config, runs, proxy, seed)
            if scores is None:
                continue
            pool_scores, pairs = scores
            lam = select_lambda(pool_scores, gold, config.lambdas, ns, validation)
            plain = gold_curve(pool_scores, gold, ns, 0.0, test)
            careful = gold_curve(pool_scores, gold, ns, lam, test)
            per_seed.append({
                "seed": seed,
                "lambda": lam,
                "plain": [p["gold"] for p in plain],
                "conservative": [p["gold"] for p in careful],
                "accuracy": float(np.mean(pair_correctness(pairs.chosen, pairs.rejected))),
                "auroc": uncertainty_aurocs(pairs),
                "std_spread": std_spread(pairs),
                "pool_sigma": pool_sigma_ranks(pool_scores, gold, lengths),
            })  # fmt: skip
        if not per_seed:
            continue
        summary = {
            "seeds": [s["seed"] for s in per_seed],
            "lambdas": [s["lambda"] for s in per_seed],
            "has_std": per_seed[0]["std_spread"] is not None,
            "plain": [mean_std([s["plain"][i] for s in per_seed]) for i in range(len(ns))],
            "conservative": [mean_std([s["conservative"][i] for s in per_seed]) for i in range(len(ns))],
            "gain_at_max_n": mean_std([s["conservative"][-1] - s["plain"][-1] for s in per_seed]),
            "accuracy": mean_std([s["accuracy"] for s in per_seed]),
            "auroc": {
                signal: mean_std([s["auroc"][signal] for s in per_seed])
                for signal in SIGNALS
                if signal in per_seed[0]["auroc"]
            },
        }
        if summary["has_std"]:
            summary["std_spread"] = {
                key: mean_std([s["std_spread"][key] for s in per_seed]) for key in per_seed[0]["std_spread"]
            }
            summary["pool_sigma"] = {
                key: mean_std([s["pool_sigma"][key] for s in per_seed]) for key in per_seed[0]["pool_sigma"]
            }
        proxies[proxy] = {"summary": summary, "per_seed": per_seed}
    return {
        "study": config.name,
        **meta,
        "seeds": config.seeds,
        "ns": ns,
        "kl_bon": [p["kl_bon"] for p in oracle],
        "lambdas_tried": config.lambdas,
        "pool": {
            "prompts": len(gold),
            "validation_prompts": validation,
            "test_prompts": test,
            "candidates_per_prompt": [len(g) for g in gold][:1] + [min(len(g) for g in gold)],
        },
        "oracle_gold": [p["gold"] for p in oracle],
        "estimator": ESTIMATOR,
        "proxies": proxies,
    }


def report_markdown(report: dict[str, Any]) -> str:
    ns, proxies = report["ns"], report["proxies"]
    pool = report["pool"]
    lines = [f"# {report['study']}", "", f"`{report['command']}`", "", report.get("notes", ""), ""]
    lines += [
        f"Best-of-n gold on the {len(pool['test_prompts'])} test pool prompts (mean ± std over seeds "
        f"{report['seeds']}); conservative = r − λ·σ with λ chosen on the {len(pool['validation_prompts'])} "
        f"validation prompts from {report['lambdas_tried']}.",
        "",
    ]
    top = ns[-1]
    header = ["proxy", "λ per seed", "gold n=1", "best plain gold (n)", f"plain gold n={top}",
              f"conservative gold n={top}", f"conservative − plain at n={top}"]  # fmt: skip
    rows = []
    for name, entry in proxies.items():
        s = entry["summary"]
        peak = int(np.nanargmax([p["mean"] for p in s["plain"]]))
        uses_lambda = s["has_std"] or name.endswith("ensemble")
        lambdas = ", ".join(f"{v:g}" for v in s["lambdas"]) if uses_lambda else "—"
        rows.append([name, lambdas, fmt(s["plain"][0]), f"{fmt(s['plain'][peak])} ({ns[peak]})",
                     fmt(s["plain"][-1]), fmt(s["conservative"][-1]), fmt(s["gain_at_max_n"])])  # fmt: skip
    oracle = report["oracle_gold"]
    rows.append(["oracle (gold picks)", "", f"{oracle[0]:.3f}", "", f"{oracle[-1]:.3f}", "", ""])
    lines += markdown_table(header, rows, left=2)
    lines += ["", "Full curves (gold of the best-of-n choice; KL_BoN = log n − (n−1)/n):", ""]
    header = [
        "proxy",
        "selection",
        *(f"n={n} (KL {k:.2f})" for n, k in zip(ns, report["kl_bon"], strict=True)),
    ]
    rows = [
        [name, mode, *(fmt(p) for p in entry["summary"][mode])]
        for name, entry in proxies.items()
        for mode in ("plain", "conservative")
    ]
    lines += markdown_table(header, rows, left=2)
    lines += ["", "Error detection on the test pairs: AUROC of each signal for \"this pair is ranked wrongly\" "
              "(0.5 = chance; target ≥ 0.65):", ""]  # fmt: skip
    header = [
        "proxy",
        "accuracy",
        "margin −|Δr|",
        "posterior / member std σ",
        "flip Φ(−|Δr|/σ)",
        "member std of Δr",
    ]
    rows = []
    for name, entry in proxies.items():
        s = entry["summary"]
        rows.append(
            [name, fmt(s["accuracy"]), *(fmt(s["auroc"][k]) if k in s["auroc"] else "—" for k in SIGNALS)]
        )
    lines += markdown_table(header, rows)
    spread = [
        (name, e["summary"]["std_spread"]) for name, e in proxies.items() if e["summary"].get("std_spread")
    ]
    if spread:
        lines += ["", "How σ varies over responses (test pairs): mean, coefficient of variation std/mean, and the "
                  "correlation of the pair σ with the margin |Δr|, rank correlation of σ with |r|:", ""]  # fmt: skip
        header = ["proxy", "mean σ", "cv of σ", "σ p10 – p90", "corr(σ, |Δr|)", "Spearman(σ, |r|)"]
        rows = [
            [name, fmt(s["mean"]), fmt(s["cv"]), f"{s['p10']['mean']:.3f} – {s['p90']['mean']:.3f}",
             fmt(s["corr_abs_margin"]), fmt(s["spearman_abs_reward"])]
            for name, s in spread
        ]  # fmt: skip
        lines += markdown_table(header, rows)
        lines += ["", "What σ follows among the candidates of a pool prompt (Spearman correlation within each "
                  "prompt, mean over prompts; then mean ± std over seeds):", ""]  # fmt: skip
        rows = [
            [name, fmt(ranks["gold"]), fmt(ranks["length"]), fmt(ranks["reward"])]
            for name, entry in proxies.items()
            if (ranks := entry["summary"].get("pool_sigma"))
        ]
        lines += markdown_table(["proxy", "σ vs gold", "σ vs response length", "σ vs reward r"], rows)
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: str) -> str:
    """Gold vs KL_BoN per proxy: plain (solid) and conservative (dashed), bands of ± std over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vrm.data.files import atomic_output

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    kl = report["kl_bon"]
    ax.plot(kl, report["oracle_gold"], ":", color="gray", label="oracle (gold picks)")
    for name, entry in report["proxies"].items():
        color = None
        for mode, style in (("plain", "-"), ("conservative", "--")):
            curve = entry["summary"][mode]
            if mode == "conservative" and not (entry["summary"]["has_std"] or name.endswith("ensemble")):
                continue
            mean = np.array([p["mean"] for p in curve])
            std = np.array([p["std"] for p in curve])
            label = name if mode == "plain" else f"{name} − λσ"
            (line,) = ax.plot(kl, mean, style, marker="o", markersize=3, color=color, label=label)
            color = line.get_color()
            ax.fill_between(kl, mean - std, mean + std, alpha=0.12, color=color)
    ax.set(xlabel="KL_BoN = log n − (n−1)/n", ylabel="gold score of the best-of-n choice",
           title=f"{report['study']} (test prompts, mean ± std over seeds)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_output(path) as staging:
        fig.savefig(staging, dpi=120)
    return path
