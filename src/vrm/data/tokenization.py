"""Templating and tokenization of preference pairs, with counted truncation.

A (prompt, response) becomes tokens in one of three input formats, recorded in the model config:

* `chat`:  the tokenizer's chat template; the prompt ends with the generation prompt (assistant header).
* `pair`:  encoder tokenizers with a separator: `[CLS] prompt [SEP] response [SEP]`.
* `plain`: `[BOS] prompt <marker> response [EOS]` with `PLAIN_RESPONSE_MARKER` between them.

The prompt and the response are tokenized separately, so the boundary is exact; the tokens that end every
prompt (`response_marker_ids`) let the model find it again in sequences tokenized elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vrm.data.examples import Message, PreferenceExample, Text

PLAIN_RESPONSE_MARKER = "\n\n### Response:\n"
INPUT_FORMATS = ("auto", "chat", "pair", "plain")
TRUNCATION_POLICIES = ("prompt_left", "drop")


# ----- templating and tokenization ----------------------------------------------------------------------------
@dataclass
class TruncationStats:
    """How many pairs needed truncation or were dropped; printed after tokenization, never silent."""

    pairs: int = 0
    kept: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped_too_long: int = 0
    dropped_identical: int = 0
    marker_mismatch: int = 0

    def summary(self) -> str:
        text = (
            f"{self.pairs} pairs -> {self.kept} kept; truncated: {self.prompt_truncated} prompts (from the left), "
            f"{self.response_truncated} responses (from the right); dropped: {self.dropped_too_long} too long, "
            f"{self.dropped_identical} with identical chosen/rejected tokens"
        )
        if self.marker_mismatch:
            text += f"; {self.marker_mismatch} prompts do not end with the response marker"
        return text


@dataclass
class TokenizedPair:
    chosen_input_ids: list[int]
    rejected_input_ids: list[int]
    prompt_length: int
    margin: float | None
    attribute_targets: list[float] | None
    subset: str | None
    objective_label: int | None = None
    rating_differences: list[float] | None = None


def prepare_tokenizer(tokenizer):
    """Give a tokenizer without a pad token one (its EOS or UNK token): padding is masked anyway."""
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    return tokenizer


def _as_messages(text: Text, role: str) -> list[Message]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def _as_plain(text: Text) -> str:
    if isinstance(text, str):
        return text
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in text)


class PreferenceTokenizer:
    """Turns (prompt, response) into token ids with an exact prompt length, under a length budget.

    Args:
        tokenizer: a `transformers` tokenizer.
        max_length: the budget for prompt + response tokens.
        truncation: `prompt_left` — cut responses longer than `max_length - max_prompt_length` from the right,
            then cut the prompt from the left (keeping its leading special token and the response marker);
            `drop` — drop pairs that do not fit. Both count what they did in `TruncationStats`.
        max_prompt_length: tokens of prompt always kept when responses are long (default `max_length // 2`).
        input_format: `auto` (chat template if the tokenizer has one, `pair` for encoder tokenizers with a
            separator, else `plain`), or one of `chat`, `pair`, `plain`.
    """

    @classmethod
    def from_arguments(cls, tokenizer, args, is_causal: bool) -> PreferenceTokenizer:
        """The tokenizer training builds from its arguments (`vrm.training.VRMTrainingArguments`' `max_length`,
        `truncation`, `max_prompt_length`, `input_format`)."""
        return cls(
            tokenizer,
            max_length=args.max_length,
            truncation=args.truncation,
            max_prompt_length=args.max_prompt_length,
            input_format=args.input_format,
            is_causal=is_causal,
        )

    def __init__(
        self,
        tokenizer,
        max_length: int = 512,
        truncation: str = "prompt_left",
        max_prompt_length: int | None = None,
        input_format: str = "auto",
        is_causal: bool = True,
    ):
        if truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.max_length = int(max_length)
        self.truncation = truncation
        self.max_prompt_length = max_prompt_length if max_prompt_length is not None else self.max_length // 2
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be between 0 and max_length ({self.max_length})"
            )
        if input_format == "auto":
            if getattr(tokenizer, "chat_template", None):
                input_format = "chat"
            elif tokenizer.sep_token_id is not None and not is_causal:
                input_format = "pair"
            else:
                input_format = "plain"
        self.input_format = input_format
        self.response_marker_ids = self._response_marker()
        prefix = tokenizer.cls_token_id if input_format == "pair" else tokenizer.bos_token_id
        adds_prefix = prefix is not None and tokenizer("a").input_ids[:1] == [prefix]
        self.prefix_ids = [prefix] if adds_prefix and input_format != "chat" else []

    @classmethod
    def from_model_config(cls, tokenizer, config, **overrides) -> PreferenceTokenizer:
        """The tokenizer a trained model expects, from the tokenization block of its config (`settings()` as
        recorded at training time; checkpoints without `max_prompt_length` get `max_length // 2`, as before).

        The recorded `truncation` policy applies to training only: evaluating and scoring always truncate by
        `prompt_left` (counted in the stats), so that no benchmark row is dropped because the model was trained
        with `--truncation drop`. Pass `truncation=` to override."""
        block = getattr(config, "tokenization", None) or {}
        kwargs = {
            "max_length": block.get("max_length") or 512,
            "max_prompt_length": block.get("max_prompt_length"),
            "truncation": "prompt_left",
            "input_format": block.get("input_format") or "auto",
            "is_causal": bool(config.is_causal),
        }
        kwargs.update(overrides)
        if (
            "max_length" in overrides and "max_prompt_length" not in overrides
        ):  # keep it inside the new budget
            recorded = kwargs["max_prompt_length"]
            if recorded is not None and not 0 < recorded < kwargs["max_length"]:
                kwargs["max_prompt_length"] = None
        return cls(tokenizer, **kwargs)

    def settings(self) -> dict[str, Any]:
        """What a checkpoint records about this tokenization (`vrm.models.config.record_tokenization`)."""
        return {
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "truncation": self.truncation,
            "input_format": self.input_format,
            "response_marker_ids": self.response_marker_ids,
        }

    def _encode(self, text: str) -> list[int]:
        # verbose=False: the tokenizer's "longer than model_max_length" warning fires before our truncation
        return self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids

    def _response_marker(self) -> list[int] | None:
        if self.input_format == "pair":
            return [self.tokenizer.sep_token_id]
        if self.input_format == "plain":
            return self._encode(PLAIN_RESPONSE_MARKER)
        probe = [{"role": "user", "content": "Hello"}]
        without = self.tokenizer.apply_chat_template(probe, tokenize=False)
        with_prompt = self.tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        suffix = with_prompt[len(without) :] if with_prompt.startswith(without) else ""
        return self._encode(suffix) if suffix else None

    def encode_parts(self, prompt: Text, response: Text) -> tuple[list[int], list[int]]:
        """Token ids of the templated prompt (ending with the response marker) and of the response."""
        if self.input_format == "chat":
            messages = _as_messages(prompt, "user")
            prompt_text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            full_text = self.tokenizer.apply_chat_template(
                messages + _as_messages(response, "assistant"), tokenize=False
            )
            if full_text.startswith(prompt_text):
                response_text = full_text[len(prompt_text) :]
            else:  # templates that rewrite earlier turns: keep the prompt as templated, append the answer
                response_text = _as_plain(response) + (self.tokenizer.eos_token or "")
            return self._encode(prompt_text), self._encode(response_text)
        prompt_ids = self.prefix_ids + self._encode(_as_plain(prompt)) + list(self.response_marker_ids or [])
        response_ids = self._encode(_as_plain(response))
        end = self.tokenizer.sep_token_id if self.input_format == "pair" else self.tokenizer.eos_token_id
        if end is not None:
            response_ids.append(end)
        return prompt_ids, response_ids

    def _cut_prompt(self, prompt_ids: list[int], budget: int) -> list[int]:
        """Drop prompt tokens from the left, keeping the leading special token and the response marker."""
        head = len(self.prefix_ids)
        tail = len(self.response_marker_ids or [])
        keep = max(budget - head - tail, 0)
        body = prompt_ids[head : len(prompt_ids) - tail]
        return prompt_ids[:head] + body[len(body) - keep :] + prompt_ids[len(prompt_ids) - tail :]

    def _fit(
        self, prompt_ids: list[int], responses: list[list[int]], stats: TruncationStats
    ) -> tuple[list[int], list[list[int]]] | None:
        """Apply the truncation policy; None means the pair is dropped."""
        longest = max(len(r) for r in responses)
        if len(prompt_ids) + longest <= self.max_length:
            return prompt_ids, responses
        if self.truncation == "drop":
            stats.dropped_too_long += 1
            return None
        protected = len(self.prefix_ids) + len(self.response_marker_ids or [])
        response_budget = self.max_length - max(min(len(prompt_ids), self.max_prompt_length), protected)
        if longest > response_budget:
            responses = [r[:response_budget] for r in responses]
            stats.response_truncated += 1
            longest = response_budget
        if len(prompt_ids) + longest > self.max_length:
            prompt_ids = self._cut_prompt(prompt_ids, self.max_length - longest)
            stats.prompt_truncated += 1
        return prompt_ids, responses

    def tokenize_pairs(
        self, examples: Sequence[PreferenceExample]
    ) -> tuple[list[TokenizedPair], TruncationStats]:
        """Tokenize pairs; over-long ones are truncated or dropped by policy and counted in the stats."""
        stats = TruncationStats(pairs=len(examples))
        marker = self.response_marker_ids
        out: list[TokenizedPair] = []
        for example in examples:
            prompt_ids, chosen_ids = self.encode_parts(example.prompt, example.chosen)
            _, rejected_ids = self.encode_parts(example.prompt, example.rejected)
            if marker and prompt_ids[-len(marker) :] != marker:
                stats.marker_mismatch += 1
            fitted = self._fit(prompt_ids, [chosen_ids, rejected_ids], stats)
            if fitted is None:
                continue
            prompt_ids, (chosen_ids, rejected_ids) = fitted
            if chosen_ids == rejected_ids:
                stats.dropped_identical += 1
                continue
            out.append(
                TokenizedPair(
                    chosen_input_ids=prompt_ids + chosen_ids,
                    rejected_input_ids=prompt_ids + rejected_ids,
                    prompt_length=len(prompt_ids),
                    margin=example.margin,
                    attribute_targets=example.attribute_targets,
                    subset=example.subset,
                    objective_label=example.objective_label,
                    rating_differences=example.rating_differences,
                )
            )
        stats.kept = len(out)
        return out, stats

    def fit(self, prompt_ids: list[int], response_ids: list[int]) -> tuple[list[int], list[int]]:
        """Fit one (prompt, response) into `max_length`, truncating (never dropping) by the `prompt_left` rule."""
        policy, self.truncation = self.truncation, "prompt_left"
        try:
            prompt_ids, (response_ids,) = self._fit(prompt_ids, [response_ids], TruncationStats())
        finally:
            self.truncation = policy
        return prompt_ids, response_ids

    def tokenize_single(self, prompt: Text, response: Text) -> tuple[list[int], int]:
        """Token ids of one (prompt, response) and its prompt length; over-long inputs are always truncated."""
        prompt_ids, response_ids = self.fit(*self.encode_parts(prompt, response))
        return prompt_ids + response_ids, len(prompt_ids)
