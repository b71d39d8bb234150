"""`VRMTrainer`: training a reward model on `transformers.Trainer`, with TRL's `RewardTrainer` shape.

    trainer = VRMTrainer(model="backbone-or-checkpoint", args=VRMTrainingArguments(...), train_dataset=ds)
    trainer.train()
    trainer.save_model()      # the final model, its tokenizer and a model card, written crash-safe

The model is a name or path (built with `args.model_init_kwargs`), a `ModelArguments` (the backbone, the head and
LoRA, as `vrm train` parses them) or a `VRMForSequenceClassification` (then pass its tokenizer as
`processing_class`). The data is anything `vrm.training.pair_data` accepts: a `datasets.Dataset` in TRL's
preference formats, paths, or `PreferenceExample`s; the trainer tokenizes it with the arguments' settings.
`compute_loss` is the negative ELBO of `vrm.training.losses`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from vrm.data.pair_layout import LayoutTokens, layout_collator
from vrm.data.ratings import rating_ranges
from vrm.data.state_cache import CachedPairDataset, CachedStatesCollator, EmbeddingCache
from vrm.data.tokenization import PreferenceTokenizer
from vrm.models.config import record_tokenization
from vrm.models.heads import LatentRewardHead
from vrm.models.integrity import NonFiniteError, one_line
from vrm.training.arguments import ModelArguments, VRMTrainingArguments, label_objectives
from vrm.training.auxiliary_terms import AuxiliaryTermCounts
from vrm.training.backbone import apply_lora, build_model, load_tokenizer
from vrm.training.checkpoints import resolve_resume, save_final_model, save_sharded_final_model
from vrm.training.losses import beta_factor, bootstrap_weights, preference_loss
from vrm.training.model_card import write_training_outputs
from vrm.training.pair_data import (
    PairDataset,
    PreferenceData,
    check_shared_prompts,
    data_sources,
    is_tokenized,
    preference_examples,
    tokenize_pairs,
)

logger = logging.getLogger(__name__)


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout: `nn.Dropout` modules and the attention-dropout rates attention modules keep as floats.

    Besides the noise, dropout in training mode costs time: on CPU it also sends SDPA attention to its slow path.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def check_cache_arguments(model_args: ModelArguments, args: VRMTrainingArguments) -> None:
    """The frozen-backbone options that exclude or need each other (checked before any data is read)."""
    if args.embedding_cache and not model_args.freeze_backbone:
        raise ValueError("--embedding_cache holds states of a frozen backbone: pass --freeze_backbone too")


def backbone_name(model) -> str:
    """The name or path the backbone of a model object (LoRA-wrapped or not) was loaded from; "" if unknown."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    return getattr(base.config.text_config, "_name_or_path", "") or getattr(base, "name_or_path", "")


def tokenizer_of(model) -> Any:
    """The tokenizer of a model object given without `processing_class`: its backbone's, by name (as TRL does)."""
    name = backbone_name(model)
    if name:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError):
            pass
    raise ValueError("processing_class: pass the backbone's tokenizer along with a model object")


def model_arguments(name_or_path: str, init_kwargs: dict[str, Any] | None) -> ModelArguments:
    """`ModelArguments` of a model given by name, from `model_init_kwargs` (TRL's name): unknown keys are errors."""
    init_kwargs = dict(init_kwargs or {})
    known = {item.name for item in dataclasses.fields(ModelArguments)} - {"model_name_or_path"}
    unknown = sorted(set(init_kwargs) - known)
    if unknown:
        raise ValueError(f"model_init_kwargs: unknown keys {unknown}; known: the ModelArguments fields")
    return ModelArguments(model_name_or_path=name_or_path, **init_kwargs)


