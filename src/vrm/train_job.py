"""The `vrm train` job: `run_training` reads and checks the data, builds the tokenizer and the model, trains a
`vrm.trainer.VRMTrainer` and writes the final model.

Flags that would do nothing are refused before any loading (`check_rating_arguments`, `vrm.backbone`'s
quantization check, `vrm.modelcard`'s option check); the data is read before the backbone loads, so a bad row
fails in seconds. Training resumes from `output_dir` checkpoints (`vrm.checkpoints`), and the final
`save_pretrained` directory loads back with `VRMForSequenceClassification.from_pretrained`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import set_seed

from .arguments import DataArguments, ModelArguments, VRMTrainingArguments
from .backbone import apply_lora, build_model, check_quantization, load_tokenizer
from .checkpoints import resolve_resume, save_final_model, save_sharded_final_model
from .config import record_tokenization
from .data import PreferenceTokenizer, TruncationStats, load_preferences, rating_ranges
from .embeddings import CachedPairDataset, CachedStatesCollator, EmbeddingCache
from .losses import ATTRIBUTE_TARGETS
from .modelcard import check_train_options, write_training_outputs
from .pair_layout import layout_collator
from .tokenization_cache import tokenize_pairs_cached
from .trainer import PairDataset, VRMTrainer

logger = logging.getLogger(__name__)


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
        raise ValueError(
            f"--rating_temperature must be a positive number, got {training_args.rating_temperature}"
        )


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
    pref_tokenizer = PreferenceTokenizer.from_data_args(tokenizer, data_args, bool(model.config.is_causal))
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
