"""`--max_length` of `vrm eval`, `vrm score` and `vrm calibrate`: above the backbone's position limit it is cut to
that limit with one printed line (not an "index out of bounds" crash on the first long input); zero or
negative is a usage error naming the flag."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from tiny_models import PAIRS
from transformers import BertConfig, RobertaConfig

from vrm.cli.main import main
from vrm.models.modeling import VRMForSequenceClassification
from vrm.scoring.pipeline import RewardPipeline, position_limit

LONG_PROMPT = " ".join(["How do I fix a slow query? Add an index and measure again."] * 60)  # > 600 tokens
LIMIT_LINE = "[vrm] max_length {} is more than the backbone's 256 positions: inputs are cut to 256 tokens"


@pytest.fixture
def bert_model_dir(tmp_path, tiny_model):
    """A saved tiny BERT-like vrm model: 256 positions (absolute position embeddings)."""
    model, tokenizer, _ = tiny_model("bert_pair")
    assert model.config.text_config.max_position_embeddings == 256
    directory = str(tmp_path / "bert_model")
    RewardPipeline(model, tokenizer).save_pretrained(directory)
    return directory


def long_pairs(tmp_path, model_dir, write_pairs, repeats=1, right=1, wrong=0):
    """Pairs with a prompt longer than the backbone reads, `right` times in the order the model ranks right and
    `wrong` times reversed."""
    scorer = RewardPipeline.from_pretrained(model_dir, max_length=256)
    prompts = [LONG_PROMPT + " " + p for p, _, _ in PAIRS]
    margins = (
        scorer.score(prompts, [c for _, c, _ in PAIRS]).reward
        - scorer.score(prompts, [r for _, _, r in PAIRS]).reward
    ).tolist()
    rows = []
    for prompt, (_, first, second), margin in zip(prompts, PAIRS, margins, strict=True):
        good, bad = (first, second) if margin > 0 else (second, first)
        rows += [{"prompt": prompt, "chosen": good, "rejected": bad}] * right
        rows += [{"prompt": prompt, "chosen": bad, "rejected": good}] * wrong
    return write_pairs(str(tmp_path / "long.jsonl"), rows * repeats)


def test_eval_cuts_max_length_to_the_backbone_positions(tmp_path, bert_model_dir, write_pairs, capsys):
    data = long_pairs(tmp_path, bert_model_dir, write_pairs)
    output = str(tmp_path / "report.json")
    argv = ["eval", "--model", bert_model_dir, "--dataset", data, "--no_progress", "--output", output]
    assert main([*argv, "--max_length", "1024"]) == 0
    out = capsys.readouterr().out
    assert out.count(LIMIT_LINE.format(1024)) == 1
    with open(output, encoding="utf-8") as handle:
        entry = json.load(handle)["datasets"][data]
    assert entry["overall"]["pairs"] == len(PAIRS) and entry["tokenization"]["prompt_truncated"] == len(PAIRS)


def test_score_cuts_max_length_to_the_backbone_positions(tmp_path, bert_model_dir, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": LONG_PROMPT, "response": c}) + "\n" for _, c, _ in PAIRS))
    output = str(tmp_path / "scores.jsonl")
    argv = ["score", "--model", bert_model_dir, "--input", str(data), "--output", output, "--no_progress"]
    assert main([*argv, "--max_length", "1000000000000"]) == 0
    assert LIMIT_LINE.format(1000000000000) in capsys.readouterr().out
    with open(output, encoding="utf-8") as handle:
        assert len(handle.readlines()) == len(PAIRS)
    with open(output + ".manifest.json", encoding="utf-8") as handle:
        assert json.load(handle)["settings"]["max_length"] == 256  # what the rows were scored with
    # a resumed run with the same flag matches the manifest (nothing to score again)
    assert main([*argv, "--max_length", "1000000000000"]) == 0
    assert "0 scored, 6 already in" in capsys.readouterr().out


@pytest.mark.slow
def test_calibrate_cuts_max_length_to_the_backbone_positions(tmp_path, bert_model_dir, write_pairs, capsys):
    data = long_pairs(tmp_path, bert_model_dir, write_pairs, repeats=1, right=14, wrong=6)
    argv = ["calibrate", "--model", bert_model_dir, "--dataset", data, "--no_progress", "--dry_run"]
    assert main([*argv, "--max_length", "1024"]) == 0
    out = capsys.readouterr().out
    assert LIMIT_LINE.format(1024) in out and "120 pairs" in out and "predictive NLL" in out


@pytest.mark.parametrize("command", ["eval", "score", "calibrate"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_max_length_below_one_is_a_usage_error(tmp_path, command, value, capsys):
    missing = str(tmp_path / "no-model")
    argv = {
        "eval": ["eval", "--model", missing, "--dataset", "x.jsonl"],
        "score": ["score", "--model", missing, "--input", "x.jsonl", "--output", str(tmp_path / "o.jsonl")],
        "calibrate": ["calibrate", "--model", missing, "--dataset", "x.jsonl"],
    }[command]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--max_length", value])
    assert exited.value.code == 2
    assert f"--max_length must be >= 1 (tokens), got {value}" in capsys.readouterr().err


def test_the_position_limit_is_the_learned_position_table_less_robertas_padding_offset():
    from transformers import LlamaConfig

    def model(text_config):
        return VRMForSequenceClassification.from_backbone_config(text_config, head_type="bt")

    small = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    small["intermediate_size"] = 32
    assert position_limit(model(BertConfig(max_position_embeddings=512, **small))) == 512
    assert position_limit(model(RobertaConfig(max_position_embeddings=514, pad_token_id=1, **small))) == 512
    # rotary positions are computed, not looked up: nothing indexes past a table
    assert position_limit(model(LlamaConfig(max_position_embeddings=64, **small))) is None
    ensemble = SimpleNamespace(
        members=[
            model(BertConfig(max_position_embeddings=512, **small)),
            model(BertConfig(max_position_embeddings=128, **small)),
        ]
    )
    assert position_limit(ensemble) == 128
    with pytest.raises(ValueError, match="max_length must be a number of tokens >= 1"):
        RewardPipeline(None, None, max_length=-1)
