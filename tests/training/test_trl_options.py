"""TRL's model / script / reward options under their TRL names: a TRL YAML runs with
`vrm train`, and each option has its effect."""

import json
import os

import pytest
import torch
import yaml

import vrm.models.modeling
import vrm.training.backbone
from vrm.cli.main import main
from vrm.cli.train import parse_train_args
from vrm.data.rows import load_preferences
from vrm.training.arguments import ModelArguments
from vrm.training.backbone import apply_lora, build_model, load_tokenizer

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples", "configs"
)


@pytest.mark.slow
def test_a_trl_reward_yaml_trains_with_lora_dora_and_its_task_type(
    tmp_path, pairs_file, llama_backbone_dir, capsys
):
    config = {  # the fields of a `trl reward` config (TRL's ModelConfig / ScriptArguments / RewardConfig)
        "model_name_or_path": llama_backbone_dir,
        "model_revision": "main",
        "torch_dtype": "float32",
        "attn_implementation": "eager",
        "dataset_name": pairs_file,  # one name, as TRL writes it
        "dataset_config": None,
        "dataset_train_split": "train",
        "dataset_num_proc": 1,
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_task_type": "SEQ_CLS",
        "lora_target_modules": ["q_proj", "v_proj"],
        "use_dora": True,
        "max_length": 64,
        "per_device_train_batch_size": 3,
        "learning_rate": 1.0e-3,
        "max_steps": 2,
        "save_strategy": "no",
        "report_to": "none",
        "output_dir": str(tmp_path / "out"),
        "tokenization_cache": str(tmp_path / "tokenized"),  # vrm's own: where datasets.map writes the pairs
    }
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--num_objectives", "2", "--feature_dim", "4"]) == 0
    assert "train data: 6 pairs -> 6 kept" in capsys.readouterr().out
    _, data_args, training_args = parse_train_args(["--config", str(path)])
    assert data_args.dataset_name == [pairs_file]  # TRL's one name: a list
    assert training_args.dataset_num_proc == 1  # a RewardConfig option, as in TRL
    adapter = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert (
        adapter["task_type"] is None and adapter["use_dora"] is True and adapter["r"] == 4
    )  # PeftModel loads it
    assert os.path.exists(tmp_path / "out" / "config.json")
    assert [name for name in os.listdir(tmp_path / "tokenized") if name.startswith("pairs-")]


def test_attn_implementation_and_dtype_reach_the_backbone(llama_backbone_dir):
    default = build_model(ModelArguments(model_name_or_path=llama_backbone_dir, num_objectives=2))
    eager = build_model(
        ModelArguments(
            model_name_or_path=llama_backbone_dir,
            num_objectives=2,
            attn_implementation="eager",
            torch_dtype="bfloat16",
        )
    )
    assert default.backbone.config._attn_implementation != "eager"
    assert eager.backbone.config._attn_implementation == "eager"
    assert eager.backbone.dtype == torch.bfloat16


def test_model_revision_reaches_every_from_pretrained(llama_backbone_dir, monkeypatch):
    calls = []

    def spy(owner, name):
        original = getattr(owner, name).__func__

        def recording(cls, path, *args, **kwargs):
            calls.append((f"{owner.__name__}.{name}", kwargs.get("revision")))
            return original(cls, path, *args, **kwargs)

        monkeypatch.setattr(owner, name, classmethod(recording))

    spy(vrm.training.backbone.AutoTokenizer, "from_pretrained")
    spy(vrm.training.backbone.AutoConfig, "from_pretrained")
    spy(vrm.models.modeling.AutoModel, "from_pretrained")
    model_args = ModelArguments(
        model_name_or_path=llama_backbone_dir, num_objectives=2, model_revision="v1.0"
    )
    load_tokenizer(model_args)
    build_model(model_args)
    assert {name for name, _ in calls} == {
        "AutoTokenizer.from_pretrained",
        "AutoConfig.from_pretrained",
        "AutoModel.from_pretrained",
    }
    assert all(revision == "v1.0" for _, revision in calls)


def test_use_dora_makes_dora_layers_and_lora_task_type_is_checked(llama_backbone_dir):
    def wrapped(**kwargs):
        args = ModelArguments(
            model_name_or_path=llama_backbone_dir,
            num_objectives=2,
            lora_r=4,
            lora_target_modules=["q_proj", "v_proj"],
            **kwargs,
        )
        return apply_lora(build_model(args), args)

    def magnitudes(model):
        return [name for name, _ in model.named_parameters() if "lora_magnitude_vector" in name]

    assert magnitudes(wrapped(use_dora=True)) and not magnitudes(wrapped())
    assert wrapped(lora_task_type="SEQ_CLS").peft_config["default"].task_type is None  # saved task-agnostic
    with pytest.raises(ValueError, match="--lora_task_type CAUSAL_LM: a reward model's adapter is SEQ_CLS"):
        wrapped(lora_task_type="CAUSAL_LM")


def test_dataset_config_is_the_name_of_load_dataset(monkeypatch):
    import datasets

    seen = {}

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        seen.update(path=path, name=name, split=split)
        return [{"prompt": "Hi", "chosen": "Hello there", "rejected": "Go away"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_preferences("org/prefs", split="train", dataset_config="cleaned")
    assert seen == {"path": "org/prefs", "name": "cleaned", "split": "train"}
    assert rows[0].location == "org/prefs[train]: row 0"


def test_load_in_4bit_without_cuda_is_one_line_before_anything_loads(tmp_path, capsys, train_argv):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run QLoRA")
    missing = str(tmp_path / "no-such-data.jsonl")  # never read: the check comes first
    argv = train_argv(str(tmp_path / "no-such-model"), missing, str(tmp_path / "out"))
    assert main(["train", *argv, "--use_peft", "--load_in_4bit"]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "vrm train: error: --load_in_4bit needs a CUDA GPU (bitsandbytes quantization); none is available"
    )
    assert main(["train", *argv, "--load_in_8bit"]) == 1
    assert (
        "--load_in_8bit quantizes the backbone, which then trains through LoRA only"
        in capsys.readouterr().err
    )


def test_example_configs_parse_without_deprecation_warnings(recwarn):
    cpu = ["--dataset_name", "x.jsonl", "--bf16", "false"]  # the LoRA example is for a GPU
    for name in sorted(os.listdir(EXAMPLES)):
        parse_train_args(["--config", os.path.join(EXAMPLES, name), *cpu])
    deprecated = [
        str(w.message) for w in recwarn if issubclass(w.category, FutureWarning | DeprecationWarning)
    ]
    assert not deprecated
    _, _, training_args = parse_train_args(["--config", os.path.join(EXAMPLES, "vrm_qwen_lora.yaml"), *cpu])
    assert training_args.activation_checkpointing is True
