"""Scoring with a trained reward model: `score_sequences` (token ids) and `RewardPipeline` (texts).

    from vrm import RewardPipeline
    rm = RewardPipeline.from_pretrained("runs/my-rm")
    rm("How do I sort a list?", "Use sorted(xs).")            # one dict
    rm(["q1", "q2"], ["a1", "a2"])                               # a list of dicts
    rm([[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])   # whole conversations

Each result holds `reward` (normalized with the `reward_mean` / `reward_scale` stored in the checkpoint config),
`reward_std`, `objective_weights`, `objective_scores`, and `conservative_reward = reward - lambda * reward_std`
when the pipeline has `conservative_lambda > 0` (a pessimistic reward against over-optimization in RL).
Texts are templated exactly as at training time (`PreferenceTokenizer.from_model_config`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from vrm.data.examples import Text
from vrm.data.state_cache import EmbeddingCache
from vrm.data.tokenization import PreferenceTokenizer
from vrm.models.config import MIN_REWARD_SCALE, record_tokenization
from vrm.models.integrity import NonFiniteError, load_checked
from vrm.models.modeling import VRMForSequenceClassification
from vrm.models.pooling import PromptBoundaryError, find_prompt_end
from vrm.scoring.conservative import check_conservative_lambda
from vrm.scoring.data_parallel import ScoringWorld
from vrm.scoring.scores import SequenceScores, score_sequences


def split_conversation(
    conversation: list[dict[str, str]],
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A whole conversation as (prompt messages, final assistant message)."""
    if not conversation or conversation[-1].get("role") != "assistant":
        raise ValueError("a conversation to score must end with an assistant message")
    return conversation[:-1], conversation[-1:]


def position_limit(model) -> int | None:
    """The most tokens the backbone(s) of `model` can read: `VRMForSequenceClassification.max_positions` (the
    learned position table), the smallest over a deep ensemble's members; None where positions are computed."""
    limits = [member.max_positions for member in getattr(model, "members", None) or [model]]
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


