"""Training on `transformers.Trainer`: `VRMTrainer.compute_loss` is the negative ELBO of `vrm.losses`.

`run_training` is what `vrm train` does: build the tokenizer and the model, read and tokenize the data (printing
what truncation did), optionally wrap the backbone in LoRA, train (resumable from `output_dir` checkpoints),
and write a final `save_pretrained` directory that `VRMForSequenceClassification.from_pretrained` loads back.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from .backbone import (  # noqa: F401 - re-exported: `from vrm.trainer import build_model` keeps working
    apply_lora,
    backbone_load_kwargs,
    build_model,
    check_model_source,
    check_quantization,
    load_tokenizer,
)
from .checkpoints import (  # noqa: F401 - re-exported
    checkpoint_is_complete,
    resolve_resume,
    save_final_model,
    save_sharded_final_model,
)
from .config import DataArguments, ModelArguments, VRMTrainingArguments, record_tokenization
from .data import (
    PreferenceTokenizer,
    TokenizedPair,
    TruncationStats,
    load_preferences,
    rating_ranges,
)
from .embeddings import CachedPairDataset, CachedStatesCollator, EmbeddingCache
from .heads import LatentRewardHead
from .integrity import NonFiniteError
from .losses import ATTRIBUTE_TARGETS, beta_factor, bootstrap_weights, preference_loss
from .modelcard import check_train_options, write_training_outputs
from .pair_layout import LayoutTokens, layout_collator
from .tokenization_cache import tokenize_pairs_cached

logger = logging.getLogger(__name__)


class PairDataset(Dataset):
    """A list of `TokenizedPair` as a torch dataset."""

    def __init__(self, pairs: list[TokenizedPair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> TokenizedPair:
        return self.pairs[index]

    @property
    def lengths(self) -> list[int]:
        """Padded length of each pair in a batch (its longer sequence), for length-grouped sampling."""
        return [max(len(p.chosen_input_ids), len(p.rejected_input_ids)) for p in self.pairs]


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout: `nn.Dropout` modules and the attention-dropout rates attention modules keep as floats.

    Besides the noise, dropout in training mode costs time: on CPU it also sends SDPA attention to its slow path.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


class VRMTrainer(Trainer):
    """A `Trainer` whose loss is the negative ELBO; logs nll, KL terms, betas, accuracy and reward statistics."""

    args: VRMTrainingArguments

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.disable_dropout:
            disable_dropout(self.model)
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._last_eval_metrics: dict[str, float] = {}
        self._bootstrap_position = (
            -1,
            0,
        )  # (optimizer step, micro-batch within it) of the last bootstrap draw

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
        """Bootstrap weights [N, B] of an ensemble's members (`vrm.losses`), or None (one head, evaluation,
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
        if layout_tokens is not None:  # tokens processed / unique, padding share (vrm.pair_layout)
            for name, value in LayoutTokens.metrics(layout_tokens).items():
                self._metrics[mode][name].append(value)
        rewards = torch.cat([samples.chosen.reward, samples.rejected.reward]).detach().float()
        values = {
            "accuracy": out.accuracy,
            "nll": out.nll,
            "kl_w": out.kl_weights,
            "kl_z": out.kl_features,
            "reward_mean": rewards.mean(),
            "reward_sq": rewards.pow(2).mean(),  # -> reward_std, over all processes' rewards
            "margin": (samples.chosen.reward - samples.rejected.reward).mean(),
            "reward_uncertainty": torch.cat([samples.chosen.reward_std, samples.rejected.reward_std]).mean(),
        }
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
        averaged["reward_std"] = max(averaged.pop("reward_sq") - averaged["reward_mean"] ** 2, 0.0) ** 0.5
        averaged["beta_w"], averaged["beta_z"] = beta_w, beta_z
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
        return {**metrics, **self._last_eval_metrics}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        averaged = {name: sum(vals) / len(vals) for name, vals in self._metrics[mode].items() if vals}
        if mode == "eval":
            averaged = {f"eval_{name}": value for name, value in averaged.items()}
            self._last_eval_metrics = averaged
        logs = {**logs, **averaged}
        self._metrics[mode].clear()
        super().log(logs, start_time)


