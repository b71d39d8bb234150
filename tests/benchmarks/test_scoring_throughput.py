"""The scoring-throughput benchmark's bookkeeping (`benchmarks/scoring_throughput.py`): a checkpoint copy that
reads another max_length, and the backbone tokens each method runs (no timing here)."""

import json
import os

from tiny_models import PAIRS

from benchmarks.scoring_throughput import at_max_length, tokens_per_row
from vrm.scoring.loading import load_scorer


def test_a_copy_at_another_max_length_links_the_weights_and_scales_the_prompt_share(
    tmp_path, three_objective_model_dir
):
    same = at_max_length(three_objective_model_dir, _max_length(three_objective_model_dir), str(tmp_path))
    assert same == three_objective_model_dir
    copy = at_max_length(three_objective_model_dir, 48, str(tmp_path))
    with open(os.path.join(copy, "config.json")) as handle:
        tokenization = json.load(handle)["tokenization"]
    original = _tokenization(three_objective_model_dir)
    assert tokenization["max_length"] == 48
    share = original.get("max_prompt_length") or original["max_length"] // 2
    assert tokenization["max_prompt_length"] == share * 48 // original["max_length"]
    assert os.path.islink(os.path.join(copy, "model.safetensors"))
    assert load_scorer(copy, device="cpu").template.max_length == 48


def test_sorted_batches_run_fewer_padded_tokens_than_input_order_batches(three_objective_model_dir):
    pipeline = load_scorer(three_objective_model_dir, device="cpu", batch_size=4)
    # a long row in every batch of 32 (input order) makes the plain loop pad the short ones to it
    rows = [
        {"prompt": PAIRS[i % 6][0], "response": PAIRS[i % 6][1] * (12 if i % 8 == 0 else 1)}
        for i in range(64)
    ]
    tokens = tokens_per_row(pipeline, rows, pipeline.template.max_length, causal=True)
    assert tokens["unpadded"] <= tokens["vrm_score"] < tokens["plain_loop"]


def _tokenization(path):
    with open(os.path.join(path, "config.json")) as handle:
        return json.load(handle)["tokenization"]


def _max_length(path):
    return _tokenization(path)["max_length"]


def test_two_checkpoints_with_one_folder_name_get_their_own_copies(tmp_path, three_objective_model_dir):
    import shutil

    first, second = tmp_path / "a" / "final", tmp_path / "b" / "final"
    for target in (first, second):
        shutil.copytree(three_objective_model_dir, target)
    copies = [at_max_length(str(path), 48, str(tmp_path / "work")) for path in (first, second)]
    assert copies[0] != copies[1]
    assert os.path.realpath(os.path.join(copies[1], "model.safetensors")) == str(second / "model.safetensors")
