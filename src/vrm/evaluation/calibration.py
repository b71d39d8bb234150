"""Predictive preference probabilities and their temperature calibration (plain arrays: no model, no I/O).

A reward model with a posterior over rewards should not say P(y+ > y-) = sigmoid(mu+ - mu-) from the plug-in
rewards alone: it should integrate the Bradley-Terry likelihood over its posterior,

    P(y+ > y-) = E[sigmoid(D)],     D = r+ - r-.

**Probit approximation** (MacKay, 1992; used for every head). Take D ~ N(m, s^2) with m = mu+ - mu- and
s^2 = std+^2 + std-^2 (the rewards' posterior variances, treated as independent). Replace the logistic by
the probit with the same slope at 0, sigmoid(x) ~ Phi(lambda x): sigmoid'(0) = 1/4 and
d/dx Phi(lambda x)|_0 = lambda / sqrt(2 pi), so lambda^2 = pi / 8. With e ~ N(0, 1) independent of D,

    E[Phi(lambda D)] = P(e <= lambda D) = P(e - lambda D <= 0),    e - lambda D ~ N(-lambda m, 1 + lambda^2 s^2)
                     = Phi(lambda m / sqrt(1 + lambda^2 s^2))
                     ~ sigmoid(m / sqrt(1 + pi s^2 / 8)),

so the posterior shrinks the plug-in logit by kappa(s) = 1 / sqrt(1 + pi s^2 / 8) towards 1/2. Deterministic
heads (s = 0) get back sigmoid(m). In vrm's head the two responses of a pair share the prompt's weights w, so
their rewards are positively correlated and Var[D] <= s^2: the approximation is then on the uncertain side.
Where reward samples exist (a head's posterior draws, drawn jointly for the pair by
`vrm.evaluation.checkpoint_calibration.sample_pair_rewards`, or an ensemble's members), `monte_carlo_probability` averages
sigmoid(r+ - r-) over them instead, keeping that correlation.

**Temperature.** One scalar T > 0 rescales the logit, p_T = sigmoid(kappa(s) m / T), fitted on validation pairs
by minimising the negative log-likelihood of "chosen wins" over log T (`scipy.optimize.minimize_scalar`,
bounded, so T stays positive). T > 1 softens over-confident probabilities, T < 1 sharpens timid ones; T = 1
is the uncalibrated model. `vrm calibrate` (`vrm.evaluation.checkpoint_calibration`) stores it as the checkpoint config's
`calibration_temperature`, which `vrm eval` applies.

**When not to use a fit** (`temperature_problem`). A fitted T is only stored when the data determine it and it
helps on pairs it was not fitted on:

* at least `MIN_CALIBRATION_PAIRS` (100) pairs. One parameter fitted by maximum likelihood has a standard error
  of 1 / sqrt(n I) in log T, where the Fisher information per pair I = E[x^2 p (1 - p)] (x the calibrated
  logit, p = sigmoid(x)) is about 0.2 - 0.3 for the logits of a useful reward model (at most 0.44). With 100
  pairs log T is known to about +-0.2 (T within about 20 %, one standard error), and the 10-bin ECE has
  about 10 pairs per bin; with 8 pairs the error is +-0.7 (T off by a factor of 2) and a handful of
  correctly ranked pairs is perfectly separable, so the NLL has no minimum at all (next point);
* a minimum inside the search interval: a fit at a bound of `LOG_TEMPERATURE_BOUNDS` (T = 0.01 or 100)
  means the NLL was still falling there (every pair ranked right: T -> 0; margins no better than chance:
  T -> infinity), so the bound is an artefact of the interval, not an estimate;
* a validation NLL no worse than T = 1's, both on the pairs it was fitted on and held out (`HELD_OUT_FOLDS`-fold
  cross-validation: each fold scored with the T fitted on the other folds). In-sample the fitted T can only
  improve the NLL (T = 1 is in the interval); held out, a T fitted to noise does worse than T = 1, and is then
  not worth storing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from vrm.evaluation.metrics import calibration

PROBIT_SCALE = math.pi / 8.0  # lambda^2 of sigmoid(x) ~ Phi(lambda x)
LOG_TEMPERATURE_BOUNDS = (-math.log(100.0), math.log(100.0))  # T in [0.01, 100]
BOUND_TOLERANCE = 0.01  # a fitted log T this close to a bound is at the bound (T within 1 %)
MIN_CALIBRATION_PAIRS = 100  # see the module docstring: log T to about +-0.2
HELD_OUT_FOLDS = 5


def _array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def probit_shrinkage(pair_std) -> np.ndarray:
    """kappa(s) = 1 / sqrt(1 + pi s^2 / 8): how much posterior uncertainty s shrinks a pair's logit."""
    return 1.0 / np.sqrt(1.0 + PROBIT_SCALE * _array(pair_std) ** 2)


