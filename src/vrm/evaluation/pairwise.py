"""Pairwise evaluation of a reward model: accuracy overall and per `subset`, margins, uncertainty, weights.

`vrm eval --model DIR --dataset FILE ...` loads a checkpoint, tokenizes each pair exactly as at training time,
scores chosen and rejected in length-sorted batches, and reports per dataset:

* `accuracy` — fraction of pairs with r(chosen) > r(rejected); exact ties are counted apart (`ties`) and
  scored 0.5 in `accuracy_ties_half`;
* `mean_margin` — mean of r(chosen) - r(rejected); `nll` — Bradley-Terry NLL of the plug-in rewards;
* `brier`, `ece` — calibration of P(chosen > rejected) = sigmoid(r+ - r-) (see `vrm.evaluation.metrics`);
* `predictive_nll`, `predictive_brier`, `predictive_ece` — the same for the predictive probability integrated
  over the posterior, sigmoid((r+ - r-) / (T sqrt(1 + pi s^2 / 8))), s^2 = std+^2 + std-^2, with the
  checkpoint's `calibration_temperature` T (`vrm.evaluation.calibration`; `vrm calibrate` fits T);
* `mean_reward_std` — mean posterior standard deviation (vrm / ib), and where it is non-zero the
  `selective_accuracy` curve (abstaining on the most uncertain pairs) and `uncertainty_error_auroc`;
  `error_auroc` compares that std with the plug-in margin and the posterior flip probability as detectors
  of errors (`vrm.evaluation.metrics.error_detection`): an uncertainty is only useful if it beats the margin;
* `length_bias` — Spearman(reward, length), accuracy when the chosen response is longer / shorter, and the
  accuracy of "the longer response wins" on the same pairs;
* `objective_weights` — the mean E[w] per subset (vrm / moe), so one sees which objectives a prompt type uses.

RM-Bench files go to `evaluate_rm_bench`, best-of-k files (RMB best-of-n, RewardBench 2) to `vrm.evaluation.best_of_k`. Rows
are read leniently (`vrm.evaluation.rows`): unusable ones are skipped and listed in the entry's `invalid_rows`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from vrm.data.examples import PreferenceExample
from vrm.data.files import DataFormatError
from vrm.data.rows import check_text_or_messages, parse_row
from vrm.data.state_cache import EmbeddingCache
from vrm.data.tokenization import TokenizedPair
from vrm.evaluation.benchmark_rules import (
    RM_BENCH_VARIANTS,
    detect_format,
    is_response_list,
    rewardbench_sections,
    rm_bench_row_problem,
    rm_bench_scores,
)
from vrm.evaluation.best_of_k import evaluate_best_of_k
from vrm.evaluation.calibration import predictive_calibration
from vrm.evaluation.metrics import (
    calibration,
    error_detection,
    length_bias,
    pair_probabilities,
    selective_accuracy,
)
from vrm.evaluation.report import DatasetReport, EvalReport
from vrm.evaluation.rows import InvalidRows, describe_invalid, read_eval_rows
from vrm.models.modeling import VRMForSequenceClassification
from vrm.scoring.data_parallel import ScoringWorld
from vrm.scoring.loading import load_scorer
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.scores import SequenceScores, score_sequences


def score_pairs(
    model: VRMForSequenceClassification,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    batch_size: int = 32,
    progress: bool = True,
    embedding_cache: EmbeddingCache | None = None,
    world: ScoringWorld | None = None,
) -> tuple[SequenceScores, SequenceScores]:
    """Scores of the chosen and of the rejected responses of each pair (shared by the processes of a
    data-parallel `world`)."""
    sequences = [p.chosen_input_ids for p in pairs] + [p.rejected_input_ids for p in pairs]
    lengths = [p.prompt_length for p in pairs] * 2
    both = score_sequences(
        model,
        sequences,
        lengths,
        pad_token_id,
        batch_size,
        progress,
        embedding_cache=embedding_cache,
        world=world,
    )
    n = len(pairs)
    return both.select(slice(0, n)), both.select(slice(n, 2 * n))


def score_examples(
    scorer: RewardPipeline,
    examples: Sequence[PreferenceExample],
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[SequenceScores, SequenceScores]:
    """`score_pairs` of preference examples, tokenized and scored as `scorer` (a vrm `RewardPipeline`) reads
    them, its embedding cache included."""
    pairs, _ = scorer.template.tokenize_pairs(examples)
    pad, cache = scorer.tokenizer.pad_token_id, scorer.embedding_cache
    return score_pairs(scorer.model, pairs, pad, batch_size, progress, embedding_cache=cache)


def pairwise_metrics(
    chosen: SequenceScores,
    rejected: SequenceScores,
    length_chosen: torch.Tensor | None = None,
    length_rejected: torch.Tensor | None = None,
    temperature: float = 1.0,
    extra_uncertainty: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Accuracy, ties, margin, calibration, uncertainty quality, length bias and mean objective weights.

    `temperature` is the T of the predictive probability (`predictive_*` keys; see `vrm.evaluation.calibration`).
    `extra_uncertainty` maps names to per-pair uncertainties (e.g. an ensemble's `ensemble_std`), reported in
    `error_auroc` beside margin, std and flip (and as columns of the terminal's error-detection table).
    """
    n = int(chosen.reward.numel())
    if n == 0:
        return {"pairs": 0}
    difference = chosen.reward - rejected.reward
    wins = int((difference > 0).sum())
    ties = int((difference == 0).sum())
    calibrated = calibration(pair_probabilities(chosen.reward.numpy(), rejected.reward.numpy()))
    out = {
        "pairs": n,
        "accuracy": wins / n,
        "ties": ties,
        "accuracy_ties_half": (wins + 0.5 * ties) / n,
        "mean_margin": float(difference.mean()),
        "nll": pair_nll_from_rewards(chosen.reward, rejected.reward),
        "brier": calibrated["brier"],
        "ece": calibrated["ece"],
        "calibration_bins": calibrated["bins"],
        **_predictive(chosen, rejected, temperature),
        "mean_reward_std": float(torch.cat([chosen.reward_std, rejected.reward_std]).mean()),
        "objective_weights": [round(float(v), 4) for v in chosen.objective_weights.mean(0)],
    }
    # which signal flags the errors: the margin (any model), the posterior std, the flip probability
    out["error_auroc"] = error_detection(
        chosen.reward.numpy(),
        rejected.reward.numpy(),
        chosen.reward_std.numpy(),
        rejected.reward_std.numpy(),
        *_epistemic_stds(chosen, rejected),
        extra_signals=extra_uncertainty,
    )
    if chosen.epistemic_std is not None:  # an ensemble: the members' disagreement, apart
        out["mean_epistemic_std"] = float(torch.cat([chosen.epistemic_std, rejected.epistemic_std]).mean())
    pair_std = ((chosen.reward_std**2 + rejected.reward_std**2) / 2).sqrt()
    if bool((pair_std > 0).any()):  # uncertainty of the pair's decision
        correct = (difference > 0).float().numpy()
        out["selective_accuracy"] = selective_accuracy(correct, pair_std.numpy())
        out["uncertainty_error_auroc"] = out["error_auroc"]["std"]
    if length_chosen is not None and length_rejected is not None:
        out["length_bias"] = length_bias(
            chosen.reward.numpy(), rejected.reward.numpy(), length_chosen.numpy(), length_rejected.numpy()
        )
    return out