class RewardPipeline:
    """Batched scoring of (prompt, response) pairs or whole conversations with a vrm checkpoint."""

    def __init__(
        self,
        model: VRMForSequenceClassification,
        tokenizer,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        normalize: bool = True,
        conservative_lambda: float = 0.0,
        embedding_cache: EmbeddingCache | str | None = None,
        world: ScoringWorld | None = None,
    ):
        """`world`: the processes of a data-parallel launch (`vrm.scoring.data_parallel`) that share each
        `score` call, each scoring a part and all receiving every score; default one process."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length is not None and (isinstance(max_length, bool) or max_length < 1):
            raise ValueError(f"max_length must be a number of tokens >= 1, got {max_length!r}")
        self.model = model.eval()
        if isinstance(embedding_cache, str):
            embedding_cache = EmbeddingCache(embedding_cache, batch_size=batch_size)
        self.embedding_cache = embedding_cache
        self.world = world or ScoringWorld()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.normalize = normalize
        self.conservative_lambda = check_conservative_lambda(conservative_lambda)  # >= 0, finite
        overrides = {"max_length": max_length} if max_length else {}
        self.template = PreferenceTokenizer.from_model_config(tokenizer, model.config, **overrides)
        limit = position_limit(model)
        if limit is not None and self.template.max_length > limit:
            # longer inputs would index past the backbone's position embeddings ("index 512 is out of bounds")
            print(
                f"[vrm] max_length {self.template.max_length} is more than the backbone's {limit} positions: "
                f"inputs are cut to {limit} tokens",
                flush=True,
            )
            self.template = PreferenceTokenizer.from_model_config(tokenizer, model.config, max_length=limit)

    @classmethod
    def from_pretrained(
        cls, path: str | Sequence[str], *, device: str | None = None, dtype=None, **kwargs: Any
    ) -> RewardPipeline:
        """A pipeline on the checkpoint at `path`, or, given several paths, on their deep ensemble
        (`vrm.scoring.deep_ensemble`: mean reward, std across models, the models' own std as aleatoric)."""
        from transformers import AutoTokenizer

        from vrm.scoring.device import resolve

        device, dtype = resolve(device, dtype)  # auto: CUDA + bfloat16 when available, else CPU + fp32
        if not isinstance(path, str):
            paths = list(path)
            if len(paths) != 1:
                if kwargs.get("embedding_cache"):
                    raise ValueError("a deep ensemble cannot use an embedding cache (its models differ)")
                from vrm.scoring.deep_ensemble import load_deep_ensemble

                ensemble, tokenizer = load_deep_ensemble(paths, device=device, dtype=dtype)
                return cls(ensemble, tokenizer, **kwargs)
            path = paths[0]
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path}: not a saved vrm model directory (no config.json)")
        model = load_checked(VRMForSequenceClassification, path, dtype=dtype)
        model.to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), **kwargs)

    def score(
        self, prompts: Sequence[Text], responses: Sequence[Text], progress: bool = False
    ) -> SequenceScores:
        """Tensors of scores for parallel lists of prompts and responses."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.template.tokenize_single(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores = score_sequences(
            self.model,
            [ids for ids, _ in encoded],
            [n for _, n in encoded],
            self.tokenizer.pad_token_id,
            self.batch_size,
            progress,
            embedding_cache=self.embedding_cache,
            world=self.world,
        )
        return self._maybe_unnormalize(scores)

    def _maybe_unnormalize(self, scores: SequenceScores) -> SequenceScores:
        if not self.normalize:  # undo the stored normalization
            config = self.model.config
            scores.reward = scores.reward * config.reward_scale + config.reward_mean
            scores.reward_std = scores.reward_std * config.reward_scale
            if scores.member_rewards is not None:
                scores.aleatoric_std = scores.aleatoric_std * config.reward_scale
                scores.epistemic_std = scores.epistemic_std * config.reward_scale
                scores.member_rewards = scores.member_rewards * config.reward_scale + config.reward_mean
        return scores

    def score_texts(self, texts: Sequence[str], prompt_texts: Sequence[str] | None = None) -> SequenceScores:
        """Score already-templated sequences (prompt and response in one string, as RL frameworks send them).

        The prompt boundary is the length of the matching `prompt_texts` entry when given (and a prefix of the
        text), else it is found from the response marker saved at training time. Over-long texts are cut by the
        training-time policy (prompt from the left). A text of padding only, or with no response after its
        prompt, is a `ValueError` naming its index (as `vrm serve`'s `/get_reward` refuses it).
        """
        if prompt_texts is not None and len(prompt_texts) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(prompt_texts)} prompts")
        marker = self.model.config.response_marker_ids
        pad = self.tokenizer.pad_token_id
        sequences, lengths = [], []
        for index, text in enumerate(texts):
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            if not ids or all(token == pad for token in ids):
                raise ValueError(f"text {index} has no tokens other than padding: nothing to score")
            prompt = prompt_texts[index] if prompt_texts is not None else None
            if prompt is not None and text.startswith(prompt):
                prompt_length = len(self.tokenizer(prompt, add_special_tokens=False).input_ids)
                if prompt_length == 0:
                    raise ValueError(
                        f"prompt {index} has no tokens: send the templated prompt of text {index}"
                    )
            else:
                row = torch.tensor([ids])
                try:  # the model's own rule: the last marker that is followed by a response token
                    prompt_length = int(find_prompt_end(row, torch.ones_like(row), marker_ids=marker)[0]) + 1
                except PromptBoundaryError:
                    raise ValueError(
                        f"text {index}: cannot find where the response starts (no prompt given, and the response "
                        f"marker {marker} is not in the text); send it with the model's chat template applied"
                    ) from None
            if prompt_length >= len(ids):
                raise ValueError(
                    f"text {index} has no response: its {len(ids)} tokens all belong to the prompt (prompt {index})"
                )
            fitted = self.template.fit(ids[:prompt_length], ids[prompt_length:])
            sequences.append(fitted[0] + fitted[1])
            lengths.append(len(fitted[0]))
        scores = score_sequences(self.model, sequences, lengths, self.tokenizer.pad_token_id, self.batch_size)
        return self._maybe_unnormalize(scores)

    def __call__(self, prompts, responses=None, progress: bool = False):
        """Score one pair, lists of pairs, or (with `responses=None`) whole conversations."""
        single = isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)
        )
        if single:
            prompts = [prompts]
            responses = None if responses is None else [responses]
        if responses is None:
            pairs = [split_conversation(conversation) for conversation in prompts]
            prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
        scores = self.score(prompts, responses, progress)
        results = [self.result(scores, i) for i in range(len(prompts))]
        return results[0] if single else results

    def result(self, scores: SequenceScores, index: int) -> dict[str, Any]:
        """The score fields of row `index` as a JSON-ready dict."""
        result = {
            "reward": float(scores.reward[index]),
            "reward_std": float(scores.reward_std[index]),
            "objective_weights": scores.objective_weights[index].tolist(),
            "objective_scores": scores.objective_scores[index].tolist(),
        }
        if scores.member_rewards is not None:  # an ensemble: the std's two parts and each member's reward
            result["aleatoric_std"] = float(scores.aleatoric_std[index])
            result["epistemic_std"] = float(scores.epistemic_std[index])
            result["member_rewards"] = scores.member_rewards[index].tolist()
        names = self.model.config.objective_names
        if names:  # the same values keyed by objective name (the lists above stay, in the model's order)
            result["objective_weights_by_name"] = dict(zip(names, result["objective_weights"], strict=True))
            result["objective_scores_by_name"] = dict(zip(names, result["objective_scores"], strict=True))
        if self.conservative_lambda:
            result["conservative_reward"] = result["reward"] - self.conservative_lambda * result["reward_std"]
        return result

    def fit_normalization(self, prompts: Sequence[Text], responses: Sequence[Text]) -> tuple[float, float]:
        """Measure the raw reward's mean and std on a reference set and store them in the model config.

        Afterwards (and after `save_pretrained`, in every later load) rewards are `(r - mean) / std`.
        """
        normalize, self.normalize = self.normalize, False
        try:
            raw = self.score(prompts, responses).reward
        finally:
            self.normalize = normalize
        if raw.numel() < 2:
            raise ValueError("need at least 2 reference responses to measure a reward mean and std")
        if not torch.isfinite(raw).all():
            raise NonFiniteError(
                "the model gave NaN or infinite rewards on the reference set: nothing to normalize"
            )
        mean, std = float(raw.mean()), float(raw.std())
        if std < MIN_REWARD_SCALE:  # dividing by it would turn tiny differences into huge rewards
            raise ValueError(
                f"the {raw.numel()} reference rewards are (nearly) all equal (std {std:.3g} < {MIN_REWARD_SCALE}): "
                "cannot normalize by their spread; use reference responses of varied quality"
            )
        self.model.config.reward_mean, self.model.config.reward_scale = mean, std
        return mean, std

    def save_pretrained(self, path: str) -> None:
        """The model (with its normalization) and tokenizer; the config records this pipeline's tokenization
        (keeping the training-time `truncation` policy recorded, as scoring always uses `prompt_left`)."""
        settings = self.template.settings()
        recorded = (getattr(self.model.config, "tokenization", None) or {}).get("truncation")
        if recorded:
            settings["truncation"] = recorded
        record_tokenization(self.model.config, settings)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
