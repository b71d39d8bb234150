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

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import MIN_REWARD_SCALE, record_tokenization
from .conservative import check_conservative_lambda
from .data import (
    PreferenceTokenizer,
    Text,
    length_sorted_batches,
)
from .embeddings import EmbeddingCache
from .integrity import NonFiniteError, load_checked
from .modeling import PromptBoundaryError, VRMForSequenceClassification, find_prompt_end
from .shared_prompt import has_shared_prompts, score_layout, score_prompt_trees


@dataclass
class SequenceScores:
    reward: torch.Tensor  # [N]
    reward_std: torch.Tensor  # [N]
    objective_weights: torch.Tensor  # [N, K]
    objective_scores: torch.Tensor  # [N, K]
    # ensembles only (`vrm.ensemble`, `vrm.deep_ensemble`): reward_std^2 = aleatoric_std^2 + epistemic_std^2
    aleatoric_std: torch.Tensor | None = None  # [N]
    epistemic_std: torch.Tensor | None = None  # [N]
    member_rewards: torch.Tensor | None = None  # [N, members]

    def select(self, index: torch.Tensor | slice) -> SequenceScores:
        def part(values: torch.Tensor | None) -> torch.Tensor | None:
            return None if values is None else values[index]

        return SequenceScores(
            self.reward[index],
            self.reward_std[index],
            self.objective_weights[index],
            self.objective_scores[index],
            part(self.aleatoric_std),
            part(self.epistemic_std),
            part(self.member_rewards),
        )


@torch.no_grad()
def score_sequences(
    model: VRMForSequenceClassification,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    pad_token_id: int,
    batch_size: int = 32,
    progress: bool = False,
    description: str = "scoring",
    embedding_cache: EmbeddingCache | None = None,
) -> SequenceScores:
    """Score token sequences in batches sorted by length (little padding), returned in input order.

    With an `embedding_cache` (a model trained with `--freeze_backbone`), the backbone states come from the cache
    (computed into it once) and only the head runs here.
    """
    model.eval()
    device = next(model.parameters()).device
    count, k = len(sequences), model.config.num_objectives
    out = SequenceScores(torch.empty(count), torch.empty(count), torch.empty(count, k), torch.empty(count, k))

    def store(index, result) -> None:
        out.reward[index] = result.logits[:, 0].float().cpu()
        out.reward_std[index] = result.reward_std.float().cpu()
        out.objective_weights[index] = result.objective_weights.float().cpu()
        out.objective_scores[index] = result.objective_scores.float().cpu()
        if getattr(result, "member_rewards", None) is not None:  # an ensemble
            if out.member_rewards is None:
                out.aleatoric_std, out.epistemic_std = torch.empty(count), torch.empty(count)
                out.member_rewards = torch.empty(count, result.member_rewards.shape[-1])
            out.aleatoric_std[index] = result.aleatoric_std.float().cpu()
            out.epistemic_std[index] = result.epistemic_std.float().cpu()
            out.member_rewards[index] = result.member_rewards.float().cpu()

    if embedding_cache is not None:
        prompt_states, response_states = embedding_cache.states(
            model, sequences, prompt_lengths, pad_token_id, description
        )
        for start in range(0, count, 4096):
            part = slice(start, start + 4096)
            store(
                part,
                model(
                    prompt_states=prompt_states[part].to(device),
                    response_states=response_states[part].to(device),
                ),
            )
        return out
    if score_layout(model) == "shared_prompt" and (
        not model.config.is_causal or has_shared_prompts(sequences, prompt_lengths)
    ):  # a prompt shared by several sequences is computed once (vrm.shared_prompt)
        for index, result in score_prompt_trees(model, sequences, prompt_lengths, pad_token_id, batch_size):
            store(index, result)
        return out
    batches = length_sorted_batches(sequences, batch_size, pad_token_id)
    total = -(-count // batch_size)
    for index, ids, mask in tqdm(batches, total=total, desc=description, disable=not progress, leave=False):
        lengths = torch.tensor([prompt_lengths[i] for i in index])
        store(
            index,
            model(
                input_ids=ids.to(device), attention_mask=mask.to(device), prompt_lengths=lengths.to(device)
            ),
        )
    return out


def split_conversation(
    conversation: list[dict[str, str]],
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A whole conversation as (prompt messages, final assistant message)."""
    if not conversation or conversation[-1].get("role") != "assistant":
        raise ValueError("a conversation to score must end with an assistant message")
    return conversation[:-1], conversation[-1:]


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
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        if isinstance(embedding_cache, str):
            embedding_cache = EmbeddingCache(embedding_cache, batch_size=batch_size)
        self.embedding_cache = embedding_cache
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.normalize = normalize
        self.conservative_lambda = check_conservative_lambda(conservative_lambda)  # >= 0, finite
        overrides = {"max_length": max_length} if max_length else {}
        self.template = PreferenceTokenizer.from_model_config(tokenizer, model.config, **overrides)

    @classmethod
    def from_pretrained(
        cls, path: str | Sequence[str], *, device: str | None = None, dtype=None, **kwargs: Any
    ) -> RewardPipeline:
        """A pipeline on the checkpoint at `path`, or, given several paths, on their deep ensemble
        (`vrm.deep_ensemble`: mean reward, std across models, the models' own std as aleatoric)."""
        from transformers import AutoTokenizer

        from .runtime import resolve

        device, dtype = resolve(device, dtype)  # auto: CUDA + bfloat16 when available, else CPU + fp32
        if not isinstance(path, str):
            paths = list(path)
            if len(paths) != 1:
                if kwargs.get("embedding_cache"):
                    raise ValueError("a deep ensemble cannot use an embedding cache (its models differ)")
                from .deep_ensemble import load_deep_ensemble

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


# ----- reward models that are not vrm's (`vrm.classifier`) ---------------------------------------------------
def __getattr__(name: str):
    if name == "SequenceClassifierPipeline":  # it lives in vrm.classifier, which imports this module
        from .classifier import SequenceClassifierPipeline

        return SequenceClassifierPipeline
    if name == "score_file":  # it lives in vrm.scorefile, which imports this module
        from .scorefile import score_file

        return score_file
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_scorer(path: str | Sequence[str], *, trust_remote_code: bool = False, **kwargs: Any):
    """A `RewardPipeline` for vrm checkpoints, a `vrm.classifier.SequenceClassifierPipeline` for other reward
    models (loaded with `trust_remote_code` when they need their own code; vrm checkpoints never do). Several
    paths: the deep ensemble of those vrm checkpoints (`vrm.deep_ensemble`)."""
    from .classifier import SequenceClassifierPipeline
    from .runtime import resolve

    kwargs["device"], kwargs["dtype"] = resolve(kwargs.get("device"), kwargs.get("dtype"))
    if not isinstance(path, str):
        return RewardPipeline.from_pretrained(list(path), **kwargs)
    config_path = os.path.join(path, "config.json")
    if os.path.isdir(path) and os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as handle:
            if json.load(handle).get("model_type") == "vrm":
                return RewardPipeline.from_pretrained(path, **kwargs)
    elif os.path.exists(path) or path.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{path}: not a saved model directory (no config.json)")
    for vrm_only in ("normalize", "conservative_lambda"):
        kwargs.pop(vrm_only, None)
    if kwargs.pop("embedding_cache", None):
        print(f"[vrm] {path} is not a vrm model: scored without the embedding cache", flush=True)
    return SequenceClassifierPipeline.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