def _epistemic_stds(chosen: SequenceScores, rejected: SequenceScores) -> tuple:
    """An ensemble's epistemic stds of chosen and rejected and its members' margins (numpy), or nothing for a
    single model."""
    if chosen.epistemic_std is None or rejected.epistemic_std is None:
        return ()
    margins = (chosen.member_rewards - rejected.member_rewards).numpy()
    return chosen.epistemic_std.numpy(), rejected.epistemic_std.numpy(), margins


def evaluate_pairs(
    model: VRMForSequenceClassification,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    batch_size: int = 32,
    progress: bool = True,
    embedding_cache: EmbeddingCache | None = None,
    temperature: float | None = None,
    world: ScoringWorld | None = None,
) -> dict[str, Any]:
    """Metrics of a vrm model on tokenized pairs, overall and per subset (response lengths in tokens).

    `temperature` defaults to the model config's `calibration_temperature`.
    """
    if temperature is None:
        temperature = getattr(model.config, "calibration_temperature", 1.0)
    chosen, rejected = score_pairs(
        model, pairs, pad_token_id, batch_size, progress, embedding_cache, world=world
    )
    length_chosen = [len(p.chosen_input_ids) - p.prompt_length for p in pairs]
    length_rejected = [len(p.rejected_input_ids) - p.prompt_length for p in pairs]
    subsets = [p.subset for p in pairs]
    return metrics_by_subset(chosen, rejected, length_chosen, length_rejected, subsets, temperature)


