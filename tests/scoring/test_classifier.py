"""Scoring reward models that are not vrm's: `SequenceClassifierPipeline`."""

import pytest
import torch
from tiny_models import PAIRS

import vrm.scoring.classifier
from vrm.scoring.classifier import SequenceClassifierPipeline
from vrm.scoring.loading import load_scorer


def test_a_llama_classifier_without_pad_token_id_scores_in_batches(tmp_path, save_classifier):
    path = save_classifier(tmp_path, "llama", pad_token_id=None)
    scorer = load_scorer(path, batch_size=4)
    assert isinstance(scorer, SequenceClassifierPipeline)
    assert scorer.model.config.pad_token_id == scorer.tokenizer.pad_token_id
    prompts, responses = [p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS]
    batched = scorer.score(prompts, responses).reward
    one_by_one = torch.cat([scorer.score([p], [r]).reward for p, r in zip(prompts, responses, strict=True)])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    # the chat template's text, tokenized once (the template brings its own special tokens)
    messages = [{"role": "user", "content": prompts[0]}, {"role": "assistant", "content": responses[0]}]
    text = scorer.tokenizer.apply_chat_template(messages, tokenize=False)
    assert scorer.input_format == "chat"
    assert (
        scorer.encode(prompts[0], responses[0])["input_ids"]
        == scorer.tokenizer(text, add_special_tokens=False).input_ids
    )


def test_a_bert_classifier_gets_text_pairs_within_its_positions(tmp_path, save_classifier):
    path = save_classifier(tmp_path, "bert", max_position_embeddings=32)
    scorer = load_scorer(path, batch_size=4)  # max_length 1024 asked, 32 positions
    assert scorer.input_format == "pair" and scorer.max_length == 32
    tokenizer = scorer.tokenizer
    truncation_side = tokenizer.truncation_side
    prompt = " ".join(["What is the capital of France?"] * 20)
    response = "The capital of France is Paris."
    encoded = scorer.encode(prompt, response)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    response_ids = tokenizer(response, add_special_tokens=False).input_ids
    assert len(encoded) == 32 and encoded[0] == cls and encoded.count(sep) == 2
    assert encoded[-len(response_ids) - 1 :] == response_ids + [sep]  # the response is kept whole
    prompt_end = tokenizer("France?", add_special_tokens=False).input_ids
    assert (
        encoded[encoded.index(sep) - len(prompt_end) : encoded.index(sep)] == prompt_end
    )  # cut from the left
    short = scorer.encode("Tell me a joke.", "No.")["input_ids"]
    assert short == tokenizer("Tell me a joke.", "No.").input_ids  # tokenizer(prompt, response)
    rewards = scorer.score([prompt, "Tell me a joke."], [response, "No."]).reward
    assert torch.isfinite(rewards).all()
    assert tokenizer.truncation_side == truncation_side  # the shared tokenizer is left alone


def test_trust_remote_code_reaches_the_loaders(tmp_path, monkeypatch, save_classifier):
    path = save_classifier(tmp_path, "bert")
    seen = {}
    real = vrm.scoring.classifier.load_checked

    def spy(model_class, model_path, **kwargs):
        seen.update(kwargs)
        return real(model_class, model_path, **kwargs)

    monkeypatch.setattr(vrm.scoring.classifier, "load_checked", spy)
    load_scorer(path, trust_remote_code=True)
    assert seen.get("trust_remote_code") is True
    with pytest.raises(ValueError, match="input_format"):
        SequenceClassifierPipeline.from_pretrained(path, input_format="jinja")
