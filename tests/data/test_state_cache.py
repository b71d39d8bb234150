"""The frozen-backbone fast path: cached states, their keys, resumption, and training/eval on them."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.data.collate import PreferenceCollator, pad_sequences
from vrm.data.state_cache import CachedPairDataset, CachedStatesCollator, EmbeddingCache, compute_states
from vrm.data.tokenization import PreferenceTokenizer
from vrm.models.modeling import VRMForSequenceClassification
from vrm.scoring.scores import score_sequences


@pytest.mark.parametrize("setup", ["llama_chat", "bert_pair"])
def test_cached_states_are_the_states_the_model_computes(setup, tmp_path, tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model(setup)
    sequences, prompt_lengths = single_inputs(pref)
    ids, mask = pad_sequences(sequences, tokenizer.pad_token_id)
    with torch.no_grad():
        expected_prompt, expected_response = model.encode(ids, mask, prompt_lengths)
    cache = EmbeddingCache(str(tmp_path), chunk_size=5, batch_size=3, progress=False)
    prompt, response = cache.states(model, sequences, prompt_lengths.tolist(), tokenizer.pad_token_id)
    assert torch.allclose(prompt, expected_prompt, atol=1e-5)
    assert torch.allclose(response, expected_response, atol=1e-5)
    assert cache.computed == len(sequences)

    # scoring through the cache gives the rewards of scoring the token ids
    direct = score_sequences(model, sequences, prompt_lengths.tolist(), tokenizer.pad_token_id)
    cached = score_sequences(
        model, sequences, prompt_lengths.tolist(), tokenizer.pad_token_id, embedding_cache=cache
    )
    assert cache.computed == len(sequences)  # the second call read the cache
    for name in ("reward", "reward_std", "objective_weights"):
        assert torch.allclose(getattr(cached, name), getattr(direct, name), atol=1e-5), name


def test_encoder_prompt_pass_runs_once_per_distinct_prompt(tmp_path, tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model("bert_pair")
    sequences, prompt_lengths = single_inputs(pref)  # 6 pairs -> 12 sequences, 5 distinct prompts
    calls = []
    original = model.encode_prompts
    model.encode_prompts = lambda ids, mask: calls.append(ids.shape[0]) or original(ids, mask)
    compute_states(model, sequences, prompt_lengths.tolist(), tokenizer.pad_token_id, batch_size=64)
    assert calls == [5]


@pytest.mark.parametrize("setup", ["llama_chat", "bert_pair"])
def test_the_embedding_progress_bar_keeps_its_total(setup, tiny_model, single_inputs):
    """An encoder's prompt pass is counted in the total (not past it, which turns tqdm's bar into `17it`)."""
    from tqdm.auto import tqdm

    model, tokenizer, pref = tiny_model(setup)
    sequences, prompt_lengths = single_inputs(pref)
    with tqdm(total=len(sequences), disable=False, leave=False) as bar:
        compute_states(model, sequences, prompt_lengths.tolist(), tokenizer.pad_token_id, 4, bar)
        assert bar.n == bar.total and bar.total >= len(sequences)


def test_cache_resumes_and_never_reuses_stale_states(tmp_path, tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model("llama_chat")
    sequences, prompt_lengths = single_inputs(pref)
    lengths = prompt_lengths.tolist()
    cache = EmbeddingCache(str(tmp_path), chunk_size=4, batch_size=2, progress=False)
    first = cache.states(model, sequences, lengths, tokenizer.pad_token_id)
    entry = cache.entry(model, sequences, lengths)
    chunks = sorted(name for name in os.listdir(entry) if name.endswith(".safetensors"))
    assert chunks == ["chunk-00000.safetensors", "chunk-00001.safetensors", "chunk-00002.safetensors"]
    with open(os.path.join(entry, "meta.json")) as handle:
        assert json.load(handle)["sequences"] == len(sequences)

    # a run interrupted after two chunks: only the missing chunk is computed again
    os.remove(os.path.join(entry, chunks[2]))
    cache.computed = 0
    again = cache.states(model, sequences, lengths, tokenizer.pad_token_id)
    assert cache.computed == len(sequences) - 8
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])

    # other data, another template / max length, or other backbone weights -> another entry
    other_lengths = [n - 1 for n in lengths]
    assert cache.entry(model, sequences, other_lengths) != entry
    assert cache.entry(model, sequences[:-1], lengths[:-1]) != entry
    shorter = PreferenceTokenizer(tokenizer, max_length=12, is_causal=True)
    short = [shorter.tokenize_single("How do I fix a slow query? " * 3, "Add an index and measure again.")]
    assert cache.entry(model, [short[0][0]], [short[0][1]]) != cache.entry(
        model,
        [pref.tokenize_single("How do I fix a slow query? " * 3, "Add an index and measure again.")[0]],
        [1],
    )
    with torch.no_grad():
        model.backbone.norm.weight.add_(0.01)  # a "fine-tuned" backbone (its last parameter)
    assert cache.entry(model, sequences, lengths) != entry


def test_cache_path_that_is_a_file_is_an_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        EmbeddingCache(str(path))


def test_cached_pair_batches_match_pair_forward(tmp_path, tiny_model):
    model, tokenizer, pref = tiny_model("bert_pair", head_type="moe")

    from vrm.data.examples import PreferenceExample

    examples = [PreferenceExample(prompt=p, chosen=c, rejected=r, margin=0.5) for p, c, r in PAIRS]
    pairs, _ = pref.tokenize_pairs(examples)
    dataset = CachedPairDataset.build(model, pairs, EmbeddingCache(str(tmp_path), progress=False), 0)
    batch = CachedStatesCollator()([dataset[i] for i in range(len(dataset))])
    assert torch.allclose(batch["margin"], torch.full((len(pairs),), 0.5))
    token_batch = PreferenceCollator(tokenizer.pad_token_id)(pairs)
    token_batch.pop("margin")
    with torch.no_grad():
        from_states = model(**{k: v for k, v in batch.items() if k != "margin"})
        from_tokens = model(**token_batch)
    assert torch.allclose(from_states.reward_chosen, from_tokens.reward_chosen, atol=1e-5)
    assert torch.allclose(from_states.reward_rejected, from_tokens.reward_rejected, atol=1e-5)


def _head_state(path: str) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in load_file(os.path.join(path, "model.safetensors")).items() if k.startswith("head.")
    }


@pytest.mark.slow
def test_frozen_training_on_the_cache_equals_training_on_the_fly(
    tmp_path, llama_backbone_dir, capsys, train_argv, write_pairs
):
    data = write_pairs(str(tmp_path / "pairs.jsonl"))
    cache_dir = str(tmp_path / "cache")
    common = {"head_type": "moe", "freeze_backbone": "true", "max_steps": 6, "learning_rate": 1e-2}
    cached_run, fly_run = str(tmp_path / "cached"), str(tmp_path / "fly")
    argv = train_argv(llama_backbone_dir, data, cached_run, embedding_cache=cache_dir, **common)
    assert main(["train", *argv, "--eval_dataset_name", data]) == 0
    printed = capsys.readouterr().out
    assert "train: embedding 12 of 12 sequences" in printed and "eval_accuracy" in printed
    assert main(["train", *train_argv(llama_backbone_dir, data, fly_run, **common)]) == 0

    cached_head, fly_head = _head_state(cached_run), _head_state(fly_run)
    initial = VRMForSequenceClassification.from_backbone(
        llama_backbone_dir, head_type="moe", num_objectives=2, feature_dim=4
    )
    assert any(not torch.allclose(cached_head[k], initial.state_dict()[k]) for k in cached_head)  # it trained
    for name, value in cached_head.items():
        assert torch.allclose(value, fly_head[name], atol=1e-4), name
    # the backbone did not move
    backbone = load_file(os.path.join(cached_run, "model.safetensors"))
    for name, value in initial.backbone.state_dict().items():
        assert torch.equal(backbone[f"backbone.{name}"], value), name

    # a second run with the same data reads the cache instead of embedding again
    assert (
        main(
            [
                "train",
                *train_argv(
                    llama_backbone_dir, data, str(tmp_path / "again"), embedding_cache=cache_dir, **common
                ),
            ]
        )
        == 0
    )
    assert "embedding" not in capsys.readouterr().out

    # evaluation through the cache reports what evaluation on token ids reports
    reports = []
    for extra in ([], ["--embedding_cache", cache_dir]):
        out = str(tmp_path / f"report{len(reports)}.json")
        assert (
            main(["eval", "--model", cached_run, "--dataset", data, "--output", out, "--no_progress", *extra])
            == 0
        )
        with open(out) as handle:
            reports.append(json.load(handle)["datasets"][data]["overall"])
    for key in ("accuracy", "mean_margin", "nll"):
        assert reports[0][key] == pytest.approx(reports[1][key], abs=1e-5), key


def test_cache_flag_errors(tmp_path, llama_backbone_dir, capsys, train_argv, write_pairs):
    data = write_pairs(str(tmp_path / "pairs.jsonl"))
    argv = train_argv(llama_backbone_dir, data, str(tmp_path / "run"), embedding_cache=str(tmp_path / "c"))
    assert main(["train", *argv]) == 1
    assert "pass --freeze_backbone too" in capsys.readouterr().err
    argv = train_argv(
        llama_backbone_dir, data, str(tmp_path / "run"), freeze_backbone="true", use_peft="true"
    )
    assert main(["train", *argv]) == 1
    assert "exclude each other" in capsys.readouterr().err