# ----- the `vrm train` job --------------------------------------------------------------------------------------
def check_rating_arguments(training_args: VRMTrainingArguments, attribute_names: Sequence[str]) -> None:
    """Flags of the rating terms that would silently do nothing (or nonsense) are errors, before data is read."""
    if training_args.attribute_target not in ATTRIBUTE_TARGETS:
        raise ValueError(
            f"--attribute_target must be one of {ATTRIBUTE_TARGETS}, got {training_args.attribute_target!r}"
        )
    if training_args.attribute_target == "graded" and not attribute_names:
        raise ValueError("--attribute_target graded needs --attribute_names (the rated objectives)")
    if not training_args.rating_weight_coef >= 0:  # also refuses NaN
        raise ValueError(f"--rating_weight_coef must be >= 0, got {training_args.rating_weight_coef}")
    if training_args.rating_weight_coef > 0 and len(attribute_names) < 2:
        raise ValueError(
            "--rating_weight_coef needs --attribute_names with at least two rated objectives (columns {name}_chosen "
            "/ {name}_rejected): with one, the renormalised weight is 1 and the term cannot teach the weights"
        )
    if not 0 < training_args.rating_temperature < math.inf:
        raise ValueError(f"--rating_temperature must be a positive number, got {training_args.rating_temperature}")


@dataclass
class TrainingResult:
    output_dir: str
    train_stats: TruncationStats
    eval_stats: TruncationStats | None
    metrics: dict[str, float]
    is_main_process: bool = True


