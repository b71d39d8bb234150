"""Fixtures of the evaluation tests: a saved tiny vrm model and validation files built against its margins."""

from __future__ import annotations

import pytest
from tiny_models import PAIRS

from vrm.scoring.pipeline import RewardPipeline


@pytest.fixture
def saved_vrm_model(tmp_path, tiny_model):
    """A saved, untrained `tiny_model("llama_chat")` (its config.json is what `vrm calibrate` updates)."""
    model, tokenizer, _ = tiny_model("llama_chat")
    directory = str(tmp_path / "saved_vrm_model")
    RewardPipeline(model, tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture
def oriented_validation(write_pairs):
    """`oriented_validation(model_dir, path, right, wrong) -> path`: every PAIR `right` times in the order the
    model at `model_dir` ranks right (its margin > 0) and `wrong` times reversed, as a preference file. With
    right:wrong = 7:3 the model is over-timid (its margins are ~0.1) and the temperature to fit is inside the
    search interval; with wrong = 0 every pair is ranked right (T runs to the lower bound)."""

    def build(model_dir: str, path: str, right: int, wrong: int) -> str:
        scorer = RewardPipeline.from_pretrained(model_dir)
        prompts = [p for p, _, _ in PAIRS]
        margins = (
            scorer.score(prompts, [c for _, c, _ in PAIRS]).reward
            - scorer.score(prompts, [r for _, _, r in PAIRS]).reward
        )
        rows = []
        for (prompt, first, second), margin in zip(PAIRS, margins.tolist(), strict=True):
            good, bad = (first, second) if margin > 0 else (second, first)
            rows += [{"prompt": prompt, "chosen": good, "rejected": bad}] * right
            rows += [{"prompt": prompt, "chosen": bad, "rejected": good}] * wrong
        return write_pairs(path, rows)

    return build
