"""Predictive preference probabilities, temperature fitting, and `vrm calibrate` (tiny model, data built here)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import special
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.evaluation.calibration import (
    fit_temperature,
    monte_carlo_probability,
    predictive_calibration,
    predictive_probability,
)
from vrm.evaluation.checkpoint_calibration import calibrate_model
from vrm.evaluation.metrics import error_detection
from vrm.evaluation.pairwise import evaluate_model
from vrm.evaluation.table import format_report
from vrm.models.config import VRMConfig
from vrm.scoring.pipeline import RewardPipeline


def test_probit_approximation_matches_monte_carlo_on_a_known_gaussian():
    rng = np.random.default_rng(0)
    margins = np.array([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0])
    stds = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    for m in margins:
        for s in stds:
            draws = m + s * rng.standard_normal(200_000)  # D = r+ - r- ~ N(m, s^2)
            monte_carlo = special.expit(draws).mean()
            assert predictive_probability(m, s) == pytest.approx(monte_carlo, abs=0.015)
    # uncertainty pulls the probability towards 1/2, and s = 0 is the plug-in sigmoid
    assert predictive_probability(2.0, 0.0) == pytest.approx(special.expit(2.0))
    assert 0.5 < predictive_probability(2.0, 3.0) < predictive_probability(2.0, 1.0) < special.expit(2.0)
    # joint samples of the two rewards: the Monte-Carlo estimator agrees with the closed form
    chosen = 1.5 + 1.2 * rng.standard_normal((100_000, 3))
    rejected = np.array([0.0, 1.0, 2.5]) + 0.8 * rng.standard_normal((100_000, 3))
    estimate = monte_carlo_probability(chosen, rejected)
    closed = predictive_probability(1.5 - np.array([0.0, 1.0, 2.5]), math.sqrt(1.2**2 + 0.8**2))
    assert estimate == pytest.approx(closed, abs=0.015)
    with pytest.raises(ValueError, match=r"\[M, N\]"):
        monte_carlo_probability(chosen[:, 0], rejected[:, 0])


@pytest.mark.parametrize("true_temperature, std", [(2.5, 0.0), (0.4, 0.0), (1.7, 1.5)])
def test_temperature_fit_recovers_a_known_temperature(true_temperature, std):
    rng = np.random.default_rng(1)
    margin = rng.normal(0.0, 3.0, 20_000)
    # the truth: P(the first response wins) = sigmoid(kappa(s) m / T); "chosen" is whichever won
    winner_first = rng.random(margin.size) < predictive_probability(margin, std, true_temperature)
    observed = np.where(winner_first, margin, -margin)
    fit = fit_temperature(observed, np.full(margin.size, std))
    assert fit.temperature == pytest.approx(true_temperature, rel=0.05)
    assert fit.pairs == margin.size
    assert fit.nll_after < fit.nll_before and fit.ece_after < fit.ece_before
    after = predictive_calibration(observed, np.full(margin.size, std), fit.temperature)
    assert after["nll"] == pytest.approx(fit.nll_after) and after["temperature"] == fit.temperature


def test_temperature_fit_refuses_uninformative_or_bad_margins():
    with pytest.raises(ValueError, match="every validation margin is 0"):
        fit_temperature(np.zeros(5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_temperature(np.array([1.0, math.nan]))
    with pytest.raises(ValueError, match="no validation pairs"):
        fit_temperature(np.array([]))
    with pytest.raises(ValueError, match="calibration_temperature must be a finite number > 0"):
        predictive_probability(1.0, 0.0, temperature=0.0)


@pytest.mark.slow
def test_calibrate_writes_the_temperature_and_every_load_path_reads_it(
    tmp_path, saved_vrm_model, capsys, oriented_validation
):
    # 120 pairs on which the model ranks 70 % right with tiny margins: it is under-confident, T < 1
    validation = oriented_validation(saved_vrm_model, str(tmp_path / "validation.jsonl"), right=14, wrong=6)
    with open(f"{saved_vrm_model}/config.json", encoding="utf-8") as handle:
        before = json.load(handle)
    assert before.get("calibration_temperature", 1.0) == 1.0

    dry = calibrate_model(saved_vrm_model, validation, write=False)
    assert (
        json.load(open(f"{saved_vrm_model}/config.json", encoding="utf-8")) == before
    )  # --dry_run: untouched

    output = str(tmp_path / "fit.json")
    assert main(["calibrate", "--model", saved_vrm_model, "--dataset", validation, "--output", output]) == 0
    printed = capsys.readouterr().out
    assert "predictive NLL" in printed and "written to" in printed
    with open(f"{saved_vrm_model}/config.json", encoding="utf-8") as handle:
        after = json.load(handle)
    temperature = after["calibration_temperature"]
    assert temperature == pytest.approx(dry.fit.temperature) and 0.01 < temperature < 1.0
    assert {k: v for k, v in after.items() if k != "calibration_temperature"} == {
        k: v for k, v in before.items() if k != "calibration_temperature"
    }
    with open(output, encoding="utf-8") as handle:
        assert json.load(handle)["fit"]["temperature"] == pytest.approx(temperature)
    # read back: the config, the pipeline, and vrm eval (which applies it)
    assert VRMConfig.from_pretrained(saved_vrm_model).calibration_temperature == pytest.approx(temperature)
    assert RewardPipeline.from_pretrained(
        saved_vrm_model
    ).model.config.calibration_temperature == pytest.approx(temperature)
    report = evaluate_model(saved_vrm_model, [validation], progress=False)
    overall = report.datasets[validation].overall
    assert report.calibration_temperature == pytest.approx(temperature)
    assert overall.predictive_temperature == pytest.approx(temperature)
    assert overall.predictive_nll == pytest.approx(dry.fit.nll_after, rel=1e-4)
    # refitting starts from T = 1: calibrating twice gives the same temperature
    again = calibrate_model(saved_vrm_model, validation)
    assert again.previous_temperature == pytest.approx(temperature)
    assert again.fit.temperature == pytest.approx(temperature, rel=1e-4)


def test_an_invalid_stored_temperature_is_a_clear_load_error(saved_vrm_model):
    with open(f"{saved_vrm_model}/config.json", encoding="utf-8") as handle:
        config = json.load(handle)
    for bad in (0.0, -1.0, "hot"):
        config["calibration_temperature"] = bad
        with open(f"{saved_vrm_model}/config.json", "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        with pytest.raises(ValueError, match="calibration_temperature must be a finite number > 0"):
            VRMConfig.from_pretrained(saved_vrm_model)


def test_calibrate_names_a_bad_row(tmp_path, saved_vrm_model, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    assert main(["calibrate", "--model", saved_vrm_model, "--dataset", str(bad)]) == 1
    error = capsys.readouterr().err
    assert "vrm calibrate: error:" in error and "bad.jsonl:2" in error and "'rejected'" in error


def test_eval_table_shows_predictive_calibration_and_error_detection_side_by_side(
    tmp_path, saved_vrm_model, write_pairs
):
    data = write_pairs(str(tmp_path / "pairs.jsonl"))
    text = format_report(evaluate_model(saved_vrm_model, [data], progress=False))
    assert "p-nll" in text and "p-ece" in text
    assert "error detection" in text
    header = next(line for line in text.splitlines() if "margin" in line and "flip" in line)
    assert header.index("margin") < header.index("std") < header.index("flip")


def test_error_detection_scores_extra_signals_by_name():
    chosen, rejected = np.array([2.0, 1.0, 0.0, 3.0]), np.array([0.0, 2.0, 1.0, 0.5])
    wrong = chosen <= rejected  # pairs 1 and 2
    ensemble_std = np.where(wrong, 1.0, 0.1)  # a perfect detector
    out = error_detection(
        chosen, rejected, np.ones(4), np.ones(4), extra_signals={"ensemble_std": ensemble_std}
    )
    assert list(out) == ["margin", "std", "flip", "ensemble_std"]
    assert out["ensemble_std"] == 1.0
    assert list(error_detection(chosen, rejected, extra_signals={"ensemble_std": ensemble_std})) == [
        "margin",
        "ensemble_std",
    ]


def test_head_samples_of_pair_rewards_match_the_posterior_moments(tiny_model):
    from vrm.data.examples import PreferenceExample
    from vrm.evaluation.checkpoint_calibration import sample_pair_rewards
    from vrm.evaluation.pairwise import score_pairs

    model, tokenizer, pref = tiny_model("llama_chat")
    model.config.reward_mean, model.config.reward_scale = 0.3, 2.0  # samples come back on the output scale
    pairs, _ = pref.tokenize_pairs([PreferenceExample(p, c, r) for p, c, r in PAIRS])
    chosen, rejected = score_pairs(model, pairs, tokenizer.pad_token_id, progress=False)
    state = torch.random.get_rng_state()
    samples_chosen, samples_rejected = sample_pair_rewards(model, pairs, tokenizer.pad_token_id, 4000)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random stream is untouched
    assert samples_chosen.shape == samples_rejected.shape == (4000, len(PAIRS))
    std = chosen.reward_std.double().numpy()
    assert samples_chosen.mean(0) == pytest.approx(chosen.reward.double().numpy(), abs=0.1 * std.max())
    assert samples_chosen.std(0) == pytest.approx(std, rel=0.1)
    assert samples_rejected.std(0) == pytest.approx(rejected.reward_std.double().numpy(), rel=0.1)
    # a shared draw of the weights correlates r+ and r-: the pair's spread is below the independent bound
    independent = np.sqrt(std**2 + rejected.reward_std.double().numpy() ** 2)
    assert ((samples_chosen - samples_rejected).std(0) <= independent * 1.05).all()
    again = sample_pair_rewards(model, pairs, tokenizer.pad_token_id, 4000)
    assert np.array_equal(again[0], samples_chosen)  # seeded: the same samples every time
    probability = monte_carlo_probability(samples_chosen, samples_rejected)
    assert ((probability > 0) & (probability < 1)).all()