def metrics_by_subset(
    chosen: SequenceScores,
    rejected: SequenceScores,
    length_chosen: Sequence[float],
    length_rejected: Sequence[float],
    subsets: Sequence[str | None],
    temperature: float = 1.0,
) -> dict[str, Any]:
    """`pairwise_metrics` overall and per subset (pairs without a subset count only overall)."""
    length_chosen = torch.tensor(length_chosen, dtype=torch.float32)
    length_rejected = torch.tensor(length_rejected, dtype=torch.float32)
    overall = pairwise_metrics(chosen, rejected, length_chosen, length_rejected, temperature)
    report = {"overall": overall, "subsets": {}}
    groups: dict[str, list[int]] = defaultdict(list)
    for index, subset in enumerate(subsets):
        if subset is not None:
            groups[subset].append(index)
    for subset in sorted(groups):
        index = torch.tensor(groups[subset])
        report["subsets"][subset] = pairwise_metrics(
            chosen.select(index),
            rejected.select(index),
            length_chosen[index],
            length_rejected[index],
            temperature,
        )
    return report


def _predictive(chosen: SequenceScores, rejected: SequenceScores, temperature: float) -> dict[str, float]:
    """NLL / Brier / ECE of the predictive probability (`vrm.evaluation.calibration`), as `predictive_*` keys."""
    margin = (chosen.reward - rejected.reward).double().numpy()
    std = (chosen.reward_std.double() ** 2 + rejected.reward_std.double() ** 2).sqrt().numpy()
    return {f"predictive_{k}": v for k, v in predictive_calibration(margin, std, temperature).items()}


def evaluate_examples(scorer, examples: Sequence[PreferenceExample], progress: bool = True) -> dict[str, Any]:
    """Metrics of any scorer with a `score(prompts, responses)` method (e.g. a non-vrm reward model)."""
    prompts = [e.prompt for e in examples]
    chosen = scorer.score(prompts, [e.chosen for e in examples], progress=progress)
    rejected = scorer.score(prompts, [e.rejected for e in examples], progress=progress)

    def length(response) -> int:
        text = response if isinstance(response, str) else "".join(m["content"] for m in response)
        return len(scorer.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)

    return metrics_by_subset(
        chosen,
        rejected,
        [length(e.chosen) for e in examples],
        [length(e.rejected) for e in examples],
        [e.subset for e in examples],
    )


def _check_finite(entry: dict[str, Any], source: str) -> None:
    """NaN or infinite rewards make every number meaningless: say so instead of reporting them."""
    overall = entry.get("overall", {})
    values = [overall.get("mean_margin"), overall.get("nll"), overall.get("average")]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values if v is not None):
        raise ValueError(f"{source}: the model produced NaN or infinite rewards; no metrics reported")


