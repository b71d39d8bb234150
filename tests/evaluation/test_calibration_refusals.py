"""`vrm calibrate` stores no degenerate temperature: too few pairs and fits at a bound of the search interval are
refused with one line, a fit no better than T = 1 on validation pairs is reported and not written, and pairs
dropped from the validation file are counted with the reason."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.evaluation import checkpoint_calibration
from vrm.evaluation.calibration import (
    LOG_TEMPERATURE_BOUNDS,
    MIN_CALIBRATION_PAIRS,
    fit_temperature,
    held_out_nll,
    predictive_probability,
    temperature_problem,
)


def config_of(model_dir):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        return json.load(handle)


# ----- the fit (plain arrays) ---------------------------------------------------------------------------------
def test_perfectly_ranked_pairs_run_to_the_lower_bound_and_are_not_a_temperature():
    fit = fit_temperature(np.linspace(0.1, 2.0, 200))  # every pair right: the NLL falls as T -> 0
    assert fit.at_bound and fit.temperature == pytest.approx(math.exp(LOG_TEMPERATURE_BOUNDS[0]), rel=0.02)
    problem = temperature_problem(fit)
    assert "bound T = 0.01" in problem and "ranks (nearly) every pair right" in problem


def test_margins_no_better_than_chance_run_to_the_upper_bound():
    margin = np.tile([1.0, -1.0], 100)  # right as often as wrong, with confidence: the NLL falls as T grows
    fit = fit_temperature(margin)
    assert fit.at_bound and fit.temperature == pytest.approx(100.0, rel=0.02)
    assert "no better than chance" in temperature_problem(fit)


def test_too_few_pairs_are_refused_whatever_the_fit():
    rng = np.random.default_rng(3)
    margin = rng.normal(0.0, 2.0, MIN_CALIBRATION_PAIRS - 1)
    wins = rng.random(margin.size) < predictive_probability(margin, None, 2.0)
    fit = fit_temperature(np.where(wins, margin, -margin))
    assert f"at least {MIN_CALIBRATION_PAIRS} are needed" in temperature_problem(fit)
    assert fit_temperature(np.array([0.4])).pairs == 1  # the math still fits; only storing it is refused
    assert "1 validation pairs are too few" in temperature_problem(fit_temperature(np.array([0.4])))


def test_a_fit_that_does_not_help_on_held_out_pairs_is_not_used():
    rng = np.random.default_rng(0)
    # a calibrated model (true T = 1): the fit only chases noise; find a draw where it hurts held-out pairs
    for _ in range(50):
        margin = rng.normal(0.0, 1.0, MIN_CALIBRATION_PAIRS)
        wins = rng.random(margin.size) < predictive_probability(margin)
        fit = fit_temperature(np.where(wins, margin, -margin))
        if fit.nll_held_out > fit.nll_before:
            break
    assert fit.nll_after <= fit.nll_before < fit.nll_held_out and not fit.at_bound
    assert "on held-out pairs" in temperature_problem(fit) and "worse than T = 1" in temperature_problem(fit)
    # and one that clearly helps is used: a timid model (true T = 0.4)
    margin = rng.normal(0.0, 1.0, 400)
    wins = rng.random(margin.size) < predictive_probability(margin, None, 0.4)
    good = fit_temperature(np.where(wins, margin, -margin))
    assert temperature_problem(good) is None and good.nll_held_out < good.nll_before
    assert held_out_nll(np.array([1.0])) != held_out_nll(np.array([1.0]))  # NaN: nothing to hold out


# ----- vrm calibrate ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 8])
def test_calibrate_refuses_too_few_pairs_and_writes_nothing(
    tmp_path, saved_vrm_model, write_pairs, one_line_error, count
):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    rows = (rows + rows)[:count]  # 1 pair (T ran to 0.01), 8 pairs (T ran to 100)
    validation = write_pairs(str(tmp_path / "few.jsonl"), rows)
    before = config_of(saved_vrm_model)
    assert main(["calibrate", "--model", saved_vrm_model, "--dataset", validation, "--no_progress"]) == 1
    line = one_line_error("calibrate")
    assert f"{validation}: {len(rows)} validation pairs are too few" in line
    assert f"at least {MIN_CALIBRATION_PAIRS} are needed" in line and "nothing written" in line
    assert config_of(saved_vrm_model) == before


def test_calibrate_refuses_a_fit_at_the_bound(tmp_path, saved_vrm_model, oriented_validation, one_line_error):
    # 120 pairs, every one ranked right by the model: no errors to calibrate against, T runs to 0.01
    validation = oriented_validation(saved_vrm_model, str(tmp_path / "v.jsonl"), right=20, wrong=0)
    before = config_of(saved_vrm_model)
    argv = ["calibrate", "--model", saved_vrm_model, "--dataset", validation, "--no_progress"]
    assert main(argv) == 1
    line = one_line_error("calibrate")
    assert "the fit ran to the bound T = 0.01" in line and "nothing written" in line and validation in line
    assert config_of(saved_vrm_model) == before


def test_calibrate_reports_but_does_not_write_a_fit_worse_than_t1(
    tmp_path, saved_vrm_model, oriented_validation, monkeypatch, capsys
):
    validation = oriented_validation(saved_vrm_model, str(tmp_path / "v.jsonl"), right=14, wrong=6)
    fitted = []

    def worse_held_out(margin, std=None):  # the fit of a model that the temperature does not help
        fit = fit_temperature(margin, std)
        fitted.append(fit)
        return type(fit)(**{**fit.__dict__, "nll_held_out": fit.nll_before + 0.01})

    monkeypatch.setattr(checkpoint_calibration, "fit_temperature", worse_held_out)
    before = config_of(saved_vrm_model)
    output = str(tmp_path / "fit.json")
    argv = ["calibrate", "--model", saved_vrm_model, "--dataset", validation, "--no_progress"]
    assert main([*argv, "--output", output]) == 0
    printed = capsys.readouterr().out
    assert "predictive NLL" in printed and f"T = {fitted[0].temperature:.4g}" in printed
    assert "[vrm] not written:" in printed and "worse than T = 1" in printed
    assert "calibration_temperature stays 1" in printed
    assert config_of(saved_vrm_model) == before
    with open(output, encoding="utf-8") as handle:
        recorded = json.load(handle)
    assert recorded["written"] is False and "worse than T = 1" in recorded["reason"]


def test_calibrate_says_how_many_pairs_were_dropped_and_why(
    tmp_path, saved_vrm_model, oriented_validation, capsys
):
    validation = oriented_validation(saved_vrm_model, str(tmp_path / "v.jsonl"), right=14, wrong=6)
    with open(validation, "a", encoding="utf-8") as handle:  # a pair with nothing to choose between
        handle.write(json.dumps({"prompt": "q", "chosen": "same answer", "rejected": "same answer"}) + "\n")
    argv = ["calibrate", "--model", saved_vrm_model, "--dataset", validation, "--no_progress", "--dry_run"]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        f"[vrm] {validation}: 120 pairs (1 of 121 pairs dropped: 1 with identical chosen and rejected tokens)"
    )
