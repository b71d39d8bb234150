"""`VRMTrainer`: optimizer groups, sampling, dropout, bootstrap weights, and runs stopped by non-finite values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_models import PAIRS, llama_config, make_bert_tokenizer, make_llama_tokenizer

from vrm.cli.main import main
from vrm.data.examples import PreferenceExample
from vrm.data.tokenization import PreferenceTokenizer
from vrm.models.modeling import VRMForSequenceClassification
from vrm.training.arguments import VRMTrainingArguments
from vrm.training.trainer import PairDataset, VRMTrainer


def test_head_gets_its_own_learning_rate(tmp_path):
    tokenizer = make_llama_tokenizer()
    model = VRMForSequenceClassification.from_backbone_config(llama_config(len(tokenizer)))
    pairs, _ = PreferenceTokenizer(tokenizer, max_length=64).tokenize_pairs(
        [PreferenceExample(p, c, r) for p, c, r in PAIRS]
    )
    args = VRMTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, report_to="none")
    trainer = VRMTrainer(model=model, args=args, train_dataset=PairDataset(pairs), processing_class=tokenizer)
    optimizer = trainer.create_optimizer()
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & head:
            assert ids <= head and group["lr"] == pytest.approx(1e-3)
        elif ids:
            assert group["lr"] == pytest.approx(1e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_group_by_length_batches_pairs_of_similar_length(tmp_path):
    tokenizer = make_llama_tokenizer()
    model = VRMForSequenceClassification.from_backbone_config(llama_config(len(tokenizer)))
    sizes = torch.randint(1, 40, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    examples = [PreferenceExample("q?", "a " * n, "b " * n) for n in sizes]
    dataset = PairDataset(PreferenceTokenizer(tokenizer, max_length=128).tokenize_pairs(examples)[0])
    lengths = dataset.lengths

    def mean_spread(strategy: str) -> float:
        args = VRMTrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=4, train_sampling_strategy=strategy
        )
        trainer = VRMTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        order = list(trainer._get_train_sampler())
        assert sorted(order) == list(range(64))
        batches = [[lengths[i] for i in order[k : k + 4]] for k in range(0, 64, 4)]
        return sum(max(b) - min(b) for b in batches) / len(batches)

    assert mean_spread("group_by_length") < 0.5 * mean_spread("random")


@pytest.mark.parametrize("disable", [True, False])
def test_trainer_disables_dropout_by_default(tmp_path, disable):
    from transformers import BertConfig

    from vrm.training.arguments import VRMTrainingArguments
    from vrm.training.trainer import VRMTrainer

    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5,
    )  # fmt: skip
    model = VRMForSequenceClassification.from_backbone_config(config, head_type="bt")
    args = VRMTrainingArguments(output_dir=str(tmp_path), report_to="none", disable_dropout=disable)
    VRMTrainer(model=model, args=args, processing_class=make_bert_tokenizer())
    model.train()
    ids = torch.randint(5, 64, (2, 12))
    with torch.no_grad():
        first, second = (model(input_ids=ids, prompt_lengths=torch.tensor([4, 4])).logits for _ in range(2))
    assert torch.equal(first, second) == disable
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout)) == disable


def test_bootstrap_weights_are_seeded_per_step_and_micro_batch():
    """`VRMTrainer.ensemble_pair_weights`: the same (seed, step, micro-batch) draws the same; others differ."""
    samples = SimpleNamespace(members=(None, None, None), reward_chosen=torch.zeros(4, 64))

    def trainer(seed: int, bootstrap: bool = True):
        args = SimpleNamespace(seed=seed, ensemble_bootstrap=bootstrap, process_index=0)
        return SimpleNamespace(args=args, state=SimpleNamespace(global_step=0), _bootstrap_position=(-1, 0))

    def draw(fake):
        return VRMTrainer.ensemble_pair_weights(fake, samples, True)

    first, again = trainer(0), trainer(0)
    a, b = draw(first), draw(first)  # two micro-batches of step 0
    assert a.shape == (3, 64) and torch.equal(a, draw(again)) and not torch.equal(a, b)
    assert torch.equal(b, draw(again))
    first.state.global_step = 1
    assert not torch.equal(draw(first), a)
    assert not torch.equal(draw(trainer(1)), a)
    assert set(a.unique().tolist()) <= set(range(20)) and 0.6 < float(a.mean()) < 1.4  # Poisson(1)
    assert VRMTrainer.ensemble_pair_weights(trainer(0, bootstrap=False), samples, True) is None
    assert VRMTrainer.ensemble_pair_weights(trainer(0), samples, False) is None  # evaluation


@pytest.mark.slow
def test_a_non_finite_training_loss_stops_the_run_and_keeps_the_last_checkpoint(
    tmp_path, pairs_file, llama_backbone_dir, capsys, monkeypatch, train_argv, one_line_error
):
    import vrm.training.trainer

    original, calls = vrm.training.trainer.preference_loss, []

    def diverging(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 3:  # the third step's loss
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(vrm.training.trainer, "preference_loss", diverging)
    output = tmp_path / "run"
    argv = train_argv(
        llama_backbone_dir,
        pairs_file,
        str(output),
        save_strategy="steps",
        save_steps=2,
        head_type="bt",
        num_objectives=1,
    )
    assert main(["train", *argv]) == 1  # not exit 0 with a NaN model saved
    assert "the training loss became nan at step 3" in one_line_error("train")
    assert (output / "checkpoint-2" / "trainer_state.json").exists()
    assert not (output / "checkpoint-4").exists() and not (output / "model.safetensors").exists()


def test_non_finite_gradients_stop_the_run_with_a_clear_error(
    tmp_path, pairs_file, llama_backbone_dir, capsys, train_argv, one_line_error
):
    """A finite loss whose gradients are not (as `--learning_rate 1e30` gives from the second step) stops before
    the optimizer writes NaN into the weights; before, the next step failed inside the Dirichlet with
    "Expected parameter concentration ... nan"."""
    import vrm.training.trainer

    class InfiniteGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            return value.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    original = vrm.training.trainer.preference_loss

    def exploding(*args, **kwargs):
        out = original(*args, **kwargs)
        out.loss = InfiniteGradient.apply(out.loss)
        return out

    output = tmp_path / "run"
    argv = train_argv(llama_backbone_dir, pairs_file, str(output))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vrm.training.trainer, "preference_loss", exploding)
        assert main(["train", *argv]) == 1
    assert "the gradients became NaN or infinite at step 1" in one_line_error("train")
    assert not (output / "model.safetensors").exists()


@pytest.mark.slow
def test_a_learning_rate_that_breaks_the_weights_is_named(
    tmp_path, pairs_file, llama_backbone_dir, capsys, train_argv, one_line_error
):
    """`--learning_rate 1e30`: step 1's update makes the weights non-finite and step 2's Dirichlet refuses them;
    the error says so in vrm's words (it was torch's "Expected parameter concentration ... nan")."""
    output = tmp_path / "run"
    argv = train_argv(llama_backbone_dir, pairs_file, str(output), learning_rate=1e30, max_grad_norm=0)
    assert main(["train", *argv]) == 1
    message = one_line_error("train")
    assert "became NaN or infinite" in message or "training loss became" in message
    assert "Expected parameter" not in message and not (output / "model.safetensors").exists()