def pair_std(std_chosen, std_rejected) -> np.ndarray:
    """s = sqrt(std+^2 + std-^2): the standard deviation of r+ - r- for independent posteriors."""
    return np.sqrt(_array(std_chosen) ** 2 + _array(std_rejected) ** 2)


def predictive_logits(margin, std=None, temperature: float = 1.0) -> np.ndarray:
    """kappa(s) m / T: the logit of the predictive probability (s = 0 when `std` is None)."""
    check_temperature(temperature)
    logits = _array(margin) / temperature
    return logits if std is None else logits * probit_shrinkage(std)


def predictive_probability(margin, std=None, temperature: float = 1.0) -> np.ndarray:
    """P(y+ > y-) ~ sigmoid(m / (T sqrt(1 + pi s^2 / 8))) for margins m = mu+ - mu- and pair stds s."""
    return _sigmoid(predictive_logits(margin, std, temperature))


def monte_carlo_probability(
    reward_chosen_samples, reward_rejected_samples, temperature: float = 1.0
) -> np.ndarray:
    """E[sigmoid((r+ - r-) / T)] estimated from M joint samples, arrays [M, N] -> [N]."""
    check_temperature(temperature)
    chosen, rejected = _array(reward_chosen_samples), _array(reward_rejected_samples)
    if chosen.shape != rejected.shape or chosen.ndim != 2:
        raise ValueError(f"need two [M, N] arrays of reward samples, got {chosen.shape} and {rejected.shape}")
    return _sigmoid((chosen - rejected) / temperature).mean(0)


