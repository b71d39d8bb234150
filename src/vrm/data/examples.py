"""One preference pair as every stage after reading sees it (`PreferenceExample`), and the text types it holds:
a plain string, or a list of chat messages."""

from __future__ import annotations

from dataclasses import dataclass

Message = dict[str, str]  # {"role": ..., "content": ...}
Text = str | list[Message]


@dataclass
class PreferenceExample:
    """One preference pair, normalized. `prompt` is text or a list of messages; responses are text or messages."""

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    attribute_targets: list[float] | None = (
        None  # per rated objective: 1 chosen better, 0 rejected better, nan
    )
    objective_label: int | None = None  # index of the objective the judge used (objective column); -1 unknown
    subset: str | None = None
    location: str = ""
    ratings_chosen: list[float] | None = None  # raw per-objective ratings of each response (nan: not rated)
    ratings_rejected: list[float] | None = None
    rating_differences: list[float] | None = (
        None  # (rho+ - rho-) / range per objective, in [-1, 1]; nan unknown
    )
