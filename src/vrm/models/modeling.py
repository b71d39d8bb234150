"""`VRMForSequenceClassification`: any `transformers` backbone plus a `LatentRewardHead`.

The backbone runs once over the templated sequence `x ⊕ y`:

* `h_xy` — the response state: the last real token (causal backbones) or a mean/CLS pool (encoders);
* `h_x`  — the prompt state: the hidden state at the last prompt token. A causal backbone's state there
  depends on `x` alone, so the same pass serves both. A bidirectional encoder sees the response too, so its
  prompt state comes from a second pass over the prompt tokens alone (once per pair, not per response).

The prompt boundary comes from `prompt_lengths` (number of real tokens that belong to the prompt) or, when
they are not given, from the last occurrence of `config.response_marker_ids` that is followed by at least
one real token (the chat template's assistant header, or the separator of the plain format).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .config import VRMConfig
from .head_ensemble import EnsembleHead
from .heads import HeadOutput, LatentRewardHead, PairSamples
from .integrity import check_finite_weights
from .pooling import PromptBoundaryError as PromptBoundaryError
from .pooling import backbone_is_causal, find_prompt_end, first_token_index, last_token_index
from .shared_prompt import encode_rows_as_trees, encode_tree_pairs, score_layout


@dataclass
class RewardModelOutput(ModelOutput):
    """Output of `VRMForSequenceClassification.forward`.

    `logits` is the (normalized) plug-in reward, shape [B, 1], as for any sequence-classification reward model.
    An ensemble (`config.ensemble_members > 1`, `vrm.models.head_ensemble`) also fills `aleatoric_std` and `epistemic_std`
    ([B], with reward_std^2 = aleatoric_std^2 + epistemic_std^2) and `member_rewards` ([B, N], normalized);
    a single head leaves them None.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    reward_std: Tensor | None = None
    objective_weights: Tensor | None = None
    objective_scores: Tensor | None = None
    features: Tensor | None = None
    aleatoric_std: Tensor | None = None
    epistemic_std: Tensor | None = None
    member_rewards: Tensor | None = None


@dataclass
class PairwiseRewardOutput(PairSamples):
    """Output of the pair path of `VRMForSequenceClassification.forward` (`chosen_*` and `rejected_*`, or
    `chosen_states` and `rejected_states`): the samples and KL terms the negative ELBO of `vrm.training.losses` needs."""


# names transformers gives learned position-embedding tables (BERT / RoBERTa / DeBERTa, GPT-2, OPT / BART)
POSITION_TABLES = ("position_embeddings", "wpe", "embed_positions")