def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: VRMTrainingArguments
) -> TrainingResult:
    if not data_args.dataset_name:
        raise ValueError("no training data: pass --dataset_name FILE_OR_NAME [...]")
    attribute_names = data_args.attribute_names or ()

    def read(sources: list[str], split: str, limit: int | None, rating_scale=None):
        invalid: list[tuple[str, str]] | None = [] if data_args.skip_invalid_rows else None
        examples = load_preferences(
            sources,
            split=split,
            attribute_names=attribute_names,
            objective_column=data_args.objective_column,
            max_rows=limit,
            rating_scale=rating_scale,
            invalid=invalid,
            dataset_config=data_args.dataset_config,
        )
        if invalid:  # --skip_invalid_rows: skipped, and said so
            shown = "; ".join(f"{location}: {reason}" for location, reason in invalid[:5])
            more = f" and {len(invalid) - 5} more" if len(invalid) > 5 else ""
            print(f"[vrm] {split} data: skipped {len(invalid)} invalid rows ({shown}{more})", flush=True)
        return examples

    check_rating_arguments(training_args, attribute_names)
    check_quantization(model_args)  # --load_in_4bit without CUDA / bitsandbytes / LoRA: before any loading
    check_train_options(data_args, training_args)  # --push_to_hub, --report_to without its package, ...

    if training_args.objective_label_weight > 0 and not (data_args.objective_column and attribute_names):
        raise ValueError(
            "--objective_label_weight needs --objective_column (the label) and --attribute_names (the objectives "
            "it names, in the order of the model's first objectives)"
        )
    if data_args.embedding_cache and not model_args.freeze_backbone:
        raise ValueError("--embedding_cache holds states of a frozen backbone: pass --freeze_backbone too")
    if model_args.freeze_backbone and model_args.use_peft:
        raise ValueError("--freeze_backbone and --use_peft exclude each other (LoRA trains the backbone)")
    # the data is read (and checked) before the backbone is loaded: a bad row fails in seconds, not minutes
    train_examples = read(data_args.dataset_name, data_args.dataset_train_split, data_args.max_train_samples)
    eval_examples = None
    if data_args.eval_dataset_name:
        eval_examples = read(  # ratings on the training data's scale
            data_args.eval_dataset_name,
            data_args.dataset_test_split,
            data_args.max_eval_samples,
            rating_ranges(train_examples),
        )

    tokenizer = load_tokenizer(model_args)
    set_seed(training_args.seed)  # the head's initialization is part of the run: same seed, same model
    model = build_model(model_args)
    for flag in ("objective_label_weight", "rating_weight_coef"):
        if getattr(training_args, flag) > 0 and model.config.weight_posterior == "none":
            raise ValueError(
                f"--{flag} trains objective weights, which a {model.config.head_type} head does not have: "
                "use --head_type moe, vrm or vrm-paper"
            )
    if attribute_names and len(attribute_names) > model.config.num_objectives:
        raise ValueError(
            f"{len(attribute_names)} attribute_names but only {model.config.num_objectives} objectives"
        )
    pref_tokenizer = PreferenceTokenizer(
        tokenizer,
        max_length=data_args.max_length,
        truncation=data_args.truncation,
        max_prompt_length=data_args.max_prompt_length,
        input_format=data_args.input_format,
        is_causal=bool(model.config.is_causal),
    )
    layout = layout_collator(data_args.pair_layout, model, tokenizer.pad_token_id, data_args.embedding_cache)
    if training_args.process_index == 0:
        print(f"[vrm] pair layout: {layout.name} ({layout.reason})", flush=True)
    # recorded now (checkpoints) and again by every final save
    tokenization = {**pref_tokenizer.settings(), "pair_layout": layout.name}
    record_tokenization(model.config, tokenization)

    def tokenize(examples, name: str) -> tuple[PairDataset, TruncationStats]:
        # datasets.map, cached on disk: the first process of each machine tokenizes, the others read its file
        with training_args.main_process_first(local=True, desc=f"tokenizing the {name} data"):
            pairs, stats, _ = tokenize_pairs_cached(
                pref_tokenizer,
                examples,
                cache_dir=data_args.tokenization_cache,
                num_proc=data_args.dataset_num_proc,
                desc=f"Tokenizing {name} pairs",
            )
        if training_args.process_index == 0:
            print(f"[vrm] {name} data: {stats.summary()}", flush=True)
        if not pairs:
            raise ValueError(f"no {name} pairs left after tokenization ({stats.summary()})")
        return PairDataset(pairs), stats

    train_dataset, train_stats = tokenize(train_examples, "train")
    eval_dataset, eval_stats = tokenize(eval_examples, "eval") if eval_examples else (None, None)

    collator = layout.collator
    if model_args.freeze_backbone:
        model.backbone.requires_grad_(False)
        if data_args.embedding_cache:
            cache = EmbeddingCache(data_args.embedding_cache, batch_size=data_args.embedding_batch_size)
            model.to(training_args.device)
            train_dataset = CachedPairDataset.build(
                model, train_dataset.pairs, cache, tokenizer.pad_token_id, "train"
            )
            if eval_dataset is not None:
                eval_dataset = CachedPairDataset.build(
                    model, eval_dataset.pairs, cache, tokenizer.pad_token_id, "eval"
                )
            collator = CachedStatesCollator()
    if model_args.use_peft:
        model = apply_lora(model, model_args)
        model.print_trainable_parameters()
    trainer = VRMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )
    if (training_args.fsdp or training_args.deepspeed) and not (
        trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    ):
        logger.warning("FSDP / DeepSpeed were asked for but accelerate did not enable them (they need GPUs)")
    train_output = trainer.train(resume_from_checkpoint=resolve_resume(training_args))
    metrics: dict[str, float] = {}
    if eval_dataset is not None:
        metrics = trainer.evaluate()
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        save_sharded_final_model(trainer, tokenizer, model_args, training_args, tokenization)
    elif trainer.is_world_process_zero():
        args = (training_args.output_dir, training_args.merge_lora_on_save, tokenization)
        save_final_model(trainer.model, tokenizer, *args)
    if trainer.is_world_process_zero():  # README.md card, train_results.json, trainer_state.json
        outputs = (train_stats, eval_stats, train_output.metrics, metrics)
        write_training_outputs(trainer, model_args, data_args, training_args, *outputs)
    trainer.accelerator.wait_for_everyone()
    return TrainingResult(
        training_args.output_dir, train_stats, eval_stats, metrics, trainer.is_world_process_zero()
    )
