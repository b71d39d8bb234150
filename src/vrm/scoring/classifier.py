"""Scoring reward models that are not vrm's: any `AutoModelForSequenceClassification` with one logit.

`SequenceClassifierPipeline` scores (prompt, response) pairs like a `RewardPipeline` does, formatting them the
way such models are trained:

* a tokenizer with a chat template: the conversation `[user: prompt, assistant: response]` (or the prompt's own
  messages) rendered by the template, tokenized without adding special tokens again;
* an encoder whose tokenizer has a separator (BERT-like): the text pair `tokenizer(prompt, response)`, i.e.
  `[CLS] prompt [SEP] response [SEP]` (with token type ids where the tokenizer makes them);
* otherwise: `prompt + "\\n\\n" + response`.

Sequences are capped at the model's position limit (`max_position_embeddings`, and the tokenizer's
`model_max_length` where it is set), whatever `max_length` asks for; over-long inputs lose prompt tokens first
(from the left, the end of the prompt is kept), then response tokens from the right, never special tokens.
The shared tokenizer is not modified. A model without `config.pad_token_id` gets the tokenizer's pad token
(or EOS): sequence classifiers of decoder models find their last token through it, and refuse batches without.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from vrm.data.examples import Text
from vrm.models.integrity import load_checked
from vrm.models.pooling import backbone_is_causal
from vrm.scoring.data_parallel import ScoringWorld
from vrm.scoring.scores import SequenceScores, score_in_shards

PLAIN_SEPARATOR = "\n\n"


def _messages(text: Text, role: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def _plain(text: Text) -> str:
    return text if isinstance(text, str) else PLAIN_SEPARATOR.join(m["content"] for m in text)


class SequenceClassifierPipeline:
    """Any `AutoModelForSequenceClassification` reward model (one logit), scored like a `RewardPipeline`.

    It has no uncertainty and no objectives: `reward_std` is 0 and the single objective weight is 1.
    `input_format` is `auto` (chat template, else text pair for encoders with a separator, else plain), or one
    of `chat`, `pair`, `plain`.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 16,
        max_length: int = 1024,
        input_format: str = "auto",
        world: ScoringWorld | None = None,
    ):
        self.model = model.eval()
        self.world = world or ScoringWorld()  # the processes that share each `score` call
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_token_id = next(
            (
                token
                for token in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
                if token is not None
            ),
            None,
        )
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad batches with")
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.pad_token_id
        limits = [max_length, getattr(model.config, "max_position_embeddings", None)]
        if 0 < (tokenizer.model_max_length or 0) < 1_000_000:  # tokenizers without a limit say 1e30
            limits.append(tokenizer.model_max_length)
        self.max_length = min(int(limit) for limit in limits if limit)
        if input_format == "auto":
            if getattr(tokenizer, "chat_template", None):
                input_format = "chat"
            elif tokenizer.sep_token_id is not None and not backbone_is_causal(model.config):
                input_format = "pair"
            else:
                input_format = "plain"
        if input_format not in ("chat", "pair", "plain"):
            raise ValueError(f"input_format must be auto, chat, pair or plain, got {input_format!r}")
        self.input_format = input_format
        self._special = set(tokenizer.all_special_ids)
        # what `vrm.scoring.score_file` (`vrm score`) and its manifest read of a pipeline
        self.normalize, self.conservative_lambda = False, 0.0
        self.template = SimpleNamespace(
            max_length=self.max_length, input_format=input_format, encode_parts=self.encode
        )

    def result(self, scores: SequenceScores, index: int) -> dict[str, Any]:
        """The score fields of row `index` as a JSON-ready dict (as `RewardPipeline.result`)."""
        return {
            "reward": float(scores.reward[index]),
            "reward_std": float(scores.reward_std[index]),
            "objective_weights": scores.objective_weights[index].tolist(),
            "objective_scores": scores.objective_scores[index].tolist(),
        }

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        device: str | None = None,
        dtype=None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> SequenceClassifierPipeline:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        load_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        model = load_checked(
            AutoModelForSequenceClassification, path, **load_kwargs, **({"dtype": dtype} if dtype else {})
        )
        if model.config.num_labels != 1:
            raise ValueError(f"{path}: a reward model has one output, this one has {model.config.num_labels}")
        if device:
            model.to(device)
        return cls(model, AutoTokenizer.from_pretrained(path, **load_kwargs), **kwargs)

    # ----- formatting -----------------------------------------------------------------------------------------
    def encode(self, prompt: Text, response: Text) -> dict[str, list[int]]:
        """Token ids (and token type ids, where the tokenizer makes them) of one pair, fitted to `max_length`."""
        tokenizer = self.tokenizer
        if self.input_format == "chat":
            messages = _messages(prompt, "user")
            full = tokenizer.apply_chat_template(messages + _messages(response, "assistant"), tokenize=False)
            head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            encoded = tokenizer(full, add_special_tokens=False, verbose=False)
            prompt_tokens = (
                len(tokenizer(head, add_special_tokens=False, verbose=False).input_ids)
                if full.startswith(head)
                else 0  # a template that rewrites earlier turns: no known boundary, cut from the left
            )
        elif self.input_format == "pair":
            encoded = tokenizer(_plain(prompt), _plain(response), verbose=False)
            try:
                sequence_ids = encoded.sequence_ids()
                prompt_tokens = max(i for i, s in enumerate(sequence_ids) if s == 0) + 1
            except (ValueError, AttributeError, NotImplementedError):  # slow tokenizers keep no sequence ids
                prompt_tokens = len(tokenizer(_plain(prompt), verbose=False).input_ids)
        else:
            head = _plain(prompt) + PLAIN_SEPARATOR
            encoded = tokenizer(head + _plain(response), verbose=False)
            prompt_tokens = len(tokenizer(head, verbose=False).input_ids)
        fields = {key: list(encoded[key]) for key in ("input_ids", "token_type_ids") if key in encoded}
        return self._fit(fields, prompt_tokens)

    def _fit(self, fields: dict[str, list[int]], prompt_tokens: int) -> dict[str, list[int]]:
        """Drop prompt tokens from the left, then response tokens from the right, keeping special tokens."""
        ids = fields["input_ids"]
        excess = len(ids) - self.max_length
        if excess <= 0:
            return fields
        cuttable = [i for i in range(len(ids)) if ids[i] not in self._special]
        prompt_side = [i for i in cuttable if i < prompt_tokens]
        response_side = [i for i in cuttable if i >= prompt_tokens]
        drop = set(prompt_side[:excess])
        if len(drop) < excess:
            drop.update(response_side[len(response_side) - (excess - len(drop)) :])
        if len(drop) < excess:
            raise ValueError(f"cannot fit {len(ids)} tokens into {self.max_length}: too many special tokens")
        return {key: [v for i, v in enumerate(values) if i not in drop] for key, values in fields.items()}

    # ----- scoring --------------------------------------------------------------------------------------------
    def _batch(self, rows: list[dict[str, list[int]]], device) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        batch = {
            "input_ids": torch.full((len(rows), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        }
        if all("token_type_ids" in row for row in rows):
            batch["token_type_ids"] = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):  # right padding: the classifier reads the last non-pad token
            length = len(row["input_ids"])
            batch["attention_mask"][index, :length] = 1
            for key in ("input_ids", "token_type_ids"):
                if key in batch:
                    batch[key][index, :length] = torch.tensor(row[key], dtype=torch.long)
        return {key: value.to(device) for key, value in batch.items()}

    @torch.no_grad()
    def score(
        self, prompts: Sequence[Text], responses: Sequence[Text], progress: bool = False
    ) -> SequenceScores:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        rows = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        costs = [len(row["input_ids"]) for row in rows]
        show = progress and self.world.is_main
        return score_in_shards(
            self.world,
            range(len(rows)),
            costs,
            lambda index: self._score_rows([rows[i] for i in index], show),
        )

    def _score_rows(self, rows: list[dict[str, list[int]]], progress: bool) -> SequenceScores:
        device = next(self.model.parameters()).device
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # little padding
        rewards = torch.empty(len(rows))
        starts = range(0, len(rows), self.batch_size)
        for start in tqdm(starts, disable=not progress, leave=False):
            index = order[start : start + self.batch_size]
            batch = self._batch([rows[i] for i in index], device)
            rewards[index] = self.model(**batch).logits[:, 0].float().cpu()
        count = len(rows)
        return SequenceScores(rewards, torch.zeros(count), torch.ones(count, 1), rewards[:, None].clone())
