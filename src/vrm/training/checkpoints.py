"""Checkpoints of `vrm train`: resuming from the newest complete one, writing the final model crash-safe.

`save_final_model` writes the final `save_pretrained` directory (staged, `config.json` moved in last);
`save_sharded_final_model` does it for FSDP / DeepSpeed runs (`trainer` is a `VRMTrainer`), after every process took part in gathering the
full state dict; `resolve_resume` picks the checkpoint `--resume_from_checkpoint` means.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile

from vrm.models.config import record_tokenization
from vrm.models.integrity import check_finite_weights, check_weight_files
from vrm.models.modeling import VRMForSequenceClassification
from vrm.training.backbone import build_model

logger = logging.getLogger(__name__)


def save_final_model(
    model, tokenizer, output_dir: str, merge_lora: bool = True, tokenization: dict | None = None
) -> VRMForSequenceClassification:
    """Write the final model into `output_dir` (beside the `checkpoint-*` directories), crash-safe.

    Everything is written to a staging directory first, then moved in, `config.json` last: a crash leaves the
    previous final model or none, never a loadable half. With LoRA the adapter and head also go to `adapter/`,
    and the saved model is the merged one (or the base model plus head, if not `merge_lora`). `tokenization`
    (`PreferenceTokenizer.settings()`) is recorded in the saved config (`vrm.models.config.record_tokenization`).
    """
    check_finite_weights(model.named_parameters(), f"{output_dir}: final model not saved")
    staging = os.path.join(output_dir, ".final-staging")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    plain = model
    if hasattr(model, "peft_config"):
        model.save_pretrained(os.path.join(staging, "adapter"))
        plain = model.merge_and_unload() if merge_lora else model.get_base_model()
    if tokenization is not None:
        record_tokenization(plain.config, tokenization)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    names = sorted(os.listdir(staging), key=lambda name: name == "config.json")
    for name in names:
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)
    return plain


def checkpoint_is_complete(path: str) -> bool:
    """`Trainer` writes `trainer_state.json` after the weights, optimizer and RNG states: a checkpoint without a
    readable one was cut off while it was written. A readable state beside a truncated weights file (a full disk,
    a copy cut short) is incomplete too: every `*.safetensors` file must have its full length and every torch
    file (`optimizer.pt`, `rng_state.pth`, ...) its zip directory, which a torch file ends with."""
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as handle:
            json.load(handle)
        check_weight_files(path)
        for name in os.listdir(path):
            if name.endswith((".pt", ".pth", ".bin")):
                with zipfile.ZipFile(os.path.join(path, name)):
                    pass
    except (OSError, ValueError, zipfile.BadZipFile):  # ModelLoadError is a ValueError
        return False
    return True


def resolve_resume(output_dir: str, value: str | bool | None) -> str | None:
    """The checkpoint `--resume_from_checkpoint VALUE` means: true / auto, the newest complete checkpoint in
    `output_dir`, if any (one a crash cut off mid-write is skipped, with a warning); a path, that checkpoint."""
    if value is None or str(value).lower() in ("false", "no", ""):
        return None
    if str(value).lower() in ("true", "auto", "yes"):
        found = []
        if os.path.isdir(output_dir):
            for name in os.listdir(output_dir):
                match = re.fullmatch(r"checkpoint-(\d+)", name)
                if match and os.path.isdir(os.path.join(output_dir, name)):
                    found.append((int(match.group(1)), os.path.join(output_dir, name)))
        for _, path in sorted(found, reverse=True):
            if checkpoint_is_complete(path):
                return path
            logger.warning("skipping %s: incomplete (cut off while it was written)", path)
            print(f"[vrm] skipping {path}: incomplete (cut off while it was written)", flush=True)
        logger.warning("no complete checkpoint in %s to resume from; starting fresh", output_dir)
        return None
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint directory")
    if not checkpoint_is_complete(value):
        raise ValueError(
            f"--resume_from_checkpoint {value}: incomplete checkpoint (no readable trainer_state.json, or a "
            "truncated weights or optimizer file)"
        )
    return value


def save_sharded_final_model(trainer, output_dir: str, tokenization: dict | None = None) -> None:
    """The final model of an FSDP / DeepSpeed run: every process takes part in gathering the full state dict
    (`Trainer.save_model`); process 0 then writes the plain model crash-safe, as `save_final_model` does (with
    LoRA: the gathered adapter is merged into a freshly loaded base model, whose config gets `tokenization`
    back)."""
    gathered = os.path.join(output_dir, ".final-gathered")
    trainer.save_model(gathered, _internal_call=True)
    if trainer.is_world_process_zero():
        from peft import PeftModel

        if os.path.exists(os.path.join(gathered, "adapter_config.json")):
            if trainer.model_args is None:
                raise ValueError(
                    "a sharded LoRA model is rebuilt from its ModelArguments: pass model as a name"
                )
            model = PeftModel.from_pretrained(build_model(trainer.model_args), gathered)
        else:
            model = VRMForSequenceClassification.from_pretrained(gathered)
        save_final_model(
            model, trainer.processing_class, output_dir, trainer.args.merge_lora_on_save, tokenization
        )
        shutil.rmtree(gathered, ignore_errors=True)
