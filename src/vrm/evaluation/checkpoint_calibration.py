"""`vrm calibrate`: fit the temperature T of a checkpoint's predictive preference probability on validation pairs
(`vrm.evaluation.calibration` has the math) and store it in the checkpoint's `config.json`, atomically.

Nothing degenerate is stored: fewer than `MIN_CALIBRATION_PAIRS` pairs and a fit at a bound of the search
interval are refused (a `ValueError`, before / instead of writing); a fit whose validation NLL is worse than
T = 1's (in-sample or cross-validated) is reported and not written (`CalibrationResult.reason` says why).
Pairs dropped from the validation file are counted, with the reason (`CalibrationResult.dropped`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vrm.data.collate import PreferenceCollator
from vrm.data.files import DataFormatError, read_records, write_json
from vrm.data.rows import parse_row
from vrm.data.tokenization import TokenizedPair, TruncationStats
from vrm.evaluation.calibration import (
    MIN_CALIBRATION_PAIRS,
    TemperatureFit,
    fit_temperature,
    temperature_problem,
)


@dataclass(frozen=True)
class CalibrationResult:
    """What `vrm calibrate` measured and wrote."""

    model: str
    dataset: str
    fit: TemperatureFit
    previous_temperature: float
    written: bool
    rows: int = 0  # preference rows read from the dataset
    dropped: str = ""  # how many of them were not used, and why ("" when every row became a pair)
    reason: str | None = None  # why the fit was not (or, with write=False, would not be) written


def dropped_pairs(stats: TruncationStats) -> str:
    """The line "N of M pairs dropped: why" for pairs lost in tokenization; "" when none was."""
    reasons = []
    if stats.dropped_identical:
        reasons.append(f"{stats.dropped_identical} with identical chosen and rejected tokens")
    if stats.dropped_too_long:
        reasons.append(f"{stats.dropped_too_long} too long for max_length")
    lost = stats.pairs - stats.kept
    other = lost - stats.dropped_identical - stats.dropped_too_long
    if other > 0:
        reasons.append(f"{other} for other reasons")
    return f"{lost} of {stats.pairs} pairs dropped: {', '.join(reasons)}" if lost else ""


def validation_pairs(pipeline, dataset: str) -> tuple[list[TokenizedPair], TruncationStats]:
    """The tokenized pairs of `dataset` (tokenized as `vrm eval` does) and the tokenization's counts."""
    examples = [parse_row(row, location, allow_empty=True) for location, row in read_records(dataset)]
    if not examples:
        raise DataFormatError(f"{dataset}: no preference rows")
    pairs, stats = pipeline.template.tokenize_pairs(examples)
    if not pairs:
        raise DataFormatError(f"{dataset}: no pairs left after tokenization ({stats.summary()})")
    return pairs, stats