class VRMPreTrainedModel(PreTrainedModel):
    config_class = VRMConfig
    base_model_prefix = "backbone"
    # The head samples Dirichlet / Gaussian latents: it stays in float32 whatever the backbone's dtype.
    _keep_in_fp32_modules_strict = ["head"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def _init_weights(self, module):
        head = getattr(self, "head", None)
        if head is not None and any(module is part for part in head.modules()):
            head.reset_parameters()  # the head owns its initialization (it starts at the prior)
        else:
            super()._init_weights(module)


class VRMForSequenceClassification(VRMPreTrainedModel):
    """A reward model: `forward(input_ids, attention_mask)` returns the reward as `logits` [B, 1] plus
    `reward_std`, `objective_weights`, `objective_scores` and `features`."""

    # The loss is computed by the trainer from pair samples; the model takes no loss kwargs (so `Trainer`
    # scales the loss for gradient accumulation itself).
    accepts_loss_kwargs = False

    def __init__(self, config: VRMConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if config.is_causal is None:
            config.is_causal = backbone_is_causal(config.text_config)
        if config.pooling == "auto":
            config.pooling = "last" if config.is_causal else "mean"
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.text_config)
        self.head = build_head(config)
        self._backbone_takes_position_ids = (
            "position_ids" in inspect.signature(self.backbone.forward).parameters
        )
        self.post_init()

    @property
    def max_positions(self) -> int | None:
        """How many token positions the backbone has a learned embedding for (BERT's 512, RoBERTa's 514 less its
        padding offset), or None where positions are computed (rotary, ALiBi): a longer sequence indexes past the
        table, so `max_length` must not exceed it."""
        for name, module in self.backbone.named_modules():
            if isinstance(module, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_TABLES:
                offset = 0 if module.padding_idx is None else module.padding_idx + 1
                return module.num_embeddings - offset
        return None

    # ----- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        *,
        head_type: str = "vrm",
        dtype: torch.dtype | str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> VRMForSequenceClassification:
        """A new reward model on a pretrained backbone (a hub name or a local directory).

        `backbone_kwargs` go to `AutoModel.from_pretrained` (e.g. `gguf_file`, `trust_remote_code`);
        `config_kwargs` set `VRMConfig` fields (e.g. `num_objectives=4`, `feature_dim=16`).
        """
        backbone_kwargs = dict(backbone_kwargs or {})
        if dtype is not None:
            backbone_kwargs["dtype"] = dtype
        backbone = AutoModel.from_pretrained(name_or_path, **backbone_kwargs)
        config = VRMConfig(text_config=backbone.config, head_type=head_type, **config_kwargs)
        return cls(config, backbone=backbone)

    @classmethod
    def from_backbone_config(cls, text_config, *, head_type: str = "vrm", **config_kwargs: Any):
        """A new, randomly initialized reward model from a backbone config (for tests and experiments)."""
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        return cls(VRMConfig(text_config=text_config, head_type=head_type, **config_kwargs))

    # ----- encoding -------------------------------------------------------------------------------------------
    def _run_backbone(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._backbone_takes_position_ids:
            # positions count real tokens only, so left and right padding give the same states
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.backbone(**kwargs).last_hidden_state

    def _pool(self, hidden: Tensor, attention_mask: Tensor, end_index: Tensor) -> Tensor:
        """Read one state per row from `hidden` [B, L, H] over the real tokens up to `end_index`."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.config.pooling == "last":
            return hidden[rows, end_index]
        if self.config.pooling == "cls":
            return hidden[rows, first_token_index(attention_mask)]
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        prompt_lengths: Tensor | None = None,
        prompt_rows: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Prompt states `h_x` and response states `h_xy`, each [B, H].

        With `prompt_rows`, prompt states of the first `prompt_rows` rows only: a pair batch stacks chosen over
        rejected, and the two share their prompt.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_end = find_prompt_end(
            input_ids, attention_mask, prompt_lengths, self.config.response_marker_ids
        )[:prompt_rows]
        rows = prompt_end.shape[0]
        hidden = self._run_backbone(input_ids, attention_mask)
        response_state = self._pool(hidden, attention_mask, last_token_index(attention_mask))
        if self.config.is_causal:
            prompt_state = hidden[torch.arange(rows, device=hidden.device), prompt_end]
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.prompt_state_gradient):
                prompt_state = self._encode_prompt_alone(input_ids[:rows], attention_mask[:rows], prompt_end)
        if not self.config.prompt_state_gradient:
            prompt_state = prompt_state.detach()
        return prompt_state, response_state

    def encode_responses(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Response states `h_xy` [B, H] alone: one backbone pass, no prompt state."""
        hidden = self._run_backbone(input_ids, attention_mask)
        return self._pool(hidden, attention_mask, last_token_index(attention_mask))

    def encode_prompts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Prompt states `h_x` [B, H] of sequences that hold a templated prompt only (ending with the marker)."""
        hidden = self._run_backbone(input_ids, attention_mask)
        end = last_token_index(attention_mask)
        if self.config.is_causal:
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), end]
        return self._pool(hidden, attention_mask, end)

    def _encode_prompt_alone(self, input_ids: Tensor, attention_mask: Tensor, prompt_end: Tensor) -> Tensor:
        """A bidirectional backbone's prompt state: a pass over the prompt tokens only.

        Heads whose objective weights do not depend on the prompt (bt, ib) never read it: the pass is skipped.
        Without gradients, rows with the same prompt tokens are encoded once (training keeps one row per pair).
        """
        if self.config.weight_posterior == "none":
            return input_ids.new_zeros(
                input_ids.shape[0], self.config.text_config.hidden_size, dtype=torch.float32
            )
        width = int(prompt_end.max()) + 1
        positions = torch.arange(width, device=input_ids.device).unsqueeze(0)
        prompt_mask = attention_mask[:, :width] * (positions <= prompt_end.unsqueeze(1)).to(
            attention_mask.dtype
        )
        prompt_ids = input_ids[:, :width]
        if not torch.is_grad_enabled():  # scoring: rows that share a prompt (a Best-of-N pool) share one pass
            key = torch.cat([prompt_ids * prompt_mask, prompt_mask, prompt_end.unsqueeze(1)], dim=1)
            unique, inverse = torch.unique(key, dim=0, return_inverse=True)
            if unique.shape[0] < key.shape[0]:
                first = torch.full((unique.shape[0],), key.shape[0], device=key.device, dtype=torch.long)
                first.scatter_reduce_(
                    0, inverse, torch.arange(key.shape[0], device=key.device), reduce="amin"
                )
                hidden = self._run_backbone(prompt_ids[first], prompt_mask[first])
                return self._pool(hidden, prompt_mask[first], prompt_end[first])[inverse]
        hidden = self._run_backbone(prompt_ids, prompt_mask)
        return self._pool(hidden, prompt_mask, prompt_end)

    # ----- the head runs in its own (float32) precision -------------------------------------------------------
    def _to_head_dtype(self, *states: Tensor) -> tuple[Tensor, ...]:
        dtype = next(self.head.parameters()).dtype
        return tuple(state.to(dtype) for state in states)

    @staticmethod
    def _head_precision(reference: Tensor):
        """No autocast inside the head: Dirichlet sampling has no bfloat16 kernel, and the KLs want float32."""
        return torch.autocast(device_type=reference.device.type, enabled=False)

    # ----- inference ------------------------------------------------------------------------------------------
    def normalize(self, reward: Tensor) -> Tensor:
        return (reward - self.config.reward_mean) / self.config.reward_scale

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        prompt_lengths: Tensor | None = None,
        chosen_input_ids: Tensor | None = None,
        chosen_attention_mask: Tensor | None = None,
        rejected_input_ids: Tensor | None = None,
        rejected_attention_mask: Tensor | None = None,
        prompt_states: Tensor | None = None,
        response_states: Tensor | None = None,
        chosen_states: Tensor | None = None,
        rejected_states: Tensor | None = None,
        num_samples: int | None = None,
        return_dict: bool | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        packed_input_ids: Tensor | None = None,
        packed_position_ids: Tensor | None = None,
        packed_block_ids: Tensor | None = None,
        packed_part_ids: Tensor | None = None,
        **kwargs: Any,
    ) -> RewardModelOutput | PairwiseRewardOutput | tuple:
        """Score sequences (`input_ids`) into a `RewardModelOutput`, or, given `chosen_*` and `rejected_*`,
        sample pairs for training into a `PairwiseRewardOutput`; `return_dict=False` gives their `to_tuple()`.

        Precomputed states skip the backbone (the frozen-backbone path of `vrm.data.state_cache`): `prompt_states` +
        `response_states` score, `prompt_states` + `chosen_states` + `rejected_states` train. The pair mode
        goes through `forward` (not a side method) so that DDP / FSDP / PEFT wrappers see it.
        `token_type_ids` is accepted (a tokenizer's output can be passed as `**batch`) and ignored: vrm trains
        every token as type 0. `labels` are refused (a `ValueError`): the loss comes from pairs, in
        `VRMTrainer.compute_loss`. Any other keyword argument is a `TypeError`, never silently dropped.
        `packed_*` (`vrm.data.pair_layout.SharedPromptCollator`): pairs as packed prompt trees, one pass per token.
        """
        if kwargs:
            raise TypeError(
                f"VRMForSequenceClassification.forward: unexpected keyword argument(s) {sorted(kwargs)}"
            )
        if labels is not None:
            raise ValueError(
                "VRMForSequenceClassification computes no loss from labels: a reward model is trained on "
                "(chosen, rejected) pairs, with the loss of VRMTrainer.compute_loss / vrm.training.losses.preference_loss"
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if prompt_states is not None:
            out = self._forward_states(
                prompt_states, response_states, chosen_states, rejected_states, num_samples
            )
        elif packed_input_ids is not None:
            packed = (packed_input_ids, packed_position_ids, packed_block_ids, packed_part_ids)
            out = self._sample_pairs(*encode_tree_pairs(self, *packed), num_samples)
        elif chosen_input_ids is not None:
            out = self.forward_pairs(
                chosen_input_ids,
                chosen_attention_mask,
                rejected_input_ids,
                rejected_attention_mask,
                prompt_lengths=prompt_lengths,
                num_samples=num_samples,
            )
        elif input_ids is None:
            raise ValueError("forward needs input_ids (or chosen_input_ids and rejected_input_ids)")
        elif not self.config.is_causal and score_layout(self) == "shared_prompt":  # as it was trained
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            end = find_prompt_end(input_ids, mask, prompt_lengths, self.config.response_marker_ids)
            out = self._score_states(*encode_rows_as_trees(self, input_ids, mask, end))
        else:
            out = self._score_states(*self.encode(input_ids, attention_mask, prompt_lengths))
        return out if return_dict else out.to_tuple()

    def _score_states(self, prompt_state: Tensor, response_state: Tensor) -> RewardModelOutput:
        with self._head_precision(prompt_state):
            out: HeadOutput = self.head(*self._to_head_dtype(prompt_state, response_state))
        return RewardModelOutput(
            logits=self.normalize(out.reward).unsqueeze(-1),
            reward_std=out.reward_std / self.config.reward_scale,
            objective_weights=out.objective_weights,
            objective_scores=out.objective_scores,
            features=out.features,
            **self._ensemble_fields(out),
        )

    def _ensemble_fields(self, out: HeadOutput) -> dict[str, Tensor]:
        """An ensemble head's std decomposition and member rewards, normalized as `logits` (else nothing)."""
        if getattr(out, "member_rewards", None) is None:
            return {}
        scale = self.config.reward_scale
        return {
            "aleatoric_std": out.aleatoric_std / scale,
            "epistemic_std": out.epistemic_std / scale,
            "member_rewards": self.normalize(out.member_rewards),
        }

    # ----- training -------------------------------------------------------------------------------------------
    def _forward_states(
        self,
        prompt_states: Tensor,
        response_states: Tensor | None,
        chosen_states: Tensor | None,
        rejected_states: Tensor | None,
        num_samples: int | None,
    ) -> RewardModelOutput | PairwiseRewardOutput:
        if response_states is not None:
            return self._score_states(prompt_states, response_states)
        if chosen_states is None or rejected_states is None:
            raise ValueError("prompt_states need response_states, or chosen_states and rejected_states")
        return self._sample_pairs(prompt_states, chosen_states, rejected_states, num_samples)

    def _sample_pairs(
        self, prompt_state: Tensor, chosen_state: Tensor, rejected_state: Tensor, num_samples: int | None
    ) -> PairwiseRewardOutput:
        with self._head_precision(prompt_state):
            samples = self.head.sample_pairs(
                *self._to_head_dtype(prompt_state, chosen_state, rejected_state),
                num_samples or self.config.num_samples,
            )
        return PairwiseRewardOutput(**{f.name: getattr(samples, f.name) for f in fields(samples)})

    def encode_pairs(
        self,
        chosen_input_ids: Tensor,
        chosen_attention_mask: Tensor,
        rejected_input_ids: Tensor,
        rejected_attention_mask: Tensor,
        prompt_lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """States of B pairs — prompt [B, H], chosen [B, H], rejected [B, H] — with one backbone pass over
        chosen and rejected together (plus, for encoders, one prompt-only pass per pair)."""
        batch = chosen_input_ids.shape[0]
        input_ids, attention_mask = _stack_padded(
            (chosen_input_ids, chosen_attention_mask), (rejected_input_ids, rejected_attention_mask)
        )
        lengths = None if prompt_lengths is None else torch.cat([prompt_lengths, prompt_lengths])
        prompt_state, response_state = self.encode(input_ids, attention_mask, lengths, prompt_rows=batch)
        return prompt_state, response_state[:batch], response_state[batch:]

    def forward_pairs(
        self,
        chosen_input_ids: Tensor,
        chosen_attention_mask: Tensor,
        rejected_input_ids: Tensor,
        rejected_attention_mask: Tensor,
        prompt_lengths: Tensor | None = None,
        num_samples: int | None = None,
    ) -> PairwiseRewardOutput:
        """Chosen and rejected through the backbone in one pass; one prompt state (and one w sample) per pair."""
        states = self.encode_pairs(
            chosen_input_ids,
            chosen_attention_mask,
            rejected_input_ids,
            rejected_attention_mask,
            prompt_lengths,
        )
        return self._sample_pairs(*states, num_samples)

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any):
        """`PreTrainedModel.save_pretrained`, refusing NaN / infinite weights: a diverged run is not a model."""
        state = kwargs.get("state_dict")
        check_finite_weights(
            state.items() if state is not None else self.named_parameters(), f"{save_directory}: not saved"
        )
        return super().save_pretrained(save_directory, *args, **kwargs)

    def train(self, mode: bool = True):
        """A frozen backbone (no parameter requires grad) stays in eval mode: no dropout on fixed features, so
        training on the fly matches training on cached states."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self


def build_head(config: VRMConfig) -> LatentRewardHead | EnsembleHead:
    """One `LatentRewardHead` (`ensemble_members` 1: the checkpoint format of every earlier model), or an
    `EnsembleHead` of `ensemble_members` of them (parameters `head.members.<n>.*`)."""
    hidden_size = config.text_config.hidden_size
    if config.ensemble_members > 1:
        return EnsembleHead(config, hidden_size)
    return LatentRewardHead(config, hidden_size)


def _stack_padded(*parts: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Concatenate (input_ids, attention_mask) batches along the batch axis, right-padding to one length."""
    width = max(ids.shape[1] for ids, _ in parts)
    ids_out, mask_out = [], []
    for ids, mask in parts:
        pad = width - ids.shape[1]
        ids_out.append(torch.nn.functional.pad(ids, (0, pad), value=0))
        mask_out.append(torch.nn.functional.pad(mask, (0, pad), value=0))
    return torch.cat(ids_out), torch.cat(mask_out)


def _register_auto_classes() -> None:
    """Let `AutoConfig` / `AutoModelForSequenceClassification` load vrm checkpoints: once vrm is imported, and,
    where vrm is not installed, with `trust_remote_code=True` — `save_pretrained` copies this file and those
    it imports (`config.py`, `heads.py`, `head_ensemble.py`, `integrity.py`, `pooling.py`, `shared_prompt.py`, which
    import only torch and transformers) next to the weights."""
    from transformers import AutoModelForSequenceClassification

    VRMConfig.register_for_auto_class()
    VRMForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    try:
        AutoConfig.register(VRMConfig.model_type, VRMConfig)
        AutoModelForSequenceClassification.register(VRMConfig, VRMForSequenceClassification)
    except ValueError:  # already registered (module reloaded)
        pass


_register_auto_classes()