def evaluate_model(
    model_path: str | Sequence[str],
    datasets: Sequence[str],
    *,
    split: str = "test",
    batch_size: int = 32,
    max_rows: int | None = None,
    max_length: int | None = None,
    progress: bool = True,
    embedding_cache: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    world: ScoringWorld | None = None,
) -> EvalReport:
    """The `vrm eval` report (`vrm.evaluation.report.EvalReport`): one entry per dataset, each with overall and
    per-subset metrics.

    `model_path` is a vrm checkpoint or any `AutoModelForSequenceClassification` reward model. An
    `embedding_cache` directory serves (and stores) the backbone states of models trained with a frozen backbone.
    `max_rows` takes the first rows of each dataset, `sample` a stratified sample (by subset, seeded by `seed`;
    see `vrm.evaluation.rows`). Rows that cannot be used are skipped and listed in each entry's `invalid_rows`.
    `device` / `dtype` default to `auto` (`vrm.scoring.device`); `trust_remote_code` is for non-vrm models with own code.
    Several paths are evaluated as one deep ensemble (`vrm.scoring.deep_ensemble`; report `model`: "a + b").
    A `world` of several processes (`vrm.scoring.data_parallel`; `torchrun` / `accelerate launch`) shares the
    scoring: each process scores its part of every dataset on its own device and all of them return the same
    report, which a one-process run returns (scores to float rounding).
    """
    world = world or ScoringWorld()
    kwargs: dict[str, Any] = {"batch_size": batch_size, "embedding_cache": embedding_cache, "world": world}
    kwargs.update(device=world.device(device), dtype=dtype, trust_remote_code=trust_remote_code)
    if max_length:
        kwargs["max_length"] = max_length
    scorer = load_scorer(model_path, **kwargs)
    is_vrm = isinstance(scorer, RewardPipeline)
    config = scorer.model.config
    report = EvalReport(
        model=model_path if isinstance(model_path, str) else " + ".join(model_path),
        head_type=config.head_type if is_vrm else f"{config.model_type} sequence classifier",
        num_objectives=config.num_objectives if is_vrm else 1,
        objective_names=config.objective_names if is_vrm else None,
        calibration_temperature=getattr(config, "calibration_temperature", 1.0) if is_vrm else None,
    )
    if not isinstance(model_path, str) and len(model_path) > 1:
        report.ensemble = {"kind": "deep", "members": list(model_path)}
    elif is_vrm and config.ensemble_members > 1:
        report.ensemble = {"kind": "multi-head", "members": config.ensemble_members}
    for source in datasets:
        rows, invalid = read_eval_rows(source, split, max_rows=max_rows, sample=sample, seed=seed)
        if not rows:
            raise DataFormatError(f"{source}: no rows to evaluate ({len(invalid)} unreadable)")
        convention = detect_format([row for _, row in rows], strict=False)
        try:
            if convention in ("best-of-k", "rewardbench2"):
                entry = evaluate_best_of_k(scorer, rows, invalid, progress)
            elif convention == "rm-bench":
                entry = evaluate_rm_bench(scorer, _rm_bench_rows(rows, invalid), progress)
        except DataFormatError as err:
            raise DataFormatError(f"{source}: {err}{_why(invalid)}") from None
        if convention not in ("best-of-k", "rewardbench2", "rm-bench"):
            examples = _pairs(rows, invalid)
            if not examples:
                raise DataFormatError(f"{source}: no usable preference rows{_why(invalid)}")
            if is_vrm:
                pairs, stats = scorer.template.tokenize_pairs(examples)
                if not pairs:
                    raise ValueError(f"{source}: no pairs left after tokenization ({stats.summary()})")
                metrics = evaluate_pairs(
                    scorer.model,
                    pairs,
                    scorer.tokenizer.pad_token_id,
                    batch_size,
                    progress,
                    scorer.embedding_cache,
                    world=world,
                )
                entry = {"convention": convention, **metrics, "tokenization": asdict(stats)}
            else:
                entry = {"convention": convention, **evaluate_examples(scorer, examples, progress)}
            if convention == "rewardbench":
                accuracy = {name: m["accuracy"] for name, m in entry["subsets"].items()}
                counts = {name: m["pairs"] for name, m in entry["subsets"].items()}
                entry["rewardbench"] = rewardbench_sections(accuracy, counts)
        entry["invalid_rows"] = invalid.as_dict()
        _check_finite(entry, source)
        entry["max_rows"], entry["sample"], entry["seed"] = max_rows, sample, seed  # which rows were scored
        report.datasets[source] = DatasetReport.from_dict(entry, source)
    return report


