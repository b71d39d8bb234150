"""Benchmark conventions (`vrm.evaluation.benchmark_rules`): detecting RM-Bench, RewardBench and RewardBench 2
files, and scoring them by their rules."""

import json

import numpy as np
import pytest
from tiny_models import llama_config, make_llama_tokenizer

from vrm.evaluation.benchmark_rules import detect_format, rewardbench_sections, rm_bench_scores
from vrm.evaluation.pairwise import evaluate_rm_bench
from vrm.evaluation.table import format_report
from vrm.scoring.pipeline import RewardPipeline


def test_detect_format_tells_the_benchmark_conventions_apart():
    assert (
        detect_format([{"prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"]}]) == "rm-bench"
    )
    assert detect_format(
        [{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "xstest-should-refuse"}]
    ) == ("rewardbench")
    assert detect_format([{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "mine"}]) == "pairwise"
    conversational = [{"role": "assistant", "content": "a"}]
    assert detect_format([{"chosen": conversational, "rejected": conversational}]) == "pairwise"
    bad = [
        {"chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"]},
        {"chosen": ["a", "b", "c"], "rejected": "x"},
    ]
    with pytest.raises(ValueError, match="row 1: RM-Bench rows need 'rejected'"):
        detect_format(bad)


def test_rm_bench_scores_by_hand():
    outcome = np.array(
        [
            [[1, 0, 0], [1, 1, 0], [1, 1, 1]],  # lower triangle + diagonal right, upper wrong
            [[1, 1, 1], [0, 0, 1], [0, 0, 0]],
        ]
    )
    scores = rm_bench_scores(outcome)
    assert scores["hard"] == pytest.approx((0 + 3) / 6)  # i < j entries: (0,1), (0,2), (1,2)
    assert scores["normal"] == pytest.approx((3 + 1) / 6)
    assert scores["easy"] == pytest.approx((3 + 0) / 6)
    assert scores["average"] == pytest.approx((0.5 + 4 / 6 + 0.5) / 3)


def test_rewardbench_sections_weighting():
    accuracy = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.5, "math-prm": 0.2, "hep-cpp": 1.0, "hep-go": 0.6}
    counts = {"alpacaeval-easy": 100, "mt-bench-easy": 28, "math-prm": 447, "hep-cpp": 164, "hep-go": 164}
    out = rewardbench_sections(accuracy, counts)
    assert out["sections"]["Chat"] == pytest.approx((100 * 1.0 + 28 * 0.5) / 128)
    assert out["sections"]["Reasoning"] == pytest.approx((0.2 + 0.8) / 2)  # math-prm weighs as much as code
    assert set(out["sections"]) == {"Chat", "Reasoning"}
    assert out["score"] == pytest.approx((out["sections"]["Chat"] + 0.5) / 2)


def test_rm_bench_evaluation_end_to_end(tmp_path, tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    pipeline = RewardPipeline(model, tokenizer)
    rows = [
        {
            "prompt": "How do I fix a slow query?",
            "chosen": ["Add an index.", "Add an index, then measure.", "**Add an index**, then measure."],
            "rejected": ["No.", "No, do nothing.", "**No**, do nothing."],
            "subset": subset,
        }
        for subset in ("chat", "code", "chat")
    ]
    entry = evaluate_rm_bench(pipeline, rows, progress=False)
    rewards = pipeline.score([rows[0]["prompt"]] * 6, rows[0]["chosen"] + rows[0]["rejected"]).reward
    expected = (rewards[:3, None] > rewards[None, 3:]).float()
    assert entry["overall"]["normal"] == pytest.approx(float(expected.diagonal().mean()))
    assert entry["overall"]["prompts"] == 3 and set(entry["subsets"]) == {"chat", "code"}
    report = {"model": "m", "head_type": "vrm", "num_objectives": 4, "datasets": {"rm.jsonl": entry}}
    assert "RM-Bench (3 prompts): easy" in format_report(report)
    json.dumps(entry)  # the entry is JSON-ready


def test_eval_scores_a_plain_sequence_classifier_and_refuses_nan(tmp_path, pairs_file, tiny_model):
    import torch
    from transformers import LlamaForSequenceClassification, PreTrainedModel

    from vrm.cli.main import main

    tokenizer = make_llama_tokenizer()
    config = llama_config(len(tokenizer))
    config.num_labels = 1
    torch.manual_seed(0)
    plain_dir = str(tmp_path / "plain")
    LlamaForSequenceClassification(config).save_pretrained(plain_dir)
    tokenizer.save_pretrained(plain_dir)
    report_path = str(tmp_path / "r.json")
    assert (
        main(
            ["eval", "--model", plain_dir, "--dataset", pairs_file, "--output", report_path, "--no_progress"]
        )
        == 0
    )
    with open(report_path) as handle:
        report = json.load(handle)
    assert report["head_type"] == "llama sequence classifier"
    overall = report["datasets"][pairs_file]["overall"]
    assert overall["pairs"] == 6 and "selective_accuracy" not in overall  # no uncertainty to judge

    model, tok, _ = tiny_model("llama_chat")
    with torch.no_grad():
        model.head.decoder.weight.fill_(float("nan"))
    nan_dir = str(tmp_path / "nan")
    PreTrainedModel.save_pretrained(model, nan_dir)  # past vrm's refusal to save NaN weights: a corrupt file
    tok.save_pretrained(nan_dir)
    assert main(["eval", "--model", nan_dir, "--dataset", pairs_file, "--no_progress"]) == 1


def test_rewardbench2_ties_margin_terms_skip_single_answer_and_zero_spread_prompts():
    from vrm.evaluation.benchmark_rules import rewardbench2_ties_score

    ties = rewardbench2_ties_score(
        [
            # prompt 1: ref gap 4, right; tied spread 1, gap 2, right -> preferred, hard (min(4, 2) = 2 > 1)
            ("ref:1", [5.0], [1.0]),
            ("tied:1", [4.0, 3.0], [1.0]),
            # prompt 2: ref gap -1, wrong; tied spread 0, gap 1, right -> preferred (1 > 0), not hard (-1 > 0)
            ("ref:2", [2.0], [3.0]),
            ("tied:2", [2.0, 2.0], [1.0]),
            # prompt 3: ref right; tied has one answer (no spread): counts for accuracy only
            ("ref:3", [1.0], [0.0]),
            ("tied:3", [1.0], [2.0]),
        ]
    )
    # process_single_model by hand: accuracies over all prompts; preferred / hard over prompts 1 and 2 (a
    # spread); the tanh margin over prompt 1 only (spread 0 would divide by zero)
    assert ties["ref_accuracy"] == pytest.approx(2 / 3)
    assert ties["tied_accuracy"] == pytest.approx(2 / 3)
    assert ties["correctness_preferred"] == pytest.approx(1.0)
    assert ties["correctness_preferred_hard"] == pytest.approx(0.5)
    assert ties["correctness_margin_score"] == pytest.approx(np.tanh(2 / 1 - 1))
    expected = 0.3 * 2 / 3 + 0.3 * 2 / 3 + 0.2 * 1.0 + 0.2 * 0.5 + 0.01 * np.tanh(1.0)
    assert ties["score"] == pytest.approx(expected)
    assert np.isfinite(ties["score"])
