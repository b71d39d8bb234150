"""Best-of-k evaluation: one prompt, its correct answer(s) and a list of losing answers.

Row format (RewardBench 2, RMB's best-of-n): `prompt` (text or messages), `chosen` one answer (text, or a message
list such as `[{"role": "assistant", ...}]`) or a list of correct answers, `rejected` a list of losing answers
(texts or message lists); optional `subset` and `id`. Every answer is scored once; per prompt,

* `accuracy` (best-of-k) — every chosen answer scores strictly above every loser; `ties` counts prompts whose
  worst chosen answer ties the best loser, and `accuracy_ties_shared` scores such a prompt 1/m (m answers at
  the top), as RewardBench 2 does; `chance` is the accuracy of random scores (1 / C(k, #chosen));
* `pairwise_accuracy` — over all (chosen, loser) pairs (`pairs` of them);
* `mean_margin` — mean over prompts of worst chosen - best loser; `mean_reward_std`, `objective_weights`.

Reported overall and per subset; RewardBench 2 files also get its subset scores (`vrm.evaluation.benchmark_rules`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from vrm.data.examples import Text
from vrm.data.files import DataFormatError
from vrm.data.rows import check_text_or_messages
from vrm.data.tokenization import TruncationStats
from vrm.evaluation.benchmark_rules import (
    REWARDBENCH2_SUBSETS,
    is_response_list,
    is_rewardbench2_subset,
    rewardbench2_ties_score,
)
from vrm.evaluation.report import BestOfKMetrics
from vrm.evaluation.rows import InvalidRows
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.scores import SequenceScores, score_sequences


@dataclass
class BestOfKExample:
    prompt: Text
    chosen: list[Text]
    rejected: list[Text]
    subset: str | None = None
    id: str | None = None
    location: str = ""


def _text(value: Text) -> str:
    return value if isinstance(value, str) else "".join(m["content"] for m in value)


def _answers(value: Any, location: str, column: str, single_allowed: bool) -> list[Text]:
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], dict)):
        if not single_allowed:
            raise DataFormatError(f"{location}: '{column}' must be a list of answers")
        return [check_text_or_messages(value, location, column)]
    if not is_response_list(value):
        raise DataFormatError(f"{location}: '{column}' must be an answer or a non-empty list of answers")
    return [check_text_or_messages(v, location, f"{column}[{i}]") for i, v in enumerate(value)]


def parse_best_of_k_row(row: dict[str, Any], location: str) -> BestOfKExample:
    """A best-of-k row, or a `DataFormatError` naming it; empty answers are kept (they are bad answers)."""
    for column in ("prompt", "chosen", "rejected"):
        if row.get(column) is None:
            raise DataFormatError(f"{location}: missing field '{column}' (a best-of-k row needs all three)")
    prompt = check_text_or_messages(row["prompt"], location, "prompt")
    chosen = _answers(row["chosen"], location, "chosen", single_allowed=True)
    rejected = _answers(row["rejected"], location, "rejected", single_allowed=False)
    if not any(_text(t) for t in (prompt, *chosen, *rejected)):
        raise DataFormatError(f"{location}: no text at all (prompt and answers empty)")
    subset = row.get("subset")
    return BestOfKExample(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        subset=None if subset is None else str(subset),
        id=None if row.get("id") is None else str(row["id"]),
        location=location,
    )


def score_answers(scorer, prompts: Sequence[Text], responses: Sequence[Text], progress: bool):
    """Scores of (prompt, response) pairs and, for vrm models, how many were truncated to fit `max_length`."""
    if not isinstance(scorer, RewardPipeline):  # a reward model that is not vrm's: its own truncation
        return scorer.score(prompts, responses, progress=progress), None
    template = scorer.template
    stats = TruncationStats(pairs=len(prompts), kept=len(prompts))
    sequences, lengths = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt_ids, response_ids = template.encode_parts(prompt, response)
        if len(prompt_ids) + len(response_ids) > template.max_length:
            sizes = len(prompt_ids), len(response_ids)
            prompt_ids, response_ids = template.fit(prompt_ids, response_ids)
            stats.prompt_truncated += len(prompt_ids) < sizes[0]
            stats.response_truncated += len(response_ids) < sizes[1]
        sequences.append(prompt_ids + response_ids)
        lengths.append(len(prompt_ids))
    scores = score_sequences(
        scorer.model,
        sequences,
        lengths,
        scorer.tokenizer.pad_token_id,
        scorer.batch_size,
        progress,
        embedding_cache=scorer.embedding_cache,
        world=scorer.world,
    )
    return scores, stats


def best_of_k_metrics(
    chosen: Sequence[np.ndarray], rejected: Sequence[np.ndarray], scores: SequenceScores | None = None
) -> dict[str, Any]:
    """Best-of-k and pairwise metrics from per-prompt arrays of chosen and loser rewards (module doc)."""
    n = len(chosen)
    if n == 0:
        return {"prompts": 0}
    correct = ties = pairs = pair_wins = 0
    shared, margins, chance = 0.0, [], 0.0
    for good, bad in zip(chosen, rejected, strict=True):
        worst, best_loser = float(good.min()), float(bad.max())
        correct += worst > best_loser
        ties += worst == best_loser
        margins.append(worst - best_loser)
        everything = np.concatenate([good, bad])
        top = everything.max()
        if good.size == 1:  # RewardBench 2: 1 / (answers sharing the top score) when the chosen one is there
            shared += 1.0 / float((everything == top).sum()) if good[0] == top else 0.0
        else:
            shared += worst > best_loser
        pair_wins += int((good[:, None] > bad[None, :]).sum())
        pairs += good.size * bad.size
        chance += 1.0 / math.comb(good.size + bad.size, good.size)
    out: dict[str, Any] = {
        "prompts": n,
        "accuracy": correct / n,
        "ties": ties,
        "accuracy_ties_shared": shared / n,
        "chance": chance / n,
        "mean_candidates": float(np.mean([g.size + b.size for g, b in zip(chosen, rejected, strict=True)])),
        "pairs": pairs,
        "pairwise_accuracy": pair_wins / pairs,
        "mean_margin": float(np.mean(margins)),
    }
    if scores is not None:
        out["mean_reward_std"] = float(scores.reward_std.mean())
        out["objective_weights"] = [round(float(v), 4) for v in scores.objective_weights.mean(0)]
    return out


def category_of(subset: str) -> str:
    """The top-level category of a hierarchical subset name (`Helpfulness/Code/...` -> `Helpfulness`)."""
    return subset.split("/", 1)[0]


def rollup_categories(subsets: Mapping[str, BestOfKMetrics]) -> dict[str, BestOfKMetrics] | None:
    """Per top-level category of hierarchical subset names (RMB's `Helpfulness/Chat/...`), the metrics of all its
    prompts, or None when no name has a `/`.

    Exact, not an average of averages: every metric is a mean over prompts (accuracy, chance, margin, ...), over
    answers (`mean_reward_std`, `objective_weights`) or over pairs (`pairwise_accuracy`), or a count, so the
    category's value is the leaves' weighted by their prompts, answers or pairs."""
    if not any("/" in name for name in subsets):
        return None
    groups: dict[str, list[BestOfKMetrics]] = defaultdict(list)
    for name, metrics in subsets.items():
        if metrics.prompts:
            groups[category_of(name)].append(metrics)
    return {category: _pooled(leaves) for category, leaves in sorted(groups.items())}


def _prompt_count(m: BestOfKMetrics) -> float:
    return m.prompts


def _answer_count(m: BestOfKMetrics) -> float:
    return m.prompts * (m.mean_candidates or 0.0)


def _pair_count(m: BestOfKMetrics) -> float:
    return m.pairs or 0


def _pooled(leaves: Sequence[BestOfKMetrics]) -> BestOfKMetrics:
    """The metrics of the union of the leaves' prompts (`rollup_categories`)."""

    def mean(name: str, weight) -> float | None:
        known = [(getattr(m, name), weight(m)) for m in leaves if getattr(m, name) is not None]
        total = sum(w for _, w in known)
        return sum(v * w for v, w in known) / total if total else None

    weighted = [m for m in leaves if m.objective_weights is not None and _answer_count(m)]
    objective_weights = None
    if weighted:
        total = sum(_answer_count(m) for m in weighted)
        objective_weights = [
            sum(m.objective_weights[k] * _answer_count(m) for m in weighted) / total
            for k in range(len(weighted[0].objective_weights))
        ]
    return BestOfKMetrics(
        prompts=sum(m.prompts for m in leaves),
        accuracy=mean("accuracy", _prompt_count),
        ties=sum(m.ties or 0 for m in leaves),
        accuracy_ties_shared=mean("accuracy_ties_shared", _prompt_count),
        chance=mean("chance", _prompt_count),
        mean_candidates=mean("mean_candidates", _prompt_count),
        pairs=int(sum(_pair_count(m) for m in leaves)),
        pairwise_accuracy=mean("pairwise_accuracy", _pair_count),
        mean_margin=mean("mean_margin", _prompt_count),
        mean_reward_std=mean("mean_reward_std", _answer_count),
        objective_weights=objective_weights,
    )


def evaluate_best_of_k(
    scorer, rows: Sequence[tuple[str, dict[str, Any]]], invalid: InvalidRows, progress: bool = True
) -> dict[str, Any]:
    """The report entry of a best-of-k file (convention `best-of-k` or `rewardbench2`); bad rows go to
    `invalid`."""
    examples: list[BestOfKExample] = []
    for location, row in rows:
        try:
            examples.append(parse_best_of_k_row(row, location))
        except DataFormatError as err:
            invalid.add(location, str(err).removeprefix(f"{location}: "))
    if not examples:
        raise DataFormatError("no usable best-of-k rows")
    prompts, responses, owner = [], [], []
    for index, example in enumerate(examples):
        for side, answers in ((0, example.chosen), (1, example.rejected)):
            for answer in answers:
                prompts.append(example.prompt)
                responses.append(answer)
                owner.append((index, side))
    scores, stats = score_answers(scorer, prompts, responses, progress)
    rewards = scores.reward.double().numpy()
    per_prompt: list[tuple[list[float], list[float]]] = [([], []) for _ in examples]
    rows_of: list[list[int]] = [[] for _ in examples]
    for position, (index, side) in enumerate(owner):
        per_prompt[index][side].append(float(rewards[position]))
        rows_of[index].append(position)
    good = [np.asarray(c) for c, _ in per_prompt]
    bad = [np.asarray(r) for _, r in per_prompt]

    def metrics(indices: list[int]) -> dict[str, Any]:
        positions = torch.tensor([p for i in indices for p in rows_of[i]])
        return best_of_k_metrics(
            [good[i] for i in indices], [bad[i] for i in indices], scores.select(positions)
        )

    groups: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        if example.subset is not None:
            groups[example.subset].append(index)
    rb2 = bool(groups) and all(is_rewardbench2_subset(s) for s in groups)
    entry: dict[str, Any] = {
        "convention": "rewardbench2" if rb2 else "best-of-k",
        "overall": metrics(list(range(len(examples)))),
        "subsets": {name: metrics(groups[name]) for name in sorted(groups)},
    }
    if stats is not None:
        entry["tokenization"] = asdict(stats)
    if rb2:
        entry["rewardbench2"] = rewardbench2_scores(examples, good, bad, groups, entry["subsets"])
    return entry


def rewardbench2_scores(examples, good, bad, groups, subsets) -> dict[str, Any]:
    """RewardBench 2's subset scores (ties shared at the top; Ties by its composite score) and their mean.

    The mean is the RewardBench 2 `score` only when all six subsets are present; otherwise `score` is None, the
    mean of the subsets present is `partial_mean`, and `note` says "partial: N of 6 subsets"."""
    canonical = {s.lower(): s for s in REWARDBENCH2_SUBSETS}
    scores: dict[str, float] = {}
    details: dict[str, Any] = {}
    for name, indices in groups.items():
        label = canonical[name.lower()]
        if label == "Ties":
            try:
                ties = rewardbench2_ties_score(
                    [(examples[i].id, list(good[i]), list(bad[i])) for i in indices]
                )
            except ValueError as err:  # no ref/tied ids: plain best-of-k accuracy, and say so
                details["Ties"] = f"scored as best-of-k accuracy: {err}"
                scores[label] = subsets[name]["accuracy_ties_shared"]
                continue
            details["Ties"] = ties
            scores[label] = ties["score"]
        else:
            scores[label] = subsets[name]["accuracy_ties_shared"]
    ordered = {s: scores[s] for s in REWARDBENCH2_SUBSETS if s in scores}
    result: dict[str, Any] = {"subsets": ordered, "details": details}
    if len(ordered) < len(REWARDBENCH2_SUBSETS):  # not the leaderboard's score: do not present it as one
        result["score"] = None
        result["partial_mean"] = float(np.mean(list(ordered.values()))) if ordered else float("nan")
        result["note"] = f"partial: {len(ordered)} of {len(REWARDBENCH2_SUBSETS)} subsets"
    else:
        result["score"] = float(np.mean(list(ordered.values())))
    return result
