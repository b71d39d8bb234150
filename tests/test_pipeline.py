import pytest
import torch
from conftest import PAIRS
from test_modeling import build

from vrm.scoring.pipeline import RewardPipeline


@pytest.fixture
def pipeline():
    model, tokenizer, _ = build("llama_chat")
    return RewardPipeline(model, tokenizer, batch_size=4)


def test_single_list_and_conversation_inputs_agree(pipeline):
    prompts, responses = [p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS]
    batch = pipeline(prompts, responses)
    single = pipeline(prompts[1], responses[1])
    conversation = pipeline(
        [{"role": "user", "content": prompts[1]}, {"role": "assistant", "content": responses[1]}]
    )
    assert len(batch) == len(PAIRS) and isinstance(single, dict)
    assert single["reward"] == pytest.approx(batch[1]["reward"], abs=1e-5)
    assert conversation["reward"] == pytest.approx(batch[1]["reward"], abs=1e-5)
    assert len(single["objective_weights"]) == pipeline.model.config.num_objectives
    assert single["reward_std"] > 0 and "conservative_reward" not in single
    # matches the model called directly on the training-time template
    ids, prompt_length = pipeline.template.tokenize_single(prompts[1], responses[1])
    with torch.no_grad():
        direct = pipeline.model(input_ids=torch.tensor([ids]), prompt_lengths=torch.tensor([prompt_length]))
    assert single["reward"] == pytest.approx(float(direct.logits[0, 0]), abs=1e-5)
    with pytest.raises(ValueError, match="end with an assistant message"):
        pipeline([[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        pipeline(["a", "b"], ["c"])


def test_templated_texts_score_like_pairs(pipeline):
    tokenizer = pipeline.tokenizer
    prompts, responses = [p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    prompt_texts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages
    ]
    texts = [
        tokenizer.apply_chat_template(m + [{"role": "assistant", "content": r}], tokenize=False)
        for m, r in zip(messages, responses, strict=True)
    ]
    expected = pipeline.score(prompts, responses).reward
    assert torch.allclose(pipeline.score_texts(texts, prompt_texts).reward, expected, atol=1e-5)
    assert torch.allclose(pipeline.score_texts(texts).reward, expected, atol=1e-5)  # boundary from the marker
    with pytest.raises(ValueError, match="cannot find where the response starts"):
        pipeline.score_texts(["plain text with no template"])


def test_normalization_is_fitted_stored_and_reversible(pipeline, tmp_path):
    prompts = [p for p, _, _ in PAIRS] * 2
    responses = [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS]
    raw = pipeline.score(prompts, responses).reward
    mean, std = pipeline.fit_normalization(prompts, responses)
    assert mean == pytest.approx(float(raw.mean()), abs=1e-5) and std == pytest.approx(
        float(raw.std()), abs=1e-5
    )
    normalized = pipeline.score(prompts, responses).reward
    assert float(normalized.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(normalized.std()) == pytest.approx(1.0, abs=1e-4)
    pipeline.save_pretrained(str(tmp_path))
    reloaded = RewardPipeline.from_pretrained(str(tmp_path))
    assert torch.allclose(reloaded.score(prompts, responses).reward, normalized, atol=1e-5)
    raw_again = (
        RewardPipeline.from_pretrained(str(tmp_path), normalize=False).score(prompts, responses).reward
    )
    assert torch.allclose(raw_again, raw, atol=1e-5)


def test_conservative_reward(pipeline):
    pipeline.conservative_lambda = 2.0
    result = pipeline("How do I fix a slow query?", "Add an index.")
    assert result["conservative_reward"] == pytest.approx(result["reward"] - 2.0 * result["reward_std"])


def test_from_pretrained_names_a_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved vrm model directory"):
        RewardPipeline.from_pretrained(str(tmp_path / "missing"))
