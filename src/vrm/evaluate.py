"""Pairwise evaluation of a reward model: accuracy overall and per `subset`, margins, uncertainty, weights.

`vrm eval --model DIR --dataset FILE ...` loads a checkpoint, tokenizes each pair exactly as at training time,
scores chosen and rejected in length-sorted batches, and reports per dataset:

* `accuracy` — fraction of pairs with r(chosen) > r(rejected); exact ties are counted apart (`ties`) and
  scored 0.5 in `accuracy_ties_half`;
* `mean_margin` — mean of r(chosen) - r(rejected); `nll` — Bradley-Terry NLL of the plug-in rewards;
* `mean_reward_std` — mean posterior standard deviation (vrm / ib);
* `objective_weights` — the mean E[w] per subset (vrm / moe), so one sees which objectives a prompt type uses.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from .data import TokenizedPair, load_preferences
from .losses import pair_nll_from_rewards
from .modeling import VRMForSequenceClassification
from .pipeline import RewardPipeline, SequenceScores, score_sequences


def score_pairs(
    model: VRMForSequenceClassification,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[SequenceScores, SequenceScores]:
    """Scores of the chosen and of the rejected responses of each pair."""
    sequences = [p.chosen_input_ids for p in pairs] + [p.rejected_input_ids for p in pairs]
    lengths = [p.prompt_length for p in pairs] * 2
    both = score_sequences(model, sequences, lengths, pad_token_id, batch_size, progress)
    n = len(pairs)

    def half(part: slice) -> SequenceScores:
        return SequenceScores(
            both.reward[part],
            both.reward_std[part],
            both.objective_weights[part],
            both.objective_scores[part],
        )

    return half(slice(0, n)), half(slice(n, 2 * n))


def pairwise_metrics(chosen: SequenceScores, rejected: SequenceScores) -> dict[str, Any]:
    """Accuracy, ties, margin, NLL, uncertainty and mean objective weights of a set of scored pairs."""
    n = int(chosen.reward.numel())
    if n == 0:
        return {"pairs": 0}
    difference = chosen.reward - rejected.reward
    wins = int((difference > 0).sum())
    ties = int((difference == 0).sum())
    return {
        "pairs": n,
        "accuracy": wins / n,
        "ties": ties,
        "accuracy_ties_half": (wins + 0.5 * ties) / n,
        "mean_margin": float(difference.mean()),
        "nll": pair_nll_from_rewards(chosen.reward, rejected.reward),
        "mean_reward_std": float(torch.cat([chosen.reward_std, rejected.reward_std]).mean()),
        "objective_weights": [round(float(v), 4) for v in chosen.objective_weights.mean(0)],
    }


def evaluate_pairs(
    model: VRMForSequenceClassification,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics overall and per subset (pairs without a subset count only overall)."""
    chosen, rejected = score_pairs(model, pairs, pad_token_id, batch_size, progress)
    report = {"overall": pairwise_metrics(chosen, rejected), "subsets": {}}
    groups: dict[str, list[int]] = defaultdict(list)
    for index, pair in enumerate(pairs):
        if pair.subset is not None:
            groups[pair.subset].append(index)
    for subset in sorted(groups):
        index = torch.tensor(groups[subset])
        report["subsets"][subset] = pairwise_metrics(_select(chosen, index), _select(rejected, index))
    return report


def _select(scores: SequenceScores, index: torch.Tensor) -> SequenceScores:
    return SequenceScores(
        scores.reward[index],
        scores.reward_std[index],
        scores.objective_weights[index],
        scores.objective_scores[index],
    )


def evaluate_model(
    model_path: str,
    datasets: Sequence[str],
    *,
    split: str = "test",
    batch_size: int = 32,
    max_rows: int | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The `vrm eval` report: one entry per dataset, each with overall and per-subset metrics."""
    pipeline = RewardPipeline.from_pretrained(model_path, max_length=max_length)
    model, tokenizer, pref_tokenizer = pipeline.model, pipeline.tokenizer, pipeline.template
    report: dict[str, Any] = {
        "model": model_path,
        "head_type": model.config.head_type,
        "num_objectives": model.config.num_objectives,
        "objective_names": model.config.objective_names,
        "datasets": {},
    }
    for source in datasets:
        examples = load_preferences(source, split=split, max_rows=max_rows)
        pairs, stats = pref_tokenizer.tokenize_pairs(examples)
        entry = evaluate_pairs(model, pairs, tokenizer.pad_token_id, batch_size, progress)
        entry["tokenization"] = asdict(stats)
        report["datasets"][source] = entry
    return report


def format_report(report: dict[str, Any]) -> str:
    """A readable table of an evaluation report (one row per dataset and subset)."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vrm eval — {report['model']} ({report['head_type']}, K={report['num_objectives']})")
    for column in ("dataset / subset", "pairs", "accuracy", "ties", "margin", "nll", "reward_std", "E[w]"):
        table.add_column(
            column, justify="left" if column.startswith("dataset") or column == "E[w]" else "right"
        )

    def row(name: str, m: dict[str, Any]) -> None:
        if not m.get("pairs"):
            table.add_row(name, "0", "-", "-", "-", "-", "-", "-")
            return
        weights = (
            " ".join(f"{w:.2f}" for w in m["objective_weights"]) if len(m["objective_weights"]) > 1 else "-"
        )
        table.add_row(
            name,
            str(m["pairs"]),
            f"{m['accuracy']:.3f}",
            str(m["ties"]),
            f"{m['mean_margin']:.3f}",
            f"{m['nll']:.3f}" if not math.isnan(m["nll"]) else "nan",
            f"{m['mean_reward_std']:.3f}",
            weights,
        )

    for source, entry in report["datasets"].items():
        row(os.path.basename(source), entry["overall"])
        for subset, metrics in entry["subsets"].items():
            row(f"  {subset}", metrics)
    buffer = StringIO()
    Console(file=buffer, width=140, force_terminal=False).print(table)
    return buffer.getvalue()


def write_json(data: Any, path: str) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    staging = f"{path}.tmp"
    with open(staging, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    os.replace(staging, path)
