"""Saving the trained model (`vrm.training.checkpoints`): LoRA merged and adapter, sharded saves, and resuming
from the newest complete checkpoint."""

import json
import os
import shutil

import pytest
import torch

from vrm.cli.main import main
from vrm.data.collate import pad_sequences
from vrm.models.modeling import VRMForSequenceClassification
from vrm.training.arguments import ModelArguments
from vrm.training.backbone import apply_lora
from vrm.training.checkpoints import resolve_resume, save_final_model, save_sharded_final_model


@pytest.mark.parametrize("setup", ["llama_chat", "bert_pair"])
def test_lora_merged_and_adapter_checkpoints_give_identical_rewards(
    tmp_path, setup, tiny_model, single_inputs
):
    from peft import PeftModel

    model, tokenizer, pref = tiny_model(setup)
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    peft_model = apply_lora(model, ModelArguments(model_name_or_path="unused", lora_r=4))
    with torch.no_grad():  # as if trained: non-zero LoRA B matrices and a changed head
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or ("head" in name and param.requires_grad):
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.eval()
    sequences, _ = single_inputs(pref)
    ids, mask = pad_sequences(sequences, tokenizer.pad_token_id)
    with torch.no_grad():
        trained = peft_model(input_ids=ids, attention_mask=mask).logits
        base = VRMForSequenceClassification.from_pretrained(base_dir).eval()
        assert not torch.allclose(base(input_ids=ids, attention_mask=mask).logits, trained, atol=1e-4)
        out_dir = tmp_path / "out"
        save_final_model(peft_model, tokenizer, str(out_dir))
        merged = VRMForSequenceClassification.from_pretrained(out_dir).eval()
        assert torch.allclose(merged(input_ids=ids, attention_mask=mask).logits, trained, atol=1e-5)
        adapter = PeftModel.from_pretrained(base, out_dir / "adapter").eval()
        assert torch.allclose(adapter(input_ids=ids, attention_mask=mask).logits, trained, atol=1e-5)


class _ShardedTrainerStub:
    """What `save_sharded_final_model` uses of a Trainer whose `save_model` gathers the full state dict."""

    def __init__(self, model, tokenizer, model_args, args):
        self.model, self.processing_class, self.model_args, self.args = model, tokenizer, model_args, args

    def save_model(self, path, _internal_call=False):
        self.model.save_pretrained(path)

    def is_world_process_zero(self):
        return True


@pytest.mark.parametrize("use_peft", [False, True])
def test_sharded_final_save_writes_a_loadable_merged_model(tmp_path, llama_backbone_dir, use_peft):
    from transformers import AutoTokenizer

    from vrm.models.modeling import VRMForSequenceClassification
    from vrm.training.arguments import ModelArguments, VRMTrainingArguments
    from vrm.training.backbone import apply_lora, build_model

    model_args = ModelArguments(
        model_name_or_path=llama_backbone_dir, num_objectives=2, feature_dim=4, use_peft=use_peft
    )
    model = build_model(model_args)
    if use_peft:
        model = apply_lora(model, model_args)
        with torch.no_grad():  # a "trained" adapter: B != 0
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1)
    args = VRMTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    os.makedirs(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(llama_backbone_dir)
    save_sharded_final_model(_ShardedTrainerStub(model, tokenizer, model_args, args), args.output_dir)
    loaded = VRMForSequenceClassification.from_pretrained(args.output_dir).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    reference = model.merge_and_unload() if use_peft else model
    with torch.no_grad():
        expected = reference.eval()(input_ids=ids, prompt_lengths=torch.tensor([3])).logits
        got = loaded(input_ids=ids, prompt_lengths=torch.tensor([3])).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert os.path.isdir(os.path.join(args.output_dir, "adapter")) == use_peft
    assert not os.path.exists(os.path.join(args.output_dir, ".final-gathered"))


def _checkpoint(root, step, state: str | None, weights_cut: bool = False):
    from safetensors.torch import save_file

    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"weight": torch.zeros(64)}, str(path / "model.safetensors"))
    if weights_cut:  # a full disk, or a copy cut short: the state was written, the weights were not whole
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return str(path)


def test_resume_skips_checkpoints_cut_off_mid_write(tmp_path):
    good = _checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    _checkpoint(tmp_path, 8, json.dumps({"global_step": 8}), weights_cut=True)
    _checkpoint(tmp_path, 10, '{"global_step": 1')  # killed while writing the state
    _checkpoint(tmp_path, 12, None)  # killed before it
    assert resolve_resume(str(tmp_path), "true") == good
    with pytest.raises(ValueError, match=r"checkpoint-12: incomplete checkpoint"):
        resolve_resume(str(tmp_path), str(tmp_path / "checkpoint-12"))
    with pytest.raises(ValueError, match=r"checkpoint-8: incomplete checkpoint"):
        resolve_resume(str(tmp_path), str(tmp_path / "checkpoint-8"))
    shutil.rmtree(good)
    assert resolve_resume(str(tmp_path), "auto") is None  # nothing complete: start fresh


@pytest.mark.slow
def test_resume_after_a_crash_mid_checkpoint(tmp_path, pairs_file, llama_backbone_dir, capsys, train_argv):
    output = tmp_path / "run"
    argv = train_argv(llama_backbone_dir, pairs_file, str(output), save_strategy="steps", save_steps=2)
    assert main(["train", *argv]) == 0
    os.remove(output / "checkpoint-4" / "trainer_state.json")  # as if killed while writing checkpoint-4
    argv = train_argv(
        llama_backbone_dir,
        pairs_file,
        str(output),
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        resume_from_checkpoint="true",
    )
    assert main(["train", *argv]) == 0
    assert "skipping" in capsys.readouterr().out
    with open(output / "checkpoint-6" / "trainer_state.json") as handle:
        state = json.load(handle)
    assert state["global_step"] == 6
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [2, 4, 6]


def test_a_checkpoint_that_cannot_be_written_is_one_error_naming_the_directory(
    tmp_path, pairs_file, llama_backbone_dir, capsys, train_argv, monkeypatch
):
    import transformers.modeling_utils

    def full_disk(*args, **kwargs):
        raise OSError(27, "File too large")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    output = tmp_path / "run"
    argv = train_argv(llama_backbone_dir, pairs_file, str(output), save_strategy="steps", save_steps=2)
    assert main(["train", *argv]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(
        f"vrm train: error: {output}: writing the checkpoint of step 2"
    )
    assert "File too large" in errors[0] and "Traceback" not in err
