"""Best-of-N overoptimization: how the gold score of the proxy's best-of-n choice moves as n grows.

    vrm bench bon --proxy runs/vrm --proxy runs/bt --pool pool.jsonl --gold_model runs/gold \\
        --n 1 2 4 8 16 32 --output bon.json --plot bon.png

A pool file has one row per prompt with its candidate responses, and optionally gold scores:

    {"prompt": "...", "responses": ["...", "...", ...], "gold_scores": [0.3, 1.2, ...]}

(`prompt` may be chat messages; `--gold_column` names the gold-score column, `--gold_model` scores the
candidates with another reward model instead.) For each proxy and n, the expected gold and proxy scores of the
proxy's best of n candidates are computed exactly over all n-subsets of each pool (`vrm.evaluation.metrics.best_of_n`,
the unbiased estimator of Gao et al., 2022), averaged over prompts, and reported against
KL_BoN = log n - (n - 1) / n. Proxy scores are standardized per model (over all candidates) so that several
proxies share one axis; gold scores are used as they are. With `--conservative_lambda L` each proxy ranks the
candidates by the conservative reward `reward - L * reward_std` (`vrm.scoring.conservative`; a proxy without a
posterior has std 0 and ranks as before), so curves with and without it show what pessimism buys against
over-optimization.

Build a pool from your own samples by writing such rows, or from a preference file in which many generators
answered the same prompts (e.g. AlpacaEval annotations: `vrm bench bon --build_pool pairs.jsonl.gz --output
pool.jsonl` collects the distinct responses to each prompt).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from vrm.data.files import DataFormatError, atomic_output, finite_number, read_records
from vrm.data.rows import check_text_or_messages
from vrm.evaluation.metrics import best_of_n, kl_bon
from vrm.scoring.conservative import conservative_reward


def read_pool(path: str, gold_column: str | None = None) -> list[dict[str, Any]]:
    """Rows with `prompt` and at least 2 `responses` (and gold scores of the same length if asked for)."""
    pool = []
    for location, row in read_records(path):
        responses = row.get("responses")
        if row.get("prompt") is None or not isinstance(responses, list) or len(responses) < 2:
            raise DataFormatError(
                f"{location}: a pool row needs 'prompt' and a list of at least 2 'responses'"
            )
        check_text_or_messages(row["prompt"], location, "prompt")
        for index, response in enumerate(responses):
            check_text_or_messages(response, location, f"responses[{index}]")
        if gold_column is not None:
            gold = row.get(gold_column)
            if not isinstance(gold, list) or len(gold) != len(responses):
                raise DataFormatError(f"{location}: '{gold_column}' must list one gold score per response")
            for index, value in enumerate(gold):  # a NaN gold score would make the whole curve NaN
                if value is None:
                    raise DataFormatError(f"{location}: '{gold_column}[{index}]' must be a number, got None")
                finite_number(value, location, f"{gold_column}[{index}]")
        pool.append(row)
    if not pool:
        raise DataFormatError(f"{path}: no pool rows")
    return pool


def build_pool(pairs_path: str, output_path: str, min_candidates: int = 2) -> int:
    """Group a preference file's responses by prompt into a pool file; returns the number of prompts kept."""
    groups: dict[str, list[str]] = {}
    for location, row in read_records(pairs_path):
        if not isinstance(row.get("prompt"), str):
            raise DataFormatError(f"{location}: building a pool needs text prompts")
        candidates = groups.setdefault(row["prompt"], [])
        for column in ("chosen", "rejected"):
            if isinstance(row.get(column), str) and row[column] not in candidates:
                candidates.append(row[column])
    kept = 0
    with atomic_output(output_path) as staging, open(staging, "w", encoding="utf-8") as handle:
        for prompt, responses in groups.items():
            if len(responses) >= min_candidates:
                handle.write(json.dumps({"prompt": prompt, "responses": responses}) + "\n")
                kept += 1
    return kept


def score_pool(
    scorer, pool: list[dict[str, Any]], progress: bool = True, conservative_lambda: float = 0.0
) -> list[np.ndarray]:
    """One array of rewards per prompt (all candidates scored in one batched call); with
    `conservative_lambda > 0` the conservative rewards `reward - conservative_lambda * reward_std`."""
    prompts = [row["prompt"] for row in pool for _ in row["responses"]]
    responses = [response for row in pool for response in row["responses"]]
    scores = scorer.score(prompts, responses, progress=progress)
    rewards = conservative_reward(scores.reward, scores.reward_std, conservative_lambda).numpy()
    if not np.isfinite(rewards).all():
        raise ValueError("the scorer produced NaN or infinite rewards")
    out, start = [], 0
    for row in pool:
        out.append(rewards[start : start + len(row["responses"])])
        start += len(row["responses"])
    return out


def bon_curve(proxy: list[np.ndarray], gold: list[np.ndarray], ns: Sequence[int]) -> list[dict[str, float]]:
    """Mean expected gold and proxy score of best-of-n over prompts, for each n (prompts with < n candidates
    are left out of that n's mean and counted)."""
    flat = np.concatenate(proxy)
    centre, scale = float(flat.mean()), float(flat.std()) or 1.0
    curve = []
    for n in ns:
        golds, proxies = [], []
        for p, g in zip(proxy, gold, strict=True):
            if len(p) >= n:
                expected_gold, expected_proxy = best_of_n(p, g, n)
                golds.append(expected_gold)
                proxies.append((expected_proxy - centre) / scale)
        curve.append(
            {
                "n": n,
                "kl_bon": kl_bon(n),
                "prompts": len(golds),
                "gold": float(np.mean(golds)) if golds else float("nan"),
                "gold_sem": float(np.std(golds) / np.sqrt(len(golds))) if len(golds) > 1 else float("nan"),
                "proxy": float(np.mean(proxies)) if proxies else float("nan"),
            }
        )
    return curve


def plot_curves(results: dict[str, list[dict[str, float]]], path: str) -> str:
    """Gold (solid) and standardized proxy (dashed) score against KL_BoN, one colour per proxy model."""
    # a Figure on its own Agg canvas: no pyplot, no global backend switch (library code leaves matplotlib's
    # state to the application)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax_gold, ax_proxy = fig.subplots(1, 2)
    for name, curve in results.items():
        kl = [point["kl_bon"] for point in curve]
        gold = [point["gold"] for point in curve]
        sem = [point["gold_sem"] for point in curve]
        (line,) = ax_gold.plot(kl, gold, marker="o", label=name)
        ax_gold.fill_between(
            kl, np.subtract(gold, sem), np.add(gold, sem), alpha=0.15, color=line.get_color()
        )
        ax_proxy.plot(
            kl,
            [point["proxy"] for point in curve],
            marker="o",
            linestyle="--",
            color=line.get_color(),
            label=name,
        )
    ax_gold.set(xlabel="KL_BoN = log n - (n-1)/n", ylabel="gold score of the best-of-n choice", title="gold")
    ax_proxy.set(xlabel="KL_BoN", ylabel="proxy score (standardized)", title="proxy")
    for ax in (ax_gold, ax_proxy):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as staging:
        fig.savefig(staging, dpi=120)
    return path
