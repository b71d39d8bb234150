"""`vrm train` (and `vrm eval` on what it trained) end to end on tiny backbones and tiny data."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import yaml
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.cli.train import parse_train_args
from vrm.data.collate import pad_sequences
from vrm.data.tokenization import PreferenceTokenizer
from vrm.models.modeling import VRMForSequenceClassification


@pytest.mark.slow
@pytest.mark.parametrize("backbone_fixture", ["llama_backbone_dir", "bert_backbone_dir"])
def test_train_then_eval_end_to_end(request, tmp_path, pairs_file, capsys, backbone_fixture, train_argv):
    backbone = request.getfixturevalue(backbone_fixture)
    output = str(tmp_path / "run")
    assert main(["train", *train_argv(backbone, pairs_file, output, eval_dataset_name=pairs_file)]) == 0
    printed = capsys.readouterr().out
    assert "train data: 6 pairs -> 6 kept" in printed and "eval_accuracy" in printed
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert os.path.exists(os.path.join(output, name)), name

    report_path = str(tmp_path / "report.json")
    assert (
        main(["eval", "--model", output, "--dataset", pairs_file, "--output", report_path, "--no_progress"])
        == 0
    )
    table = capsys.readouterr().out
    assert "accuracy" in table and "pairs.jsonl" in table
    with open(report_path) as handle:
        report = json.load(handle)
    overall = report["datasets"][pairs_file]["overall"]
    assert overall["pairs"] == 6 and 0.0 <= overall["accuracy"] <= 1.0
    assert set(report["datasets"][pairs_file]["subsets"]) == {"a", "b"}
    assert len(overall["objective_weights"]) == 2 and abs(sum(overall["objective_weights"]) - 1) < 1e-3
    assert overall["mean_reward_std"] > 0

    # the saved model scores a pair exactly as the evaluation did
    model = VRMForSequenceClassification.from_pretrained(output).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output)
    pref = PreferenceTokenizer.from_model_config(tokenizer, model.config)
    ids, prompt_length = pref.tokenize_single("How do I fix a slow query?", "Add an index and measure again.")
    ids_t, mask = pad_sequences([ids], tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids_t, attention_mask=mask).logits).all()


@pytest.mark.slow
def test_training_learns_a_separable_preference(tmp_path, llama_backbone_dir, train_argv, write_pairs):
    """Chosen answers say 'yes', rejected say 'no': a few dozen steps must fit it (loss falls, accuracy 1)."""
    rows = [
        {"prompt": f"question {i}?", "chosen": "yes " * (1 + i % 3), "rejected": "no " * (1 + i % 2)}
        for i in range(12)
    ]
    data = write_pairs(str(tmp_path / "sep.jsonl"), rows)
    output = str(tmp_path / "run")
    argv = train_argv(
        llama_backbone_dir,
        data,
        output,
        max_steps=20,
        per_device_train_batch_size=6,
        learning_rate=3e-3,
        head_type="bt",
    )
    assert main(["train", *argv]) == 0
    report_path = str(tmp_path / "r.json")
    main(["eval", "--model", output, "--dataset", data, "--output", report_path, "--no_progress"])
    with open(report_path) as handle:
        assert json.load(handle)["datasets"][data]["overall"]["accuracy"] == 1.0


def test_yaml_config_with_flag_overrides(tmp_path, pairs_file, llama_backbone_dir):
    config = tmp_path / "cfg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": llama_backbone_dir,
                "dataset_name": [pairs_file],
                "head_type": "moe",
                "beta_z": 0.5,
                "max_steps": 3,
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    model_args, data_args, training_args = parse_train_args(["--config", str(config), "--beta_z", "0.25"])
    assert model_args.head_type == "moe" and data_args.dataset_name == [pairs_file]
    assert training_args.beta_z == 0.25 and training_args.max_steps == 3

    config.write_text(yaml.safe_dump({"model_name_or_path": "x", "learning_rat": 0.1}))
    with pytest.raises(SystemExit):
        parse_train_args(["--config", str(config)])


@pytest.mark.slow
def test_resume_from_checkpoint_continues_the_run(
    tmp_path, pairs_file, llama_backbone_dir, capsys, train_argv
):
    output = str(tmp_path / "run")
    argv = train_argv(llama_backbone_dir, pairs_file, output, save_strategy="steps", save_steps=2)
    assert main(["train", *argv]) == 0
    assert os.path.isdir(os.path.join(output, "checkpoint-4"))
    capsys.readouterr()
    argv = train_argv(
        llama_backbone_dir,
        pairs_file,
        output,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        resume_from_checkpoint="true",
    )
    assert main(["train", *argv]) == 0
    with open(os.path.join(output, "checkpoint-6", "trainer_state.json")) as handle:
        state = json.load(handle)
    assert state["global_step"] == 6
    steps_logged = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps_logged == [2, 4, 6]  # the resumed run went on from step 4, it did not start again


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        {"use_peft": "true", "lora_r": 4, "lora_target_modules": "q_proj v_proj"},
        {"gradient_checkpointing": "true", "head_type": "ib"},
    ],
    ids=["lora", "gradient_checkpointing"],
)
def test_train_variants_save_a_loadable_model(tmp_path, pairs_file, llama_backbone_dir, extra, train_argv):
    output = str(tmp_path / "run")
    targets = extra.pop("lora_target_modules", None)
    argv = train_argv(llama_backbone_dir, pairs_file, output, **extra)
    if targets:
        argv += ["--lora_target_modules", *targets.split()]
    assert main(["train", *argv]) == 0
    model = VRMForSequenceClassification.from_pretrained(output).eval()
    assert os.path.isdir(os.path.join(output, "adapter")) == bool(targets)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, prompt_lengths=torch.tensor([2])).logits).all()


def test_example_configs_parse():
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "configs")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".yaml"))
    assert names
    for name in names:
        # bf16 is validated against the hardware at parse time: the GPU configs are checked with it off
        model_args, _, training_args = parse_train_args(
            ["--config", os.path.join(folder, name), "--bf16", "false"]
        )
        assert model_args.head_type == "vrm" and training_args.output_dir.startswith("runs/"), name


@pytest.mark.slow
def test_eval_report_has_calibration_uncertainty_and_length_bias(
    tmp_path, pairs_file, llama_backbone_dir, train_argv
):
    output = str(tmp_path / "run")
    assert main(["train", *train_argv(llama_backbone_dir, pairs_file, output)]) == 0
    report_path = str(tmp_path / "report.json")
    assert (
        main(["eval", "--model", output, "--dataset", pairs_file, "--output", report_path, "--no_progress"])
        == 0
    )
    with open(report_path) as handle:
        overall = json.load(handle)["datasets"][pairs_file]["overall"]
    assert 0 <= overall["ece"] <= 0.5 and 0 <= overall["brier"] <= 1
    assert set(overall["selective_accuracy"]["curve"]) >= {"1", "0.5"}
    assert overall["selective_accuracy"]["curve"]["1"] == pytest.approx(overall["accuracy"])
    bias = overall["length_bias"]
    assert bias["pairs_chosen_longer"] + bias["pairs_chosen_shorter"] <= overall["pairs"]
    assert 0 <= bias["longer_wins_accuracy"] <= 1


@pytest.mark.slow
def test_objective_labels_train_the_weights_from_the_cli(
    tmp_path, llama_backbone_dir, capsys, train_argv, write_pairs
):
    """`--objective_column` + `--objective_label_weight`: the label likelihood is trained and logged; asking for
    it without labels, or with a head that has no objective weights, fails before any training."""
    rows = [
        {
            "prompt": f"{'how do I hurt' if i % 2 else 'how do I bake'} thing {i}?",
            "chosen": "safe answer" if i % 2 else "tasty answer",
            "rejected": "bad answer",
            "objective": "harm" if i % 2 else ("help" if i % 3 else None),  # some rows unlabelled
        }
        for i in range(12)
    ]
    data = write_pairs(str(tmp_path / "labelled.jsonl"), rows)
    output = str(tmp_path / "run")
    labels = ["--attribute_names", "help", "harm", "--objective_column", "objective"]
    argv = train_argv(
        llama_backbone_dir, data, output, objective_label_weight=1.0, max_steps=2, logging_steps=1
    )
    capsys.readouterr()
    assert main(["train", *argv, *labels]) == 0
    logged = re.findall(r"'objective_label_nll': '([0-9.]+)'", capsys.readouterr().out)
    # at the prior Dirichlet(1, 1), E[log w_o] = psi(1) - psi(2) = -1; one step of training moves it down
    assert float(logged[0]) == pytest.approx(1.0, abs=1e-3) and float(logged[1]) < 1.0
    assert main(["train", *argv]) == 1  # no labels
    assert "--objective_label_weight needs --objective_column" in capsys.readouterr().err
    assert main(["train", *argv, *labels, "--head_type", "bt", "--num_objectives", "1"]) == 1
    assert "a bt head does not have" in capsys.readouterr().err


@pytest.mark.slow
def test_ratings_train_the_weights_from_the_cli(
    tmp_path, llama_backbone_dir, capsys, train_argv, write_pairs
):
    """`--rating_weight_coef` with `--attribute_names`: the ratings -> weights term is trained and logged (with
    graded score targets and the vrm-paper preset); asking for it without ratings, or with a head that has no
    objective weights, fails before the backbone is loaded."""
    rows = [
        {
            "prompt": f"{'how do I hurt' if i % 2 else 'how do I bake'} thing {i}?",
            "chosen": "safe answer" if i % 2 else "tasty answer",
            "rejected": "bad answer",
            "help_chosen": i % 3,
            "help_rejected": 1,
            "harm_chosen": 2 if i % 2 else None,
            "harm_rejected": 0 if i % 2 else None,
        }
        for i in range(12)
    ]
    data = write_pairs(str(tmp_path / "rated.jsonl"), rows)
    output = str(tmp_path / "run")
    ratings = ["--attribute_names", "help", "harm", "--attribute_target", "graded"]
    argv = train_argv(
        llama_backbone_dir,
        data,
        output,
        rating_weight_coef=1.0,
        max_steps=2,
        logging_steps=1,
        head_type="vrm-paper",
        num_objectives=16,
    )
    capsys.readouterr()

    def first_step(out: str, name: str) -> float:
        return float(re.findall(rf"'{name}': '([-0-9.e]+)'", out)[0])

    assert main(["train", *argv, *ratings]) == 0
    trained = capsys.readouterr().out
    logged = re.findall(r"'rating_weight_nll': '([0-9.]+)'", trained)
    assert len(logged) == 2 and all(0 < float(v) < 2 for v in logged)
    # the same run (same seed, same first batch) without the term and with sign targets: the first logged loss
    # differs by exactly the ratings -> weights term plus the change of the score term (its targets)
    off = [
        *train_argv(
            llama_backbone_dir,
            data,
            output,
            max_steps=1,
            logging_steps=1,
            head_type="vrm-paper",
            num_objectives=16,
        ),
        "--attribute_names",
        "help",
        "harm",
    ]
    assert main(["train", *off]) == 0
    untrained = capsys.readouterr().out
    term = first_step(trained, "rating_weight_nll")
    graded, sign = first_step(trained, "attribute_loss"), first_step(untrained, "attribute_loss")
    expected = first_step(untrained, "loss") - sign + graded + term
    assert first_step(trained, "loss") == pytest.approx(expected, abs=3e-3)
    assert first_step(untrained, "rating_weight_nll") == pytest.approx(
        term, rel=1e-3
    )  # measured, not trained
    assert graded != pytest.approx(sign, abs=1e-3)
    config = json.load(open(os.path.join(output, "config.json")))
    assert (config["head_type"], config["num_objectives"], config["feature_dim"]) == ("vrm-paper", 16, 4)
    assert main(["train", *argv]) == 1  # no ratings
    assert "--rating_weight_coef needs --attribute_names" in capsys.readouterr().err
    assert main(["train", *argv, *ratings, "--head_type", "bt", "--num_objectives", "1"]) == 1
    assert "a bt head does not have" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a choice of the parser: refused before anything loads
        main(["train", *argv, "--attribute_names", "help", "--attribute_target", "ordinal"])
    assert "invalid choice: 'ordinal'" in capsys.readouterr().err


@pytest.mark.slow
def test_train_is_strict_unless_skip_invalid_rows(
    tmp_path, llama_backbone_dir, capsys, train_argv, write_pairs
):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS] + [{"prompt": "q", "chosen": "a"}]
    data = write_pairs(str(tmp_path / "train.jsonl"), rows)
    argv = train_argv(llama_backbone_dir, data, str(tmp_path / "run"), max_steps=1)
    assert main(["train", *argv]) == 1  # strict by default
    assert "missing field 'rejected'" in capsys.readouterr().err
    assert main(["train", *argv, "--skip_invalid_rows"]) == 0
    assert f"skipped 1 invalid rows ({data}:7" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["shared_prompt", "separate"])
def test_vrm_train_records_the_layout_and_logs_tokens(tmp_path, llama_backbone_dir, pairs_file, layout):
    from vrm.cli.main import main

    out = tmp_path / "run"
    main(
        [
            "train",
            "--model_name_or_path",
            llama_backbone_dir,
            "--dataset_name",
            pairs_file,
            "--head_type",
            "vrm",
            "--pair_layout",
            layout,
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "3",
            "--logging_steps",
            "1",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--save_strategy",
            "no",
        ]
    )
    with open(out / "config.json", encoding="utf-8") as handle:
        assert json.load(handle)["tokenization"]["pair_layout"] == layout
    with open(out / "trainer_state.json", encoding="utf-8") as handle:
        logged = [entry for entry in json.load(handle)["log_history"] if "padding_share" in entry]
    assert logged and all(entry["tokens_processed"] >= entry["tokens_unique"] > 0 for entry in logged)


def test_usage_errors_of_vrm_train_exit_with_2(tmp_path, capsys):
    from vrm.cli.main import main as vrm_main

    with pytest.raises(SystemExit) as exited:
        vrm_main(["train", "--dataset_name", "x.jsonl"])
    assert exited.value.code == 2 and "required: --model_name_or_path" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: somewhere\nlr_scheduler_type: zzz\n")
    with pytest.raises(SystemExit) as exited:
        vrm_main(["train", "--config", str(config)])
    assert exited.value.code == 2 and "lr_scheduler_type 'zzz' is not one of" in capsys.readouterr().err
