"""`RewardPipeline`: inputs, templated texts, normalization, the conservative reward, and texts with nothing
to score."""

import pytest
import torch
from tiny_models import PAIRS

from vrm.scoring.pipeline import RewardPipeline


@pytest.fixture
def pipeline(tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
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


def test_conservative_reward_is_reward_minus_lambda_std(pipeline):
    pipeline.conservative_lambda = 2.0
    result = pipeline("How do I fix a slow query?", "Add an index.")
    assert result["conservative_reward"] == pytest.approx(result["reward"] - 2.0 * result["reward_std"])


def test_from_pretrained_names_a_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved vrm model directory"):
        RewardPipeline.from_pretrained(str(tmp_path / "missing"))


def test_fit_normalization_refuses_degenerate_rewards(pipeline):
    prompt, response = PAIRS[0][0], PAIRS[0][1]
    with pytest.raises(ValueError, match=r"reference rewards are \(nearly\) all equal"):
        pipeline.fit_normalization([prompt] * 4, [response] * 4)
    assert pipeline.model.config.reward_scale == 1.0  # unchanged
    mean, std = pipeline.fit_normalization([p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS])
    assert std > 1e-6 and pipeline.model.config.reward_scale == std


@pytest.mark.parametrize("setup", ["llama_chat", "bert_pair"])
def test_score_texts_refuses_padding_only_texts_and_texts_without_a_response(setup, tiny_model):
    """Texts of padding only, or without a response after the prompt, are refused by index (not an IndexError
    from an empty row, not a silently scored prompt)."""
    model, tokenizer, _ = tiny_model(setup)
    pipeline = RewardPipeline(model, tokenizer)
    pad = tokenizer.pad_token
    with pytest.raises(ValueError, match=r"^text 0 has no tokens other than padding"):
        pipeline.score_texts([pad * 3])
    with pytest.raises(ValueError, match=r"^text 1 has no tokens other than padding"):
        pipeline.score_texts(["some text", pad * 2], ["some", pad])
    with pytest.raises(ValueError, match=r"^text 0 has no tokens other than padding"):
        pipeline.score_texts([""])
    with pytest.raises(ValueError, match=r"^text 0 has no response"):
        pipeline.score_texts(["a question"], ["a question"])
    with pytest.raises(ValueError, match=r"^prompt 0 has no tokens"):
        pipeline.score_texts(["a question"], [""])
    prompt = [{"role": "user", "content": "q"}]
    if tokenizer.chat_template:
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        with pytest.raises(ValueError, match=r"^text 0 has no response"):
            pipeline.score_texts([prompt_text], [prompt_text])
    assert torch.isfinite(pipeline.score_texts(["a question and an answer"], ["a question"]).reward).all()


@pytest.mark.slow
def test_objective_weights_are_also_keyed_by_name(trained_model_dir):
    output, _ = trained_model_dir
    pipeline = RewardPipeline.from_pretrained(output, device="cpu", dtype="float32")
    assert pipeline.model.config.objective_names == ["helpful", "safe"]
    result = pipeline("How do I sort a list?", "Use sorted(xs).")
    assert len(result["objective_weights"]) == 2  # the list stays
    assert list(result["objective_weights_by_name"]) == ["helpful", "safe"]
    assert result["objective_weights_by_name"]["safe"] == result["objective_weights"][1]
    assert list(result["objective_scores_by_name"]) == ["helpful", "safe"]


@pytest.mark.parametrize(
    ("setup", "head_type"), [("bert_pair", "vrm"), ("bert_pair", "bt"), ("llama_chat", "vrm")]
)
def test_batched_scores_equal_each_sequence_scored_alone(tiny_model, setup, head_type):
    """Token-budget batches and an encoder's prompt pass run apart (once per distinct prompt) give the scores of
    each sequence's own forward, in input order."""
    from vrm.scoring.scores import score_sequences

    model, tokenizer, pref = tiny_model(setup, head_type=head_type)
    pairs = [(p, r) for p, chosen, rejected in PAIRS for r in (chosen, rejected, chosen + " " + rejected)]
    encoded = [pref.tokenize_single(p, r) for p, r in pairs]
    sequences, lengths = [ids for ids, _ in encoded], [n for _, n in encoded]
    batched = score_sequences(model, sequences, lengths, tokenizer.pad_token_id, batch_size=4)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([ids]), prompt_lengths=torch.tensor([n])) for ids, n in encoded]
    assert batched.reward.tolist() == pytest.approx([float(o.logits[0, 0]) for o in alone], abs=1e-5)
    weights = torch.cat([o.objective_weights for o in alone])
    assert torch.allclose(batched.objective_weights, weights, atol=1e-5)


def test_token_budget_batches_cover_every_sequence_once_within_the_budget():
    from vrm.scoring.scores import token_budget_batches

    sequences = [[1] * n for n in (3, 40, 5, 7, 40, 2, 9, 11, 1, 30)]
    batches = list(token_budget_batches(sequences, batch_size=2, pad_token_id=0))
    seen = sorted(i for index, _, _ in batches for i in index)
    assert seen == list(range(len(sequences)))
    for index, ids, mask in batches:
        assert ids.numel() <= 2 * 40 or len(index) == 1  # rows × longest of the batch ≤ batch_size × longest
        assert mask.sum(1).tolist() == [len(sequences[i]) for i in index]
    assert max(len(index) for index, _, _ in batches) > 2  # short sequences share larger batches


def test_token_budget_batches_cut_where_padding_would_dominate_a_batch():
    from vrm.scoring.scores import MAX_PADDING_SHARE, MIN_BATCH_SHARE, token_budget_batches

    # 32 rows from 150 to 1,024 tokens: one budget of 32 x 1,024 would take them all, padded to 1,024
    lengths = [150 + (1024 - 150) * k // 31 for k in range(32)]
    sequences = [[1] * n for n in lengths[::-1]]
    batches = list(token_budget_batches(sequences, batch_size=32, pad_token_id=0))
    assert sorted(i for index, _, _ in batches for i in index) == list(range(32))
    budget = 32 * 1024
    for index, ids, mask in batches:
        padding = 1 - mask.sum().item() / ids.numel()
        before_last = (len(index) - 1) * int(mask[:-1].sum(1).max()) if len(index) > 1 else 0
        assert padding <= MAX_PADDING_SHARE or before_last * MIN_BATCH_SHARE < budget
    padded = sum(ids.numel() for _, ids, _ in batches)
    assert padded < 0.8 * 32 * 1024 and padded >= sum(lengths)  # far below one batch padded to the longest
    # equal lengths still fill the budget: one batch of 32
    same = list(token_budget_batches([[1] * 512] * 32, batch_size=32, pad_token_id=0))
    assert [len(index) for index, _, _ in same] == [32]
