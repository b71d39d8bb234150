"""How many training rows feed each auxiliary term of the objective, said before training starts.

Besides the preference likelihood, the negative ELBO (`vrm.training.losses`) has three terms that learn from
extra columns, each masked to the rows that carry what it needs:

* **objective labels** (`--objective_label_weight`): rows whose `--objective_column` names an objective;
* **attribute ratings** (`--attribute_weight`): rows with a known score target on an `--attribute_names`
  objective: both responses rated and not tied (`--attribute_target sign`; `graded` also learns from a tie),
  or an objective label (its objective gets the target 1);
* **ratings -> weights** (`--rating_weight_coef`): rows rated on both sides on at least two objectives whose
  rating differences differ (otherwise w^T delta is the same for every w and the term has no gradient).

A term whose coefficient is > 0 but that no row can feed would train at 0 every step, silently: that is refused
(`AuxiliaryTermCounts.check`) with one line naming the flag and the way out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def known_values(values: Sequence[float] | None) -> list[float]:
    return [v for v in values or () if v is not None and not math.isnan(v)]


def feeds_attribute_term(pair: Any, attribute_target: str = "sign") -> bool:
    """A row (a `PreferenceExample` or `TokenizedPair`) with at least one known target of the attribute term."""
    if known_values(pair.attribute_targets):
        return True
    return attribute_target == "graded" and bool(known_values(pair.rating_differences))


def feeds_rating_weight_term(pair: Any) -> bool:
    """A row whose known rating differences are not all equal (at least two rated objectives that differ)."""
    known = known_values(pair.rating_differences)
    return len(known) >= 2 and max(known) > min(known)


@dataclass(frozen=True)
class AuxiliaryTermCounts:
    """Training rows that feed each auxiliary term (of `rows` rows)."""

    rows: int
    objective_labels: int
    attribute_ratings: int
    ratings_to_weights: int

    @classmethod
    def of(cls, pairs: Iterable[Any], attribute_target: str = "sign") -> AuxiliaryTermCounts:
        """The counts over `PreferenceExample`s or `TokenizedPair`s (the rows as the trainer batches them)."""
        pairs = list(pairs)
        return cls(
            rows=len(pairs),
            objective_labels=sum(p.objective_label is not None and p.objective_label >= 0 for p in pairs),
            attribute_ratings=sum(feeds_attribute_term(p, attribute_target) for p in pairs),
            ratings_to_weights=sum(feeds_rating_weight_term(p) for p in pairs),
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self, args) -> str:
        """One line: per term, the rows that feed it and its coefficient (`args`: `VRMTrainingArguments`)."""
        return (
            f"auxiliary terms, training rows that feed each (of {self.rows}): objective labels "
            f"{self.objective_labels} (--objective_label_weight {args.objective_label_weight}), attribute ratings "
            f"{self.attribute_ratings} (--attribute_weight {args.attribute_weight}), ratings -> weights "
            f"{self.ratings_to_weights} (--rating_weight_coef {args.rating_weight_coef})"
        )

    def check(self, args) -> None:
        """A `ValueError` for the first term whose coefficient is > 0 while no training row feeds it."""
        names = ", ".join(args.attribute_names or ())
        if args.objective_label_weight > 0 and self.objective_labels == 0:
            raise ValueError(
                f"--objective_label_weight {args.objective_label_weight}: none of the {self.rows} training rows "
                f"has a label in --objective_column {args.objective_column!r} (naming one of {names}), so the "
                "term would train nothing: give labelled rows or pass --objective_label_weight 0"
            )
        if args.attribute_names and args.attribute_weight > 0 and self.attribute_ratings == 0:
            raise ValueError(
                f"--attribute_names {names}: none of the {self.rows} training rows rates both responses "
                "({name}_chosen and {name}_rejected, not tied) or names an objective label, so the attribute term "
                f"(--attribute_weight {args.attribute_weight}) would train nothing: give rows rated on both sides "
                "or pass --attribute_weight 0"
            )
        if args.rating_weight_coef > 0 and self.ratings_to_weights == 0:
            raise ValueError(
                f"--rating_weight_coef {args.rating_weight_coef}: none of the {self.rows} training rows rates both "
                f"responses on two of --attribute_names {names} with different rating gaps, so the ratings -> "
                "weights term would train nothing: give rows rated on both sides (vrm recipe finegrained-qa: "
                "--corrections) or pass --rating_weight_coef 0"
            )
