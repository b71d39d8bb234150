"""The training output is a Hub-style model directory: a model card, results and the trainer state."""

import json
import os

import pytest


@pytest.mark.slow
def test_training_output_is_a_complete_model_directory(trained_model_dir, llama_backbone_dir):
    output, _ = trained_model_dir
    with open(os.path.join(output, "README.md"), encoding="utf-8") as handle:
        card = handle.read()
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert (
        llama_backbone_dir not in card
    )  # a local path does not travel with the model: its directory name does
    assert "4 optimizer steps" in card and "total_flos" not in card and "2 objectives" in card
    for expected in (
        os.path.basename(llama_backbone_dir),  # base model
        "head `vrm`",
        "`helpful`, `safe`",  # objective names
        "train pairs | 6",  # data summary: pair and truncation counts
        "train prompt truncated",
        "eval_accuracy",  # final metrics
        "train_loss",
        "## Intended use",
        "trust_remote_code=True",
        "AutoModelForSequenceClassification.from_pretrained",
        "RewardPipeline.from_pretrained",
    ):
        assert expected in card, expected
    with open(os.path.join(output, "train_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    assert "train_loss" in results and "eval_accuracy" in results
    with open(os.path.join(output, "trainer_state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    assert state["global_step"] == 4 and any("loss" in entry for entry in state["log_history"])
    assert not [name for name in os.listdir(output) if name.startswith("checkpoint-")]  # --save_strategy no
