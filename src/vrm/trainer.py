"""Training on `transformers.Trainer`: `VRMTrainer.compute_loss` is the negative ELBO of `vrm.losses`.

`run_training`, what `vrm train` does (read and tokenize the data, build the model, train, write the final
model), lives in `vrm.train_job`, which builds on this module; `vrm.trainer.run_training` still resolves to it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from .arguments import VRMTrainingArguments
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
from .data import TokenizedPair
from .heads import LatentRewardHead
from .integrity import NonFiniteError
from .losses import beta_factor, bootstrap_weights, preference_loss
from .pair_layout import LayoutTokens


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


# ----- the `vrm train` job (`vrm.train_job`) ----------------------------------------------------------------------
TRAIN_JOB_NAMES = ("run_training", "TrainingResult", "check_rating_arguments")


def __getattr__(name: str) -> Any:
    """`vrm.trainer.run_training` (and the job's other names) resolved from `vrm.train_job`, which imports this
    module: imported on first use, so nothing here imports upwards at import time."""
    if name in TRAIN_JOB_NAMES:
        from . import train_job

        return getattr(train_job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
