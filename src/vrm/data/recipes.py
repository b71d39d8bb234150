"""Data recipes: public human-feedback datasets turned into vrm preference files.

`finegrained_qa_to_preferences` (`vrm recipe finegrained-qa`) reads FineGrainedRLHF's QA-Feedback
(Wu et al. 2023, arXiv 2306.01693; `train_feedback.json` / `dev_feedback.json`, here as jsonl, optionally .gz),
one row per ASQA question with the fields

* `question`, `passages` (list of `[title, sentence, sentence, ...]`; the first sentence repeats the title),
* `prediction 1` .. `prediction 4`: four sampled answers,
* `feedback`: human fine-grained feedback **on `prediction 1` only** — `errors` (character spans
  `start`/`end` with an `error type`: Irrelevant, Wrong-Grounding, Unverifiable, Redundant, Incoherent),
  `missing-info` and `corrected-prediction` (prediction 1 edited by the annotator to fix the marked errors),
* `preference`: 6 human comparisons in the order 1v2, 1v3, 1v4, 2v3, 2v4, 3v4; `1` = the first is preferred,
  `2` = the second, `0` = no preference (a tie).

It writes `train.jsonl`, `validation.jsonl`, `test.jsonl` and `summary.json` into `output_dir`: one row per
non-tied comparison, in TRL's standard explicit-prompt format:

* `prompt`: `Passages:` (one line `[i] title: sentences` per passage) then `Question: ...`, the question last
  so that left truncation keeps it; the question alone with `include_passages=False`. With passages the
  median prompt is ~2,850 characters (~575 MiniLM tokens): most pairs exceed a 512-token encoder.
* `chosen` / `rejected`: the preferred and the other prediction; `chosen_prediction` / `rejected_prediction`
  their numbers (1-4; 0 = the human correction); `subset`: `finegrained_qa`.
* `{aspect}_chosen` / `{aspect}_rejected` for the aspects `irrelevant, wrong_grounding, unverifiable,
  redundant, incoherent` (`ASPECTS`): ratings, higher is better, by `rating`:

* `error_share` (default): minus the share of the answer's characters covered by spans of that type (overlapping
  spans counted once), in [-1, 0]. Spans are clauses whose boundaries vary (one sentence may be marked as one
  span or as two) and Irrelevant spans often cover half the answer, so the covered share is steadier than a
  count and does not grow with the answer's length; on the dev file it also relates more to the preferences
  (AUC of prediction 1's summed rating for winning 0.557, against 0.519 for counts).
* `error_count`: minus the number of spans of that type.

Because the fine-grained feedback covers prediction 1 only, a rating is known for prediction 1 and is `null`
for predictions 2-4: a pair has ratings on at most one side, which `load_preferences` reads as "unknown" (NaN),
so these rows train no objective head by themselves. `include_corrections=True` adds, per question, the one pair
whose two sides are both rated: `chosen` = the human correction (rated 0 on every aspect: it fixes the marked
errors), `rejected` = prediction 1, in subset `finegrained_qa_correction`. `summary.json` says how far the
ratings explain the preferences: per aspect, prediction 1's win rate with and without such an error and the
AUC of its rating for winning (0.5: no relation), plus the agreement (chosen's rating >, <, = rejected's) over
the pairs rated on both sides.

Ties are skipped and counted (`ties_skipped`). The split is by question (normalized whitespace and case): the
sorted questions are shuffled with `random.Random(seed)` and cut by `fractions`, so no question is in two splits
and the same seed gives the same split whatever the row order. A malformed row raises `DataFormatError` naming
`file:line` and the field.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
from collections.abc import Sequence
from typing import Any

from vrm.data.files import DataFormatError, atomic_output, check_text, read_records, write_json

ERROR_TYPES = {
    "Irrelevant": "irrelevant",
    "Wrong-Grounding": "wrong_grounding",
    "Unverifiable": "unverifiable",
    "Redundant": "redundant",
    "Incoherent": "incoherent",
}
ASPECTS = tuple(ERROR_TYPES.values())
RATINGS = ("error_share", "error_count")
COMPARISONS = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))  # the order of the `preference` field
SPLITS = ("train", "validation", "test")
SUBSET = "finegrained_qa"
CORRECTION_SUBSET = "finegrained_qa_correction"


# ----- reading and checking one row -----------------------------------------------------------------------------
def _field_error(location: str, field: str, problem: str) -> DataFormatError:
    return DataFormatError(f"{location}: field '{field}': {problem}")


def _text(row: dict[str, Any], location: str, field: str) -> str:
    if field not in row or row[field] is None:
        raise _field_error(location, field, "missing")
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise _field_error(location, field, f"expected non-empty text, got {value!r:.60}")
    return check_text(value, location, field)  # a lone surrogate fails the output file's UTF-8 otherwise


def _errors(row: dict[str, Any], location: str) -> list[tuple[str, int, int]]:
    """The error spans of prediction 1 as (aspect, start, end), checked against its text."""
    feedback = row.get("feedback")
    if not isinstance(feedback, dict):
        raise _field_error(location, "feedback", f"expected an object, got {type(feedback).__name__}")
    errors = feedback.get("errors")
    if not isinstance(errors, list):
        raise _field_error(location, "feedback.errors", f"expected a list, got {type(errors).__name__}")
    length = len(row["prediction 1"])
    spans = []
    for index, error in enumerate(errors):
        field = f"feedback.errors[{index}]"
        if not isinstance(error, dict):
            raise _field_error(location, field, f"expected an object, got {type(error).__name__}")
        kind = error.get("error type")
        if kind not in ERROR_TYPES:
            raise _field_error(location, f"{field}.error type", f"{kind!r} is not one of {list(ERROR_TYPES)}")
        start, end = error.get("start"), error.get("end")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise _field_error(location, f"{field}.start/end", f"expected integers, got {start!r}, {end!r}")
        if not 0 <= start < end <= length:
            raise _field_error(
                location,
                f"{field}.start/end",
                f"span [{start}, {end}) is not inside 'prediction 1' ({length} characters)",
            )
        spans.append((ERROR_TYPES[kind], start, end))
    return spans


def _preferences(row: dict[str, Any], location: str) -> list[int]:
    value = row.get("preference")
    if (
        not isinstance(value, list)
        or len(value) != len(COMPARISONS)
        or any(v not in (0, 1, 2) or isinstance(v, bool) for v in value)
    ):
        raise _field_error(
            location,
            "preference",
            f"expected {len(COMPARISONS)} values in {{0, 1, 2}} (1v2, 1v3, 1v4, 2v3, 2v4, 3v4), got {value!r:.80}",
        )
    return value


def _passages_text(row: dict[str, Any], location: str) -> str:
    passages = row.get("passages")
    if not isinstance(passages, list):
        raise _field_error(location, "passages", f"expected a list, got {type(passages).__name__}")
    lines = []
    for index, passage in enumerate(passages):
        if not isinstance(passage, list) or not passage or not all(isinstance(s, str) for s in passage):
            raise _field_error(
                location, f"passages[{index}]", "expected a list [title, sentence, ...] of text"
            )
        title, sentences = passage[0].strip(), list(passage[1:])
        if sentences and sentences[0].startswith(passage[0] + "\n\n"):  # the first sentence repeats the title
            sentences[0] = sentences[0][len(passage[0]) + 2 :]
        body = " ".join(" ".join(s.split()) for s in sentences if s.strip())
        lines.append(f"[{index + 1}] {title}: {body}")
    return "\n".join(lines)


def build_prompt(row: dict[str, Any], location: str = "", *, include_passages: bool = True) -> str:
    """The question alone, or `Passages:` (one line `[i] title: sentences` each) and then `Question: ...`.

    The question comes last so that truncating a long prompt from the left (vrm's `prompt_left`) cuts passage
    text, never the question.
    """
    question = " ".join(_text(row, location, "question").split())
    if not include_passages:
        return question
    passages = _passages_text(row, location)
    return f"Passages:\n{passages}\n\nQuestion: {question}" if passages else question


def aspect_ratings(text: str, spans: Sequence[tuple[str, int, int]], rating: str) -> dict[str, float]:
    """Per aspect, higher is better: minus the covered share of `text`'s characters, or minus the span count."""
    if rating not in RATINGS:
        raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
    out = {}
    for aspect in ASPECTS:
        mine = [(start, end) for kind, start, end in spans if kind == aspect]
        if rating == "error_count":
            out[aspect] = -float(len(mine))
        else:
            covered = set()
            for start, end in mine:
                covered.update(range(start, end))
            out[aspect] = -round(len(covered) / len(text), 6) if covered else 0.0
    return out


# ----- splitting ------------------------------------------------------------------------------------------------
def question_key(question: str) -> str:
    return " ".join(question.split()).lower()


def split_questions(keys: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Question key -> split name; deterministic given the seed, independent of the keys' order."""
    if (
        len(fractions) != len(SPLITS)
        or any(f < 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0)
    ):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}")
    order = sorted(set(keys))
    random.Random(seed).shuffle(order)
    cut_train = round(len(order) * fractions[0])
    cut_validation = round(len(order) * (fractions[0] + fractions[1]))
    return {
        key: SPLITS[0] if i < cut_train else SPLITS[1] if i < cut_validation else SPLITS[2]
        for i, key in enumerate(order)
    }


# ----- statistics ------------------------------------------------------------------------------------------------
def _describe(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": round(statistics.median(ordered), 6),
        "mean": round(statistics.fmean(ordered), 4),
        "p90": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
        "max": ordered[-1],
    }


def _rate(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def _auc(winners: Sequence[float], losers: Sequence[float]) -> float | None:
    """P(a rating from a won pair > one from a lost pair), ties counted half (Mann-Whitney)."""
    if not winners or not losers:
        return None
    score = sum((w > v) + 0.5 * (w == v) for w in winners for v in losers)
    return round(score / (len(winners) * len(losers)), 4)


def _agreement(rows: Sequence[dict[str, Any]], aspect: str) -> dict[str, Any]:
    both = [
        (r[f"{aspect}_chosen"], r[f"{aspect}_rejected"])
        for r in rows
        if r[f"{aspect}_chosen"] is not None and r[f"{aspect}_rejected"] is not None
    ]
    n = len(both)
    share = (lambda k: round(k / n, 4)) if n else (lambda k: None)
    return {
        "pairs_rated_both_sides": n,
        "chosen_higher": share(sum(c > r for c, r in both)),
        "chosen_lower": share(sum(c < r for c, r in both)),
        "equal": share(sum(c == r for c, r in both)),
    }


def _prediction_1_outcomes(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How prediction 1's rating relates to its wins in its (non-tied) comparisons with predictions 2-4."""
    out = {}
    for aspect in (*ASPECTS, "any"):
        won, lost = [], []
        for record in records:
            ratings = record["ratings"]
            value = sum(ratings.values()) if aspect == "any" else ratings[aspect]
            for (a, _), preference in zip(COMPARISONS[:3], record["preference"][:3], strict=True):
                if preference:
                    (won if preference == a else lost).append(value)
        won_error, lost_error = sum(v < 0 for v in won), sum(v < 0 for v in lost)
        won_clean, lost_clean = len(won) - won_error, len(lost) - lost_error
        out[aspect] = {
            "win_rate_with_error": _rate(won_error, won_error + lost_error),
            "pairs_with_error": won_error + lost_error,
            "win_rate_without_error": _rate(won_clean, won_clean + lost_clean),
            "pairs_without_error": won_clean + lost_clean,
            "auc_rating_for_winning": _auc(won, lost),
        }
    return out


# ----- the recipe ------------------------------------------------------------------------------------------------
def _pair_row(prompt, texts, ratings, chosen, rejected, subset) -> dict[str, Any]:
    row = {
        "prompt": prompt,
        "chosen": texts[chosen],
        "rejected": texts[rejected],
        "subset": subset,
        "chosen_prediction": chosen,
        "rejected_prediction": rejected,
    }
    for aspect in ASPECTS:
        row[f"{aspect}_chosen"] = ratings[chosen][aspect] if chosen in ratings else None
        row[f"{aspect}_rejected"] = ratings[rejected][aspect] if rejected in ratings else None
    return row


def _rated_both_sides(row: dict[str, Any]) -> bool:
    """A pair whose two responses are rated (on every aspect): what the score and ratings -> weights terms
    learn from (`vrm.training.auxiliary_terms`)."""
    return all(row[f"{a}_chosen"] is not None and row[f"{a}_rejected"] is not None for a in ASPECTS)


def _write_jsonl(rows: Sequence[dict[str, Any]], path: str) -> None:
    with atomic_output(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def finegrained_qa_to_preferences(
    input_path: str,
    output_dir: str,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    rating: str = "error_share",
    include_passages: bool = True,
    include_corrections: bool = False,
) -> dict[str, Any]:
    """Write FineGrainedRLHF QA-Feedback as vrm preference files split by question; returns the summary.

    See the module docstring for the format, the ratings and the split. Every row is checked before anything
    is written; each file is written atomically.
    """
    if rating not in RATINGS:
        raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
    records = []
    for location, row in read_records(input_path):
        texts = {i: _text(row, location, f"prediction {i}") for i in range(1, 5)}
        record = {
            "location": location,
            "key": question_key(_text(row, location, "question")),
            "prompt": build_prompt(row, location, include_passages=include_passages),
            "texts": texts,
            "preference": _preferences(row, location),
        }
        spans = _errors(row, location)
        record["spans"] = spans
        record["ratings"] = aspect_ratings(texts[1], spans, rating)
        if include_corrections:
            corrected = row["feedback"].get("corrected-prediction")
            if not isinstance(corrected, str):
                raise _field_error(
                    location, "feedback.corrected-prediction", f"expected text, got {corrected!r:.60}"
                )
            record["corrected"] = corrected
        records.append(record)
    if not records:
        raise DataFormatError(f"{input_path}: no rows found")

    assignment = split_questions([r["key"] for r in records], fractions, seed)
    split_rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    split_questions_count = {name: 0 for name in SPLITS}
    ties = 0
    corrections_identical = 0
    for record in records:
        name = assignment[record["key"]]
        split_questions_count[name] += 1
        ratings = {1: record["ratings"]}
        for (a, b), preference in zip(COMPARISONS, record["preference"], strict=True):
            if preference == 0:
                ties += 1
                continue
            chosen, rejected = (a, b) if preference == 1 else (b, a)
            split_rows[name].append(
                _pair_row(record["prompt"], record["texts"], ratings, chosen, rejected, SUBSET)
            )
        if include_corrections:
            if not record["corrected"].strip() or record["corrected"].strip() == record["texts"][1].strip():
                corrections_identical += 1
                continue
            texts = {0: record["corrected"], 1: record["texts"][1]}
            ratings = {0: dict.fromkeys(ASPECTS, 0.0), 1: record["ratings"]}
            row = _pair_row(record["prompt"], texts, ratings, 0, 1, CORRECTION_SUBSET)
            split_rows[name].append(row)

    paths = {name: os.path.join(output_dir, f"{name}.jsonl") for name in SPLITS}
    for name in SPLITS:
        _write_jsonl(split_rows[name], paths[name])

    all_rows = [row for name in SPLITS for row in split_rows[name]]
    subsets = [SUBSET] + ([CORRECTION_SUBSET] if include_corrections else [])
    summary: dict[str, Any] = {
        "source": os.path.abspath(input_path),
        "recipe": "finegrained_qa",
        "rating": rating,
        "include_passages": include_passages,
        "include_corrections": include_corrections,
        "seed": seed,
        "fractions": list(fractions),
        "aspects": list(ASPECTS),
        "input_rows": len(records),
        "questions": len(assignment),
        "duplicate_question_rows": len(records) - len(assignment),
        "comparisons": len(records) * len(COMPARISONS),
        "ties_skipped": ties,
        "pairs_written": sum(row["subset"] == SUBSET for row in all_rows),
        "correction_pairs_written": sum(row["subset"] == CORRECTION_SUBSET for row in all_rows),
        "corrections_skipped_identical": corrections_identical,
        "splits": {
            name: {
                "path": os.path.abspath(paths[name]),
                "questions": split_questions_count[name],
                "pairs": len(split_rows[name]),
                "rated_both_sides": sum(_rated_both_sides(row) for row in split_rows[name]),
            }
            for name in SPLITS
        },
        "note": "fine-grained feedback covers prediction 1 only: ratings of predictions 2-4 are null",
        "error_spans": {a: sum(kind == a for r in records for kind, _, _ in r["spans"]) for a in ASPECTS},
        "prediction_1_ratings": {
            aspect: {
                "with_error": sum(r["ratings"][aspect] < 0 for r in records),
                "of": len(records),
                "stats": _describe([r["ratings"][aspect] for r in records]),
                "stats_when_error": _describe(
                    [r["ratings"][aspect] for r in records if r["ratings"][aspect] < 0]
                ),
            }
            for aspect in ASPECTS
        },
        "prediction_1_outcomes": _prediction_1_outcomes(records),
        "agreement": {
            subset: {a: _agreement([r for r in all_rows if r["subset"] == subset], a) for a in ASPECTS}
            for subset in subsets
        },
        "prompt_chars": _describe([len(r["prompt"]) for r in records]),
        "response_chars": _describe([len(t) for r in records for t in r["texts"].values()]),
    }
    write_json(summary, os.path.join(output_dir, "summary.json"))
    return summary