def validation_margins(
    pipeline, dataset: str, progress: bool = False, pairs: list[TokenizedPair] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Margins mu+ - mu- and pair stds sqrt(std+^2 + std-^2) of every pair of `dataset` (or of its already
    tokenized `pairs`), on the output scale."""
    from vrm.evaluation.pairwise import score_pairs

    if pairs is None:
        pairs, _ = validation_pairs(pipeline, dataset)
    chosen, rejected = score_pairs(
        pipeline.model,
        pairs,
        pipeline.tokenizer.pad_token_id,
        pipeline.batch_size,
        progress,
        pipeline.embedding_cache,
    )
    margin = (chosen.reward - rejected.reward).double().numpy()
    std = (chosen.reward_std.double() ** 2 + rejected.reward_std.double() ** 2).sqrt().numpy()
    if not (np.isfinite(margin).all() and np.isfinite(std).all()):
        raise ValueError(f"{dataset}: the model produced NaN or infinite rewards; no temperature fitted")
    return margin, std


@torch.no_grad()
def sample_pair_rewards(
    model,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    num_samples: int = 256,
    batch_size: int = 32,
    embedding_cache=None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Joint posterior samples of (r+, r-) for each pair, two arrays [M, N] on the model's output scale.

    Drawn by the head's own sampler (`LatentRewardHead.sample_pairs`: chosen and rejected share each draw of the
    prompt's weights w, so their correlation is kept), from a fixed seed without touching the caller's random
    state. `vrm.evaluation.calibration.monte_carlo_probability` turns them into E[sigmoid(r+ - r-)], the exact predictive
    probability that the probit approximation estimates from the marginal stds alone.
    """
    model.eval()
    device = next(model.parameters()).device
    config = model.config
    chosen_out, rejected_out = [], []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if embedding_cache is not None:
            count = len(pairs)
            sequences = [p.chosen_input_ids for p in pairs] + [p.rejected_input_ids for p in pairs]
            lengths = [p.prompt_length for p in pairs] * 2
            prompt_states, response_states = embedding_cache.states(model, sequences, lengths, pad_token_id)
            for start in range(0, count, batch_size):
                part = slice(start, min(start + batch_size, count))
                out = model(
                    prompt_states=prompt_states[part].to(device),
                    chosen_states=response_states[part].to(device),
                    rejected_states=response_states[count + part.start : count + part.stop].to(device),
                    num_samples=num_samples,
                )
                chosen_out.append(out.reward_chosen.float().cpu())
                rejected_out.append(out.reward_rejected.float().cpu())
        else:
            collate = PreferenceCollator(pad_token_id)
            for start in range(0, len(pairs), batch_size):
                batch = collate(pairs[start : start + batch_size])
                out = model(
                    chosen_input_ids=batch["chosen_input_ids"].to(device),
                    chosen_attention_mask=batch["chosen_attention_mask"].to(device),
                    rejected_input_ids=batch["rejected_input_ids"].to(device),
                    rejected_attention_mask=batch["rejected_attention_mask"].to(device),
                    prompt_lengths=batch["prompt_lengths"].to(device),
                    num_samples=num_samples,
                )
                chosen_out.append(out.reward_chosen.float().cpu())
                rejected_out.append(out.reward_rejected.float().cpu())

    def output_scale(parts: list[torch.Tensor]) -> np.ndarray:
        return ((torch.cat(parts, dim=1).double() - config.reward_mean) / config.reward_scale).numpy()

    return output_scale(chosen_out), output_scale(rejected_out)


def write_temperature(model_path: str, temperature: float) -> None:
    """Set `calibration_temperature` in `model_path/config.json`, atomically, keeping every other key."""
    config_path = os.path.join(model_path, "config.json")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["calibration_temperature"] = float(temperature)
    write_json(config, config_path)


def calibrate_model(
    model_path: str,
    dataset: str,
    *,
    write: bool = True,
    batch_size: int = 32,
    max_length: int | None = None,
    embedding_cache: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = False,
) -> CalibrationResult:
    """Fit the temperature of the vrm checkpoint at `model_path` on `dataset` (and write it unless `write=False`).

    The fit always starts from T = 1: a checkpoint calibrated before is refitted, not calibrated twice.
    Fewer than `MIN_CALIBRATION_PAIRS` pairs (counted before any scoring) and a fit at a bound of the search
    interval are a `ValueError` naming the dataset; a fit no better than T = 1 is returned unwritten, with the
    reason (`vrm.evaluation.calibration.temperature_problem`). The checkpoint is then left as it was.
    """
    from vrm.scoring.pipeline import RewardPipeline

    if not os.path.exists(os.path.join(model_path, "config.json")):
        raise FileNotFoundError(f"{model_path}: not a saved vrm model directory (no config.json)")
    with open(os.path.join(model_path, "config.json"), encoding="utf-8") as handle:
        if json.load(handle).get("model_type") != "vrm":
            raise ValueError(
                f"{model_path}: not a vrm checkpoint; only vrm models carry a calibration temperature"
            )
    kwargs: dict[str, Any] = {"batch_size": batch_size, "embedding_cache": embedding_cache}
    if max_length:
        kwargs["max_length"] = max_length
    pipeline = RewardPipeline.from_pretrained(model_path, device=device, dtype=dtype, **kwargs)
    previous = float(pipeline.model.config.calibration_temperature)
    pairs, stats = validation_pairs(pipeline, dataset)
    dropped = dropped_pairs(stats)
    if len(pairs) < MIN_CALIBRATION_PAIRS:
        raise ValueError(
            f"{dataset}: {len(pairs)} validation pairs{f' ({dropped})' if dropped else ''} are too few to fit a "
            f"temperature: at least {MIN_CALIBRATION_PAIRS} are needed; nothing written"
        )
    margin, std = validation_margins(pipeline, dataset, progress, pairs=pairs)
    fit = fit_temperature(margin, std)
    reason = temperature_problem(fit)
    if fit.at_bound:  # no estimate at all: refuse, as for too few pairs
        raise ValueError(
            f"{dataset}: {reason}; nothing written (NLL {fit.nll_before:.4f} at T = 1, "
            f"{fit.nll_after:.4f} at the bound)"
        )
    written = write and reason is None
    if written:
        write_temperature(model_path, fit.temperature)
    return CalibrationResult(model_path, dataset, fit, previous, written, stats.pairs, dropped, reason)


def format_result(result: CalibrationResult, dry_run: bool = False) -> str:
    """What `vrm calibrate` prints: the pairs used (and dropped, with why), the fit, and what was written."""
    fit = result.fit
    used = f"{fit.pairs} pairs" + (f" ({result.dropped})" if result.dropped else "")
    lines = [
        f"[vrm] {result.dataset}: {used}",
        f"[vrm] predictive NLL {fit.nll_before:.4f} -> {fit.nll_after:.4f} (held out {fit.nll_held_out:.4f}), "
        f"ECE {fit.ece_before:.4f} -> {fit.ece_after:.4f} (T = 1 -> T = {fit.temperature:.4g})",
    ]
    config = os.path.join(result.model, "config.json")
    if result.written:
        lines.append(
            f"[vrm] calibration_temperature {result.previous_temperature:.4g} -> {fit.temperature:.4g} "
            f"written to {config}"
        )
    elif result.reason is not None:
        kept = f"calibration_temperature stays {result.previous_temperature:.4g} in {config}"
        lines.append(f"[vrm] not {'to be ' if dry_run else ''}written: {result.reason}; {kept}")
    else:
        lines.append("[vrm] --dry_run: the checkpoint was not changed")
    return "\n".join(lines)
