"""Per-objective ratings of responses: reading them, the sign targets of the score term, graded differences.

A row may rate each response on named objectives (`{name}_chosen` / `{name}_rejected`, higher is better; see
`vrm.data.load_preferences`). Two things are derived from a pair's ratings rho+ and rho-:

* the *sign* target of the score term, 1 when y+ is rated higher on objective k, 0 when lower, NaN for a tie or
  an unknown rating (the original behaviour of `vrm.training.losses.attribute_loss`);
* the *graded* difference delta_k = (rho+_k - rho-_k) / range_k, clamped to [-1, 1], where range_k is the spread
  (max - min) of objective k's ratings over the training rows. It feeds the graded score targets and the
  ratings -> weights term (`vrm.training.losses`). Evaluation data is put on the training data's scale; an objective
  that the training rows never rate (or rate with one value) takes the evaluation rows' own spread, else 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vrm.data.files import finite_number

if TYPE_CHECKING:  # pragma: no cover
    from vrm.data.examples import PreferenceExample


def rating_value(value: Any, location: str, field: str) -> float:
    """A rating cell: None, blank or NaN (how pandas writes a missing value) mean "not rated" (NaN); an
    infinity, a boolean or text is a `DataFormatError` naming `location` and `field`."""
    if isinstance(value, float) and math.isnan(value):
        return math.nan
    return finite_number(value, location, field, missing=math.nan)


def sign_target(chosen: float, rejected: float) -> float:
    """1 when y+ is rated higher, 0 when lower, NaN for ties and unknown ratings."""
    if math.isnan(chosen) or math.isnan(rejected) or chosen == rejected:
        return math.nan
    return 1.0 if chosen > rejected else 0.0


def rating_ranges(examples: Sequence[PreferenceExample]) -> list[float]:
    """Per rated objective, max - min of all responses' ratings; NaN where no spread is seen (no rating, or
    one value only)."""
    rated = [e for e in examples if e.ratings_chosen is not None and e.ratings_rejected is not None]
    if not rated:
        return []
    ranges = []
    for k in range(len(rated[0].ratings_chosen)):
        values = [v for e in rated for v in (e.ratings_chosen[k], e.ratings_rejected[k]) if not math.isnan(v)]
        spread = max(values) - min(values) if values else 0.0
        ranges.append(spread if spread > 0 else math.nan)
    return ranges


def resolve_scale(given: Sequence[float] | None, own: Sequence[float], location: str) -> list[float]:
    """The scale to divide rating gaps by: `given` (the training data's) where it is known, else this data's
    own spread, else 1."""
    if given is not None and len(given) not in (0, len(own)):
        raise ValueError(f"{location}: rating scale has {len(given)} entries for {len(own)} rated objectives")
    scale = []
    for k, value in enumerate(own):
        chosen = given[k] if given is not None and len(given) else math.nan
        if not math.isnan(chosen) and chosen <= 0:
            raise ValueError(f"{location}: rating scale entries must be > 0, got {chosen}")
        for candidate in (chosen, value, 1.0):
            if not math.isnan(candidate):
                scale.append(float(candidate))
                break
    return scale


def set_rating_differences(examples: Sequence[PreferenceExample], scale: Sequence[float]) -> None:
    """Fill each example's `rating_differences` = clamp((rho+ - rho-) / scale, -1, 1) (NaN where unknown)."""
    for example in examples:
        if example.ratings_chosen is None or example.ratings_rejected is None:
            continue
        example.rating_differences = [
            max(-1.0, min(1.0, (c - r) / s)) if not (math.isnan(c) or math.isnan(r)) else math.nan
            for c, r, s in zip(example.ratings_chosen, example.ratings_rejected, scale, strict=True)
        ]
