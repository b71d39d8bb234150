"""`VRMTrainer` as a TRL user writes it: `VRMTrainer(model, args, train_dataset).train()` on a `datasets.Dataset`."""

from __future__ import annotations

import json
import os

import pytest
from datasets import Dataset
from tiny_models import PAIRS, llama_config
from transformers import AutoTokenizer

from vrm import RewardPipeline, VRMTrainer, VRMTrainingArguments
from vrm.models import VRMForSequenceClassification
from vrm.training import ModelArguments


def preference_rows(copies: int = 4) -> list[dict]:
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS] * copies


def arguments(output_dir, **overrides) -> VRMTrainingArguments:
    settings = {
        "output_dir": str(output_dir),
        "max_steps": 12,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "max_length": 64,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
    }
    return VRMTrainingArguments(**{**settings, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("head_type", ["bt", "vrm"])
def test_trains_a_head_from_a_datasets_dataset(tmp_path, llama_backbone_dir, head_type):
    train = Dataset.from_list(preference_rows())
    args = arguments(tmp_path / "run", model_init_kwargs={"head_type": head_type, "num_objectives": None})
    trainer = VRMTrainer(model=llama_backbone_dir, args=args, train_dataset=train)
    before = [p.detach().clone() for p in trainer.model.head.parameters()]
    result = trainer.train()
    trainer.save_model()
    assert result.global_step == 12 and result.training_loss == result.training_loss  # finite
    assert any((a != b.detach()).any() for a, b in zip(before, trainer.model.head.parameters(), strict=True))
    output = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "README.md", "train_results.json", "trainer_state.json"):
        assert (output / name).exists(), name
    config = json.loads((output / "config.json").read_text())
    assert config["head_type"] == head_type and config["tokenization"]["max_length"] == 64
    assert "train dataset" in (output / "README.md").read_text()  # the card names the data it came from
    reward = RewardPipeline.from_pretrained(str(output), device="cpu")(
        "Tell me a joke.", "Why did the chicken?"
    )
    assert isinstance(reward["reward"], float)
    assert (reward["reward_std"] > 0) == (head_type == "vrm")


@pytest.mark.slow
def test_the_same_seed_trains_the_same_model_from_a_dataset_and_from_files(tmp_path, llama_backbone_dir):
    rows = preference_rows(2)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    rewards = []
    for name, data in (("dataset", Dataset.from_list(rows)), ("file", str(path))):
        model = ModelArguments(model_name_or_path=llama_backbone_dir, head_type="bt")
        trainer = VRMTrainer(model=model, args=arguments(tmp_path / name, max_steps=4), train_dataset=data)
        trainer.train()
        trainer.save_model()
        pipeline = RewardPipeline.from_pretrained(str(tmp_path / name), device="cpu")
        rewards.append(pipeline("Tell me a joke.", "No.")["reward"])
    assert rewards[0] == pytest.approx(rewards[1], abs=1e-6)


@pytest.mark.slow
def test_a_model_object_trains_with_its_tokenizer(tmp_path, llama_backbone_dir):
    model = VRMForSequenceClassification.from_backbone(llama_backbone_dir, head_type="moe", num_objectives=2)
    tokenizer = AutoTokenizer.from_pretrained(llama_backbone_dir)
    train = Dataset.from_list(preference_rows(2))
    nameless = VRMForSequenceClassification.from_backbone_config(llama_config(len(tokenizer)), head_type="bt")
    with pytest.raises(ValueError, match="processing_class"):  # no backbone name to load a tokenizer by
        VRMTrainer(model=nameless, args=arguments(tmp_path / "x"), train_dataset=train)
    trainer = VRMTrainer(
        model=model,
        args=arguments(tmp_path / "run", max_steps=2),
        train_dataset=train,
        eval_dataset=Dataset.from_list(preference_rows(1)),
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_nll" in metrics


def test_a_bad_row_is_named_before_the_backbone_loads(tmp_path):
    rows = preference_rows(1)
    rows[3] = {"prompt": "p", "chosen": "a"}
    with pytest.raises(ValueError, match=r"train dataset:3: missing field 'rejected'"):
        # the backbone path does not exist: the data is checked first
        VRMTrainer(
            model=str(tmp_path / "no-backbone"),
            args=arguments(tmp_path),
            train_dataset=Dataset.from_list(rows),
        )


def test_skip_invalid_rows_skips_and_says_so(tmp_path, llama_backbone_dir, capsys):
    rows = preference_rows(1)
    rows[2] = {"prompt": "p", "chosen": "a"}
    args = arguments(
        tmp_path / "run", max_steps=1, skip_invalid_rows=True, model_init_kwargs={"head_type": "bt"}
    )
    trainer = VRMTrainer(model=llama_backbone_dir, args=args, train_dataset=Dataset.from_list(rows))
    assert len(trainer.train_dataset) == len(rows) - 1
    assert "skipped 1 invalid rows (train dataset:2" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_true_resumes_from_the_newest_complete_checkpoint(tmp_path, llama_backbone_dir):
    args = arguments(tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2)
    model = ModelArguments(model_name_or_path=llama_backbone_dir, head_type="bt")
    VRMTrainer(model=model, args=args, train_dataset=Dataset.from_list(preference_rows(1))).train()
    (tmp_path / "run" / "checkpoint-4" / "trainer_state.json").unlink()  # cut off while it was written
    args = arguments(tmp_path / "run", max_steps=6, save_strategy="steps", save_steps=2)
    trainer = VRMTrainer(model=model, args=args, train_dataset=Dataset.from_list(preference_rows(1)))
    result = trainer.train(resume_from_checkpoint=True)
    assert result.global_step == 6
    assert os.path.isdir(tmp_path / "run" / "checkpoint-6")


def test_model_init_kwargs_are_checked(tmp_path, llama_backbone_dir):
    train = Dataset.from_list(preference_rows(1))
    args = arguments(tmp_path, model_init_kwargs={"head_typ": "bt"})
    with pytest.raises(ValueError, match=r"model_init_kwargs: unknown keys \['head_typ'\]"):
        VRMTrainer(model=llama_backbone_dir, args=args, train_dataset=train)
    built = ModelArguments(model_name_or_path=llama_backbone_dir)
    args = arguments(tmp_path, model_init_kwargs={"head_type": "bt"})
    with pytest.raises(ValueError, match="model_init_kwargs apply when `model` is a name"):
        VRMTrainer(model=built, args=args, train_dataset=train)  # silently ignored otherwise


def test_a_model_object_without_a_tokenizer_uses_its_backbones_and_saves(tmp_path, llama_backbone_dir):
    model = VRMForSequenceClassification.from_backbone(llama_backbone_dir, head_type="bt")
    trainer = VRMTrainer(
        model=model, args=arguments(tmp_path / "run", max_steps=1), train_dataset=preference_rows(1)
    )
    trainer.train()
    trainer.save_model()
    assert (tmp_path / "run" / "tokenizer_config.json").exists()
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    # the run's own summary (`train()`'s metrics), not the last few steps' running averages
    assert "train_runtime" in results and "accuracy" not in results and "nll" not in results


def test_evaluation_only_on_cached_backbone_states(tmp_path, llama_backbone_dir):
    model = ModelArguments(model_name_or_path=llama_backbone_dir, head_type="bt", freeze_backbone=True)
    args = arguments(tmp_path / "run", embedding_cache=str(tmp_path / "states"))
    trainer = VRMTrainer(model=model, args=args, eval_dataset=Dataset.from_list(preference_rows(1)))
    assert 0.0 <= trainer.evaluate()["eval_accuracy"] <= 1.0


def test_a_path_names_the_model_and_a_dict_of_eval_sets_is_refused(tmp_path, llama_backbone_dir):
    from pathlib import Path

    args = arguments(tmp_path / "run", max_steps=1, model_init_kwargs={"head_type": "bt"})
    trainer = VRMTrainer(model=Path(llama_backbone_dir), args=args, train_dataset=preference_rows(1))
    assert trainer.model_args.model_name_or_path == llama_backbone_dir
    with pytest.raises(ValueError, match="one data set, not a dict"):
        VRMTrainer(model=Path(llama_backbone_dir), args=args, eval_dataset={"a": preference_rows(1)})


@pytest.mark.parametrize("backbone", ["llama_backbone_dir", "bert_backbone_dir"])
def test_shared_prompt_layout_names_rows_without_a_shared_prompt(tmp_path, backbone, request):
    conversation = [{"role": "user", "content": "How do I fix a slow query?"}]
    rows = [
        {
            "chosen": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": "An index."},
            ],
            "rejected": [{"role": "user", "content": f"other {i}"}, {"role": "assistant", "content": "No."}],
        }
        for i in range(3)
    ]
    rows.append({"prompt": conversation, "chosen": "Add an index.", "rejected": "No."})  # this one shares one
    args = arguments(tmp_path, pair_layout="shared_prompt", model_init_kwargs={"head_type": "bt"})
    with pytest.raises(
        ValueError, match=r"3 train rows have no prompt shared .*train dataset:0.*--pair_layout separate"
    ):
        VRMTrainer(model=request.getfixturevalue(backbone), args=args, train_dataset=rows)


def test_max_length_beyond_the_position_table_is_clamped_and_a_negative_one_refused(
    tmp_path, bert_backbone_dir, capsys
):
    from vrm import RewardPipeline as Pipeline

    args = arguments(tmp_path / "run", max_steps=1, max_length=10**12, model_init_kwargs={"head_type": "bt"})
    trainer = VRMTrainer(model=bert_backbone_dir, args=args, train_dataset=preference_rows(1))
    limit = trainer.model.max_positions
    assert limit == 256 and trainer.args.max_length == limit  # the tiny BERT's position table
    assert (
        f"max_length 1000000000000 is more than the backbone's {limit} positions: inputs are cut to {limit}"
        in capsys.readouterr().out
    )
    trainer.train()
    trainer.save_model()
    assert Pipeline.from_pretrained(str(tmp_path / "run"), device="cpu").template.max_length == limit
    with pytest.raises(ValueError, match="--max_length must be a positive number of tokens, got -5"):
        arguments(tmp_path, max_length=-5)


@pytest.mark.parametrize("head_type", ["bt", "vrm"])
def test_training_logs_what_the_head_has_and_no_pin_memory_warning(
    tmp_path, llama_backbone_dir, head_type, recwarn
):
    args = arguments(
        tmp_path / "run", max_steps=2, logging_steps=1, model_init_kwargs={"head_type": head_type}
    )
    trainer = VRMTrainer(model=llama_backbone_dir, args=args, train_dataset=preference_rows(1))
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert "reward_spread" in logged and "reward_uncertainty" not in logged
    latent = {"kl_w", "kl_z", "beta_w", "beta_z", "reward_std"}
    assert (latent <= set(logged)) if head_type == "vrm" else not (latent & set(logged))
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]
