"""Deep ensembles: separately trained vrm checkpoints scored as one reward model (`DeepEnsembleRewardModel`).

    from vrm import RewardPipeline
    rm = RewardPipeline.from_pretrained(["runs/rm-seed0", "runs/rm-seed1", "runs/rm-seed2"])
    rm("How do I sort a list?", "Use sorted(xs).")   # reward, reward_std, aleatoric_std, epistemic_std, ...

    vrm eval --model runs/rm-seed0 --model runs/rm-seed1 --ensemble --dataset test.jsonl

Each member scores the same token ids and applies its own stored normalization (`reward_mean`,
`reward_scale`); the ensemble is the uniform mixture of the members' predictive distributions
(`vrm.models.head_ensemble.combine_members`): `reward` = the members' mean reward, `aleatoric_std` = the root mean square
of the members' own `reward_std` (a member that is itself a multi-head ensemble brings its total std),
`epistemic_std` = the std of the member rewards over members, `reward_std^2 = aleatoric_std^2 +
epistemic_std^2`. Objective weights and scores are the members' means, so every member must have the same
number of objectives. The members read one input: their tokenizers (vocabulary, special tokens, chat
template) and recorded input format must agree, or loading names the directory that differs. The ensemble's
own config is the first member's, with `reward_mean` 0 and `reward_scale` 1 (so `fit_normalization` on the
ensemble normalizes the mixture) and the smallest `max_length` of the members.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vrm.data.state_cache import backbone_fingerprint
from vrm.models.config import record_tokenization
from vrm.models.head_ensemble import combine_members
from vrm.models.integrity import load_checked
from vrm.models.modeling import RewardModelOutput, VRMForSequenceClassification


class DeepEnsembleRewardModel(nn.Module):
    """Several `VRMForSequenceClassification`s behind one scoring `forward` (a `RewardModelOutput`)."""

    def __init__(self, members: Sequence[VRMForSequenceClassification], paths: Sequence[str] | None = None):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a deep ensemble needs at least 2 models, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.paths = list(paths) if paths is not None else [f"member {n}" for n in range(len(members))]
        config = copy.deepcopy(members[0].config)
        config.reward_mean, config.reward_scale = 0.0, 1.0
        lengths = [m.config.max_length for m in members if m.config.max_length]
        if lengths:
            record_tokenization(config, {"max_length": min(lengths)})
        config._name_or_path = " + ".join(self.paths)
        config.deep_ensemble_members = self.paths
        self.config = config

    def check_shared_backbone(self) -> None:
        """Members whose backbones compute the same states (same `vrm.data.state_cache.backbone_fingerprint`:
        backbone, weights checksum, dtype, pooling), e.g. heads trained on one frozen backbone, can share an
        embedding cache; otherwise a `ValueError` naming the first member that differs and how."""
        reference = backbone_fingerprint(self.members[0])
        for path, member in zip(self.paths[1:], self.members[1:], strict=True):
            fingerprint = backbone_fingerprint(member)
            differing = [key for key in reference if fingerprint.get(key) != reference[key]]
            if differing:
                raise ValueError(
                    f"{path}: its backbone differs from {self.paths[0]}'s ({', '.join(differing)}): an embedding "
                    "cache holds the states of one frozen backbone; score this ensemble without --embedding_cache"
                )
        self.shared_backbone = True

    shared_backbone = False  # set by `check_shared_backbone`: the members' backbones compute the same states

    def states_model(self) -> VRMForSequenceClassification:
        """The model whose backbone computes the states of an embedding cache (`vrm.data.state_cache`): the first
        member, once `check_shared_backbone` has passed (so the cache is also that member's alone)."""
        if not self.shared_backbone:
            raise ValueError(
                "a deep ensemble uses an embedding cache only when its members share one backbone "
                "(check_shared_backbone)"
            )
        return self.members[0]

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        prompt_lengths: Tensor | None = None,
        return_dict: bool | None = None,
        prompt_states: Tensor | None = None,
        response_states: Tensor | None = None,
        **kwargs: Any,
    ) -> RewardModelOutput | tuple:
        """Score sequences with every member; the mixture's reward, std (and its two parts), mean weights.

        Backbone states (`prompt_states` + `response_states`, from an embedding cache) are scored by every
        member's head when the members share their backbone (`check_shared_backbone`)."""
        states = prompt_states is not None or response_states is not None
        if kwargs or (input_ids is None) == (not states):
            given = sorted(kwargs) or ["no input_ids"]
            raise ValueError(
                f"a deep ensemble scores token ids (input_ids, attention_mask, prompt_lengths) or, with a shared "
                f"backbone, prompt_states + response_states; got {given}; it has no pair mode"
            )
        if states:
            self.states_model()  # refuses members that do not share a backbone
            if prompt_states is None or response_states is None:
                raise ValueError("prompt_states need response_states")
            outputs = [m(prompt_states=prompt_states, response_states=response_states) for m in self.members]
        else:
            outputs = [
                m(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
                for m in self.members
            ]
        rewards = torch.stack(
            [out.logits[:, 0].float() for out in outputs], -1
        )  # [B, N], members' normalization
        stds = torch.stack([out.reward_std.float() for out in outputs], -1)
        reward, total, aleatoric, epistemic = combine_members(rewards, stds)
        scale, offset = self.config.reward_scale, self.config.reward_mean

        def mean(name: str) -> Tensor:
            return torch.stack([getattr(out, name).float() for out in outputs]).mean(0)

        out = RewardModelOutput(
            logits=((reward - offset) / scale).unsqueeze(-1),
            reward_std=total / scale,
            objective_weights=mean("objective_weights"),
            objective_scores=mean("objective_scores"),
            aleatoric_std=aleatoric / scale,
            epistemic_std=epistemic / scale,
            member_rewards=(rewards - offset) / scale,
        )
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if use_dict else out.to_tuple()

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("a deep ensemble is not one checkpoint: keep (and pass) its members' directories")


def input_signature(tokenizer, config) -> dict[str, Any]:
    """What must agree for several models to read the same token ids: the tokenizer and the input format."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return {
        "vocabulary": hashlib.sha256(vocab.encode()).hexdigest(),
        "special tokens": [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id],
        "chat template": getattr(tokenizer, "chat_template", None),
        "input format": config.input_format,
        "response marker": config.response_marker_ids,
        "attention": "causal" if config.is_causal else "bidirectional",
    }


def check_same_input(paths: Sequence[str], tokenizers: Sequence, configs: Sequence) -> None:
    """A `ValueError` naming the first directory whose tokenizer, input format or objectives differ from the
    first model's."""
    reference = input_signature(tokenizers[0], configs[0])
    for path, tokenizer, config in zip(paths[1:], tokenizers[1:], configs[1:], strict=True):
        signature = input_signature(tokenizer, config)
        differing = [key for key in reference if signature[key] != reference[key]]
        if differing:
            raise ValueError(
                f"{path}: its {', '.join(differing)} differ from {paths[0]}'s: the models of a deep ensemble "
                "must share a tokenizer and input format"
            )
        if config.num_objectives != configs[0].num_objectives:
            raise ValueError(
                f"{path}: {config.num_objectives} objectives, but {paths[0]} has {configs[0].num_objectives}: "
                "a deep ensemble averages objective weights, so its models need the same number"
            )


def load_deep_ensemble(
    paths: Sequence[str], *, device=None, dtype=None, shared_backbone: bool = False
) -> tuple[DeepEnsembleRewardModel, Any]:
    """The members at `paths` (vrm checkpoints sharing an input format) as one model, and their tokenizer.

    `shared_backbone` (an embedding cache is asked for): the members must also share their backbone
    (`DeepEnsembleRewardModel.check_shared_backbone`), else a `ValueError` names the one that differs."""
    from transformers import AutoTokenizer

    for path in paths:
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path}: not a saved vrm model directory (no config.json)")
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            if json.load(handle).get("model_type") != "vrm":
                raise ValueError(
                    f"{path}: not a vrm model; a deep ensemble (--ensemble) takes vrm checkpoints"
                )
    tokenizers = [AutoTokenizer.from_pretrained(path) for path in paths]
    members = [load_checked(VRMForSequenceClassification, path, dtype=dtype) for path in paths]
    check_same_input(paths, tokenizers, [m.config for m in members])
    model = DeepEnsembleRewardModel(members, paths)
    if shared_backbone:
        model.check_shared_backbone()
    if device is not None:
        model.to(device)
    return model.eval(), tokenizers[0]


def ensemble_paths(models: Sequence[str], ensemble: bool, flag: str = "--model") -> str | list[str]:
    """The commands' `--model A [--model B ...] [--ensemble]`: one path, or the paths of one deep ensemble.

    Several models without `--ensemble`, or `--ensemble` with fewer than two, is a `ValueError` (the CLI's
    one-line error)."""
    models = list(models)
    if len(models) > 1 and not ensemble:
        raise ValueError(
            f"{len(models)} {flag} given: pass --ensemble to score them as one deep ensemble (mean reward, std "
            "across models), or give one"
        )
    if ensemble and len(models) < 2:
        raise ValueError(f"--ensemble needs at least two {flag} (the models of the deep ensemble)")
    return models if ensemble else models[0]