def _why(invalid: InvalidRows) -> str:
    described = describe_invalid({"invalid_rows": invalid.as_dict()})
    return f" ({described})" if described else ""


def _pairs(rows: list[tuple[str, dict[str, Any]]], invalid: InvalidRows) -> list[PreferenceExample]:
    """Preference pairs of the usable rows; empty answers are scored, rows without any text are skipped."""
    examples = []
    for location, row in rows:
        try:
            if is_response_list(row.get("rejected")):
                raise DataFormatError(
                    f"{location}: a best-of-k row (a list of rejected answers) in a pairwise file"
                )
            example = parse_row(row, location, allow_empty=True)
            if not any(_text(t) for t in (example.prompt, example.chosen, example.rejected)):
                raise DataFormatError(f"{location}: no text at all (prompt and responses empty)")
        except DataFormatError as err:
            invalid.add(location, str(err).removeprefix(f"{location}: "))
            continue
        examples.append(example)
    return examples


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(m["content"] for m in value)


def _rm_bench_rows(rows: list[tuple[str, dict[str, Any]]], invalid: InvalidRows) -> list[dict[str, Any]]:
    """The well-formed RM-Bench rows (a prompt, 3 chosen and 3 rejected texts); the others go to `invalid`."""
    good = []
    for location, row in rows:
        try:
            check_text_or_messages(row.get("prompt"), location, "prompt")
            problem = rm_bench_row_problem(row)
            if problem:
                raise DataFormatError(f"{location}: {problem}")
        except DataFormatError as err:
            invalid.add(location, str(err).removeprefix(f"{location}: "))
            continue
        good.append(row)
    if not good:
        raise DataFormatError("no usable RM-Bench rows")
    return good


def evaluate_rm_bench(scorer, rows: list[dict[str, Any]], progress: bool = True) -> dict[str, Any]:
    """RM-Bench's convention (see `vrm.evaluation.benchmark_rules`): 3 chosen x 3 rejected style variants per prompt."""
    variants = RM_BENCH_VARIANTS
    prompts = [row["prompt"] for row in rows for _ in range(2 * variants)]
    responses = [text for row in rows for text in (*row["chosen"], *row["rejected"])]
    rewards = scorer.score(prompts, responses, progress=progress).reward.view(len(rows), 2, variants)
    outcomes = (rewards[:, 0, :, None] > rewards[:, 1, None, :]).numpy()  # [N, i chosen, j rejected]
    entry: dict[str, Any] = {"convention": "rm-bench", "overall": rm_bench_scores(outcomes), "subsets": {}}
    subsets = np.array([str(row.get("subset")) for row in rows])
    for subset in sorted(set(subsets.tolist())):
        entry["subsets"][subset] = rm_bench_scores(outcomes[subsets == subset])
    return entry


def pair_nll_from_rewards(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> float:
    """Mean Bradley-Terry NLL of plug-in rewards (for evaluation)."""
    return (
        float(-torch.nn.functional.logsigmoid(reward_chosen - reward_rejected).mean())
        if reward_chosen.numel()
        else math.nan
    )
