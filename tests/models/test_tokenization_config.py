"""Tokenization settings are one block of the config, written by every save path and read by every load path."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from vrm.cli.main import main
from vrm.data.tokenization import PreferenceTokenizer
from vrm.evaluation.pairwise import evaluate_model
from vrm.models.config import record_tokenization
from vrm.models.modeling import VRMForSequenceClassification
from vrm.scoring.pipeline import RewardPipeline
from vrm.training.arguments import ModelArguments
from vrm.training.backbone import apply_lora, build_model, load_tokenizer
from vrm.training.checkpoints import save_sharded_final_model

KEYS = {"max_length", "max_prompt_length", "truncation", "input_format", "response_marker_ids", "pair_layout"}


def saved_block(directory) -> dict:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    assert not {"max_length", "input_format", "response_marker_ids"} & set(config)  # one block, no copies
    return config["tokenization"]


@pytest.mark.slow
def test_training_records_max_prompt_length_and_evaluation_uses_it(
    tmp_path, pairs_file, llama_backbone_dir, train_argv
):
    output = str(tmp_path / "run")
    argv = train_argv(llama_backbone_dir, pairs_file, output, max_steps=1, max_prompt_length=12)
    assert main(["train", *argv]) == 0
    block = saved_block(output)
    assert set(block) == KEYS
    assert (block["max_length"], block["max_prompt_length"], block["truncation"]) == (64, 12, "prompt_left")
    pipeline = RewardPipeline.from_pretrained(output)
    assert (pipeline.template.max_length, pipeline.template.max_prompt_length) == (64, 12)  # not 64 // 2
    assert pipeline.template.response_marker_ids == block["response_marker_ids"]
    # a long prompt keeps 12 tokens when the response is long, as in training
    ids, prompt_length = pipeline.template.tokenize_single("word " * 80, "answer " * 80)
    assert len(ids) == 64 and prompt_length == 12
    # `vrm eval` builds the same tokenizer; an over-long pair is cut the same way
    report = evaluate_model(output, [pairs_file], progress=False)
    assert report.datasets[pairs_file].tokenization.kept == 6


def test_lora_under_fsdp_or_deepspeed_keeps_the_tokenization(tmp_path, llama_backbone_dir):
    """`save_sharded_final_model` rebuilds the model from the backbone: the block must come back."""
    model_args = ModelArguments(
        model_name_or_path=llama_backbone_dir,
        use_peft=True,
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
        num_objectives=2,
        feature_dim=4,
    )
    tokenizer = load_tokenizer(model_args)
    template = PreferenceTokenizer(tokenizer, max_length=48, max_prompt_length=10, truncation="drop")
    torch.manual_seed(0)
    model = build_model(model_args)
    record_tokenization(model.config, template.settings())
    peft_model = apply_lora(model, model_args)
    with torch.no_grad():  # as if trained
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or ("head" in name and param.requires_grad):
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.eval()
    output = tmp_path / "out"
    trainer = SimpleNamespace(  # what an FSDP / DeepSpeed Trainer does: gather, then process 0 writes
        save_model=lambda directory, _internal_call=False: peft_model.save_pretrained(directory),
        is_world_process_zero=lambda: True,
        processing_class=tokenizer,
        model_args=model_args,
        args=SimpleNamespace(output_dir=str(output), merge_lora_on_save=True),
    )
    save_sharded_final_model(trainer, str(output), template.settings())
    assert saved_block(output) == template.settings()
    loaded = VRMForSequenceClassification.from_pretrained(output).eval()
    ids = torch.tensor([template.tokenize_single("How do I fix a slow query?", "Add an index.")[0]])
    with torch.no_grad():  # the marker is back: the prompt end is found without prompt_lengths
        assert torch.allclose(loaded(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-5)
    rebuilt = RewardPipeline.from_pretrained(str(output)).template
    # the recorded `drop` is the training policy: scoring truncates by `prompt_left` (no row is dropped)
    assert (rebuilt.max_length, rebuilt.max_prompt_length, rebuilt.truncation) == (48, 10, "prompt_left")


def test_pipeline_save_writes_the_block_and_old_checkpoints_still_load(tmp_path, tiny_model):
    model, tokenizer, pref = tiny_model("llama_chat")
    pipeline = RewardPipeline(model, tokenizer)
    pipeline.save_pretrained(str(tmp_path / "new"))
    assert saved_block(tmp_path / "new") == {**pref.settings(), "max_prompt_length": 32}
    # a checkpoint written before the block: top-level fields, no max_prompt_length
    config_path = tmp_path / "new" / "config.json"
    config = json.loads(config_path.read_text())
    block = config.pop("tokenization")
    config.update(
        max_length=40, input_format=block["input_format"], response_marker_ids=block["response_marker_ids"]
    )
    config_path.write_text(json.dumps(config))
    old = RewardPipeline.from_pretrained(str(tmp_path / "new"))
    assert old.model.config.response_marker_ids == pref.response_marker_ids
    assert (old.template.max_length, old.template.max_prompt_length) == (40, 20)
    assert old.template.input_format == "chat"
    # a `--max_length` override below the recorded prompt budget falls back to half of it
    record_tokenization(old.model.config, {"max_prompt_length": 30})
    assert RewardPipeline(old.model, tokenizer, max_length=24).template.max_prompt_length == 12


def test_a_model_trained_with_truncation_drop_still_scores_every_eval_pair(tmp_path, tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    record_tokenization(model.config, {"truncation": "drop", "max_length": 64, "max_prompt_length": 32})
    output = str(tmp_path / "model")
    RewardPipeline(model, tokenizer).save_pretrained(output)
    assert saved_block(output)["truncation"] == "drop"  # the training policy stays recorded
    path = str(tmp_path / "long.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "word " * 200, "chosen": "yes " * 50, "rejected": "no"}) + "\n")
        handle.write(json.dumps({"prompt": "Hi", "chosen": "Hello there", "rejected": "Go away"}) + "\n")
    entry = evaluate_model(output, [path], progress=False).datasets[path].to_dict()
    stats = entry["tokenization"]
    assert stats["kept"] == 2 and stats["dropped_too_long"] == 0  # scored, not dropped
    assert stats["prompt_truncated"] + stats["response_truncated"] >= 1  # and counted as truncated
    assert entry["overall"]["pairs"] == 2