def preference_nll(logits) -> float:
    """Mean -log sigmoid(logit) of "chosen wins", computed stably as softplus(-logit)."""
    logits = _array(logits)
    if logits.size == 0:
        raise ValueError("no pairs to measure the NLL on")
    return float(np.logaddexp(0.0, -logits).mean())


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the NLL / ECE of the predictive probability before (T = 1) and after it."""

    temperature: float
    pairs: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    nll_held_out: float = math.nan  # cross-validated NLL of the fitted T (NaN: too few pairs to split)
    at_bound: bool = False  # the minimum was not found inside LOG_TEMPERATURE_BOUNDS


def _fit_log_temperature(base: np.ndarray) -> float:
    """log T minimising the NLL of sigmoid(base / T) over `LOG_TEMPERATURE_BOUNDS` (bounded Brent; the NLL is
    convex in 1/T, so unimodal in log T, and Brent finds its minimum or the bound it falls towards)."""
    result = optimize.minimize_scalar(
        lambda log_t: preference_nll(base * math.exp(-log_t)), bounds=LOG_TEMPERATURE_BOUNDS, method="bounded"
    )
    return float(result.x)


def held_out_nll(base, folds: int = HELD_OUT_FOLDS, seed: int = 0) -> float:
    """Cross-validated NLL of a fitted temperature: the pairs split into `folds` folds (a seeded shuffle),
    each fold's NLL taken at the T fitted on the other folds (T = 1 where those have no information).
    NaN with fewer than 2 pairs."""
    base = _array(base)
    folds = min(folds, base.size)
    if folds < 2:
        return math.nan
    fold = np.empty(base.size, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(base.size)] = np.arange(base.size) % folds
    total = 0.0
    for k in range(folds):
        train, test = base[fold != k], base[fold == k]
        log_t = _fit_log_temperature(train) if (train != 0).any() else 0.0
        total += float(np.logaddexp(0.0, -test * math.exp(-log_t)).sum())
    return total / base.size


def fit_temperature(margin, std=None) -> TemperatureFit:
    """The T minimising the NLL of sigmoid(kappa(s) m / T) on validation pairs (chosen = true winner).

    Searched over log T in `LOG_TEMPERATURE_BOUNDS` (bounded Brent). Margins that are all 0 carry no
    information about T and are refused. The fit is returned whatever it is; `temperature_problem` says
    whether it should be used (too few pairs, a fit at a bound, no better than T = 1 on held-out pairs).
    """
    base = predictive_logits(margin, std)
    if base.size == 0:
        raise ValueError("no validation pairs to fit a temperature on")
    if not np.isfinite(base).all():
        raise ValueError("the validation margins hold NaN or infinite values: cannot fit a temperature")
    if not (base != 0).any():
        raise ValueError("every validation margin is 0 (the model ties all pairs): no temperature to fit")
    log_t = _fit_log_temperature(base)
    temperature = float(math.exp(log_t))
    low, high = LOG_TEMPERATURE_BOUNDS
    return TemperatureFit(
        temperature=temperature,
        pairs=int(base.size),
        nll_before=preference_nll(base),
        nll_after=preference_nll(base / temperature),
        ece_before=calibration(_sigmoid(base))["ece"],
        ece_after=calibration(_sigmoid(base / temperature))["ece"],
        nll_held_out=held_out_nll(base),
        at_bound=bool(log_t - low < BOUND_TOLERANCE or high - log_t < BOUND_TOLERANCE),
    )


def temperature_problem(fit: TemperatureFit, min_pairs: int = MIN_CALIBRATION_PAIRS) -> str | None:
    """Why `fit` must not be stored as a checkpoint's temperature (one line), or None when it may be.

    In order: too few pairs; a fit at a bound of the search interval; a validation NLL worse than T = 1's
    (on the fitted pairs, or held out). See the module docstring for the reasons and the minimum."""
    if fit.pairs < min_pairs:
        return (
            f"{fit.pairs} validation pairs are too few to fit a temperature: at least {min_pairs} are needed "
            f"(with fewer, T is uncertain by more than about 20 % and often runs to a bound)"
        )
    if fit.at_bound:
        low, high = (math.exp(b) for b in LOG_TEMPERATURE_BOUNDS)
        why = (
            "the NLL keeps falling as T -> 0: the model ranks (nearly) every pair right, which leaves no "
            "errors to calibrate against"
            if fit.temperature < 1
            else "the NLL keeps falling as T grows: the model's margins are no better than chance on these pairs"
        )
        return (
            f"the fit ran to the bound T = {fit.temperature:.4g} of the search interval [{low:g}, {high:g}] ({why}): "
            f"the {fit.pairs} pairs do not determine T"
        )
    if fit.nll_after > fit.nll_before or fit.nll_held_out > fit.nll_before:
        worse = "on the fitted pairs" if fit.nll_after > fit.nll_before else "on held-out pairs"
        nll = fit.nll_after if fit.nll_after > fit.nll_before else fit.nll_held_out
        return (
            f"T = {fit.temperature:.4g} gives a validation NLL {worse} of {nll:.4f}, worse than T = 1 "
            f"({fit.nll_before:.4f}): the model is no better calibrated with it"
        )
    return None


def predictive_calibration(margin, std=None, temperature: float = 1.0) -> dict:
    """NLL, Brier and ECE of the predictive probability (see `vrm.evaluation.metrics.calibration`), with its T."""
    logits = predictive_logits(margin, std, temperature)
    measured = calibration(_sigmoid(logits))
    return {
        "temperature": float(temperature),
        "nll": preference_nll(logits),
        "brier": measured["brier"],
        "ece": measured["ece"],
    }


def check_temperature(temperature: float) -> float:
    """A temperature must be a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"calibration_temperature must be a number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"calibration_temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|