class VRMTrainer(Trainer):
    """A `Trainer` whose loss is the negative ELBO; logs nll, KL terms, betas, accuracy and reward statistics."""

    args: VRMTrainingArguments

    def __init__(
        self,
        model: str | ModelArguments | PreTrainedModel,
        args: VRMTrainingArguments | None = None,
        data_collator=None,
        train_dataset: PreferenceData | None = None,
        eval_dataset: PreferenceData | None = None,
        processing_class=None,
        **kwargs: Any,
    ):
        args = args if args is not None else VRMTrainingArguments()
        model_args = None
        if isinstance(model, str | os.PathLike):
            model_args = model_arguments(os.fspath(model), args.model_init_kwargs)
        elif args.model_init_kwargs:
            raise ValueError(
                "model_init_kwargs apply when `model` is a name or path; this model is built already "
                f"({type(model).__name__}): set its options there"
            )
        if isinstance(model, ModelArguments):
            model_args = model
        if model_args is not None:
            check_cache_arguments(model_args, args)
            label_objectives(args, model_args.objective_names)
        else:  # a model object: its config names its objectives
            base = model.get_base_model() if hasattr(model, "peft_config") else model
            label_objectives(args, getattr(getattr(base, "config", None), "objective_names", None))
        for name, data in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if isinstance(data, dict):
                raise ValueError(f"{name}: one data set, not a dict of several (got keys {sorted(data)[:5]})")
        # the data is read and checked before the backbone loads: a bad row fails in seconds, not minutes
        train_examples = None
        if train_dataset is not None and not is_tokenized(train_dataset):
            train_examples = preference_examples(train_dataset, "train", args)
        eval_examples = None
        if eval_dataset is not None and not is_tokenized(eval_dataset):
            scale = rating_ranges(train_examples) if train_examples and args.attribute_names else None
            eval_examples = preference_examples(eval_dataset, "eval", args, split="test", rating_scale=scale)

        if model_args is not None:
            if processing_class is None:
                processing_class = load_tokenizer(model_args)
            set_seed(args.seed)  # the head's initialization is part of the run: same seed, same model
            model = build_model(model_args)
            if model_args.freeze_backbone:
                model.backbone.requires_grad_(False)
        if processing_class is None:
            processing_class = tokenizer_of(model)
        self.model_args = model_args
        base = model.get_base_model() if hasattr(model, "peft_config") else model
        config = base.config
        self._head_config = config
        self.frozen_backbone = not any(p.requires_grad for p in base.backbone.parameters())
        if args.embedding_cache and not self.frozen_backbone:
            raise ValueError("--embedding_cache holds states of a frozen backbone: freeze the backbone too")
        given = [data for data in (train_dataset, eval_dataset) if data is not None]
        cached_states = bool(args.embedding_cache) or any(isinstance(d, CachedPairDataset) for d in given)
        for flag in ("objective_label_weight", "rating_weight_coef"):
            if getattr(args, flag) > 0 and config.weight_posterior == "none":
                raise ValueError(
                    f"--{flag} trains objective weights, which a {config.head_type} head does not have: "
                    "use --head_type moe, vrm or vrm-paper"
                )
        attribute_names = args.attribute_names or ()
        if len(attribute_names) > config.num_objectives:
            raise ValueError(
                f"{len(attribute_names)} attribute_names but only {config.num_objectives} objectives"
            )

        limit = base.max_positions
        if limit is not None and args.max_length > limit:
            print(
                f"[vrm] max_length {args.max_length} is more than the backbone's {limit} positions: "
                f"inputs are cut to {limit} tokens",
                flush=True,
            )
            args.max_length = limit
        pref_tokenizer = PreferenceTokenizer.from_arguments(processing_class, args, bool(config.is_causal))
        pad_token_id = pref_tokenizer.tokenizer.pad_token_id
        layout = layout_collator(args.pair_layout, base, pad_token_id, cached_states)
        if args.process_index == 0:
            print(f"[vrm] pair layout: {layout.name} ({layout.reason})", flush=True)
        if layout.name == "shared_prompt":
            for name, examples in (("train", train_examples), ("eval", eval_examples)):
                check_shared_prompts(examples or (), name)
        # recorded now (checkpoints) and again by every final save
        self.tokenization = {**pref_tokenizer.settings(), "pair_layout": layout.name}
        record_tokenization(config, self.tokenization)
        self.data_sources = {
            "train": data_sources(train_examples) if train_examples else [],
            "eval": data_sources(eval_examples) if eval_examples else [],
        }
        self.train_stats = self.eval_stats = None
        if train_examples is not None:
            train_dataset, self.train_stats = tokenize_pairs(pref_tokenizer, train_examples, "train", args)
        if eval_examples is not None:
            eval_dataset, self.eval_stats = tokenize_pairs(pref_tokenizer, eval_examples, "eval", args)
        self.auxiliary_terms = None  # training rows that feed each auxiliary term, when there is one
        wanted = args.attribute_names or args.objective_label_weight > 0 or args.rating_weight_coef > 0
        if wanted and train_dataset is not None and is_tokenized(train_dataset):
            self.auxiliary_terms = AuxiliaryTermCounts.of(train_dataset.pairs, args.attribute_target)
            if args.process_index == 0:
                print(f"[vrm] {self.auxiliary_terms.summary(args)}", flush=True)
            # before the embedding pass: a term that no row feeds fails in seconds
            self.auxiliary_terms.check(args)
        collator = layout.collator
        if args.embedding_cache:  # backbone states computed once (or read back), the head trains on them
            cache = EmbeddingCache(args.embedding_cache, batch_size=args.embedding_batch_size)
            model.to(args.device)
            if isinstance(train_dataset, PairDataset):
                train_dataset = CachedPairDataset.build(
                    model, train_dataset.pairs, cache, pad_token_id, "train"
                )
            if isinstance(eval_dataset, PairDataset):
                eval_dataset = CachedPairDataset.build(model, eval_dataset.pairs, cache, pad_token_id, "eval")
        cached = {
            isinstance(data, CachedPairDataset) for data in (train_dataset, eval_dataset) if data is not None
        }
        if len(cached) > 1:
            raise ValueError(
                "train_dataset and eval_dataset must both be backbone states (CachedPairDataset) or both not"
            )
        if cached == {True}:
            collator = CachedStatesCollator()
        if model_args is not None and model_args.use_peft:
            model = apply_lora(model, model_args)
            model.print_trainable_parameters()
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        if sharded and hasattr(self.model, "peft_config") and model_args is None:
            raise ValueError(
                "a LoRA model under FSDP / DeepSpeed is saved by rebuilding it from its ModelArguments: pass "
                "`model` as a name or a ModelArguments"
            )
        if (args.fsdp or args.deepspeed) and not sharded:
            logger.warning(
                "FSDP / DeepSpeed were asked for but accelerate did not enable them (they need GPUs)"
            )
        if self.args.disable_dropout:
            disable_dropout(self.model)
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._last_eval_metrics: dict[str, float] = {}
        self.eval_metrics: dict[str, float] = {}  # of the last `evaluate()`, for the model card
        self.train_metrics: dict[str, float] = {}  # of the last `train()`, for the model card
        # (optimizer step, micro-batch within it) of the last bootstrap draw
        self._bootstrap_position = (-1, 0)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`. `resume_from_checkpoint` (default: the arguments') True or "auto" resumes from the
        newest complete checkpoint in `output_dir` (one cut off while written is skipped), or starts fresh."""
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        resume = resolve_resume(self.args.output_dir, resume_from_checkpoint)
        output = super().train(resume_from_checkpoint=resume, **kwargs)
        self.train_metrics = dict(output.metrics)
        return output

    def _save_checkpoint(self, model, trial) -> None:
        """`Trainer`'s checkpoint, with a failed write (a full disk, a file size limit) as one error naming the
        output directory instead of a traceback; a checkpoint cut off this way is skipped on resume."""
        from safetensors import SafetensorError

        try:
            super()._save_checkpoint(model, trial)
        except (OSError, SafetensorError) as err:
            raise OSError(
                f"{self.args.output_dir}: writing the checkpoint of step {self.state.global_step} failed "
                f"({one_line(err)}); free disk space and resume with --resume_from_checkpoint true"
            ) from err

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The final model, crash-safe (`vrm.training.checkpoints`): weights (LoRA merged unless
        `merge_lora_on_save` is false), tokenizer, the tokenization settings in `config.json`, and, beside them,
        a model card, `train_results.json` and `trainer_state.json`. Checkpoints (`_internal_call`) are
        `Trainer`'s."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        output_dir = output_dir or self.args.output_dir
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            save_sharded_final_model(self, output_dir, self.tokenization)
        elif self.is_world_process_zero():
            save_final_model(
                self.model, self.processing_class, output_dir, self.args.merge_lora_on_save, self.tokenization
            )
        if self.is_world_process_zero():
            base = self.model_args.model_name_or_path if self.model_args else backbone_name(self.model)
            write_training_outputs(self, output_dir, base, self.train_metrics, self.eval_metrics)
        self.accelerator.wait_for_everyone()

    def _get_train_sampler(self, train_dataset=None):
        """`--train_sampling_strategy group_by_length` groups pairs of similar length (less padding)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, PairDataset):
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=dataset.lengths)
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        """The default optimizer, with the reward head in its own parameter groups at `head_learning_rate`.

        The head is trained from scratch on top of a pretrained backbone: with Adam every parameter moves about
        `lr` per step, which at a backbone's learning rate leaves a small latent head nearly frozen.
        """
        optimizer = super().create_optimizer(model)
        head_lr = self.args.head_learning_rate
        if head_lr is None:
            head_lr = 10.0 * self.args.learning_rate
        head_ids = {
            id(p)
            for module in (model or self.model).modules()
            if isinstance(module, LatentRewardHead)
            for p in module.parameters()
        }
        for group in list(optimizer.param_groups):
            head = [p for p in group["params"] if id(p) in head_ids]
            if head and head_lr != group["lr"]:
                group["params"] = [p for p in group["params"] if id(p) not in head_ids]
                optimizer.add_param_group(
                    {**{k: v for k, v in group.items() if k != "params"}, "params": head, "lr": head_lr}
                )
        return optimizer

    def current_betas(self) -> tuple[float, float]:
        args = self.args
        factor = beta_factor(
            args.beta_schedule,
            self.state.global_step,
            self.state.max_steps,
            args.beta_warmup_ratio,
            args.beta_cycles,
        )
        return args.beta_w * factor, args.beta_z * factor

    def ensemble_pair_weights(self, samples, training: bool) -> torch.Tensor | None:
        """Bootstrap weights [N, B] of an ensemble's members (`vrm.training.losses`), or None (one head, evaluation,
        `--ensemble_bootstrap false`). Seeded by (seed, step, micro-batch, process): a rerun draws the same."""
        if samples.members is None or not training or not self.args.ensemble_bootstrap:
            return None
        import numpy as np

        step, micro = self._bootstrap_position
        micro = micro + 1 if step == self.state.global_step else 0
        self._bootstrap_position = (self.state.global_step, micro)
        entropy = [self.args.seed, self.state.global_step, micro, self.args.process_index]
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        weights = bootstrap_weights(len(samples.members), samples.reward_chosen.shape[-1], generator)
        return weights.to(samples.reward_chosen.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        margin = inputs.pop("margin", None)
        attribute_targets = inputs.pop("attribute_targets", None)
        objective_labels = inputs.pop("objective_labels", None)
        rating_differences = inputs.pop("rating_differences", None)
        layout_tokens = inputs.pop("layout_tokens", None)
        try:
            samples = model(**inputs)  # pair mode of VRMForSequenceClassification.forward
        except (
            ValueError
        ) as err:  # torch.distributions refuses NaN parameters: the last update broke the weights
            if "found invalid values" not in str(err) or not model.training:
                raise
            raise NonFiniteError(
                f"the model's weights became NaN or infinite at step {self.state.global_step} (the posterior's "
                "parameters are not finite): training stopped, no final model written; lower the learning rate"
            ) from None
        beta_w, beta_z = self.current_betas()
        out = preference_loss(
            samples,
            margin=margin,
            attribute_targets=attribute_targets,
            beta_w=beta_w,
            beta_z=beta_z,
            attribute_weight=self.args.attribute_weight,
            objective_labels=objective_labels,
            objective_label_weight=self.args.objective_label_weight,
            rating_differences=rating_differences,
            attribute_target=self.args.attribute_target,
            rating_weight_coef=self.args.rating_weight_coef,
            rating_temperature=self.args.rating_temperature,
            pair_weights=self.ensemble_pair_weights(samples, model.training),
        )
        loss = out.loss
        if self.args.center_rewards_coefficient:  # an ensemble centres each member's rewards
            parts = samples.members or (samples,)
            centre = torch.stack([(p.reward_chosen + p.reward_rejected).pow(2).mean() for p in parts]).mean()
            loss = loss + self.args.center_rewards_coefficient * centre

        mode = "train" if model.training else "eval"
        if layout_tokens is not None:  # tokens processed / unique, padding share (vrm.data.pair_layout)
            for name, value in LayoutTokens.metrics(layout_tokens).items():
                self._metrics[mode][name].append(value)
        rewards = torch.cat([samples.chosen.reward, samples.rejected.reward]).detach().float()
        values = {
            "accuracy": out.accuracy,
            "nll": out.nll,
            "reward_mean": rewards.mean(),
            "reward_sq": rewards.pow(2).mean(),  # -> reward_spread, over all processes' rewards
            "margin": (samples.chosen.reward - samples.rejected.reward).mean(),
        }
        # what the head has: KL terms of its posteriors, and the posterior std of the reward (`reward_std`, the
        # name every output uses); a bt head logs neither
        config = self._head_config
        if config.weight_posterior in ("dirichlet", "logistic_normal"):
            values["kl_w"] = out.kl_weights
        if config.feature_posterior == "gaussian":
            values["kl_z"] = out.kl_features
        if config.is_stochastic or config.ensemble_members > 1:
            values["reward_std"] = torch.cat([samples.chosen.reward_std, samples.rejected.reward_std]).mean()
        if attribute_targets is not None:
            values["attribute_loss"] = out.attribute_loss
        if objective_labels is not None:
            values["objective_label_nll"] = out.objective_label_nll
        if out.rating_weight_nll is not None:
            values["rating_weight_nll"] = out.rating_weight_nll
        # one collective per step: each process's batch means, weighted by its number of pairs
        pairs = float(samples.reward_chosen.shape[-1])
        local = torch.stack(
            [torch.as_tensor(v, dtype=torch.float32, device=loss.device).detach() for v in values.values()]
        )
        total = self.accelerator.reduce(
            torch.cat([local * pairs, local.new_tensor([pairs])]), reduction="sum"
        )
        averaged = dict(zip(values, (total[:-1] / total[-1]).tolist(), strict=True))
        # the spread of the batch's rewards (not an uncertainty)
        averaged["reward_spread"] = max(averaged.pop("reward_sq") - averaged["reward_mean"] ** 2, 0.0) ** 0.5
        if "kl_w" in averaged:
            averaged["beta_w"] = beta_w
        if "kl_z" in averaged:
            averaged["beta_z"] = beta_z
        for name, value in averaged.items():
            self._metrics[mode][name].append(value)
        return (loss, samples) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """`Trainer.training_step`, stopping the run on a NaN / infinite loss before the optimizer applies its
        gradients (`Trainer` would only leave it out of the logged average): the checkpoints keep the last good
        weights, and no final model is written."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad_loss = (~torch.isfinite(loss.detach())).any()
        # fp16's gradient scaler skips steps with infinite gradients on purpose; elsewhere they poison the weights.
        # Checked once per optimizer step (on the accumulated, synchronized gradients), not on every micro-batch.
        check = self.accelerator.sync_gradients and not self.args.fp16
        grads = [p.grad for p in model.parameters() if p.grad is not None] if check else []
        bad_grads = (
            ~torch.stack(torch._foreach_norm(grads)).isfinite().all() if grads else bad_loss.new_zeros(())
        )
        bad = torch.stack([bad_loss, bad_grads.to(bad_loss.device)]).float()
        if self.accelerator.num_processes > 1:  # every process stops together
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.any().item():
            if not bad[0]:
                what = "the gradients became NaN or infinite"
            elif bad_loss.item():
                what = f"the training loss became {float(loss)}"
            else:  # the bad loss was another process's
                what = "a process's training loss became non-finite"
            raise NonFiniteError(
                f"{what} at step {self.state.global_step + 1}: training stopped before that update, no final model "
                f"written (checkpoints in {self.args.output_dir} are kept); lower the learning rate or check the data"
            )
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """`Trainer.evaluate` plus the averaged vrm metrics (eval_accuracy, eval_nll, eval_kl_z, ...)."""
        metrics = super().evaluate(*args, **kwargs)
        self.eval_metrics = {**metrics, **self._last_eval_metrics}
        return self.eval_metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        averaged = {name: sum(vals) / len(vals) for name, vals in self._metrics[mode].items() if vals}
        if mode == "eval":
            averaged = {f"eval_{name}": value for name, value in averaged.items()}
            self._last_eval_metrics = averaged
        logs = {**logs, **averaged}
        self._metrics[mode].clear()
        super().log(logs, start_time)
