"""Tiny backbones and tokenizers built in the test session: no network, no ../shared."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AutoModel, BertConfig, PreTrainedTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
from tiny_models import CHAT_TEMPLATE, CORPUS, PAIRS, llama_config, make_llama_tokenizer  # noqa: E402, F401


@pytest.fixture(autouse=True, scope="session")
def _datasets_cache_in_a_temporary_directory(tmp_path_factory):
    """`datasets`' cache (and vrm's tokenization cache under it) lives in the session's temporary directory:
    the suite writes nothing under ~/.cache, in this process or in the `vrm` subprocesses it starts."""
    import datasets

    directory = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    before_env, before_config = os.environ.get("HF_DATASETS_CACHE"), datasets.config.HF_DATASETS_CACHE
    os.environ["HF_DATASETS_CACHE"] = directory
    datasets.config.HF_DATASETS_CACHE = directory
    yield
    datasets.config.HF_DATASETS_CACHE = before_config
    if before_env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = before_env


def make_bert_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer like BERT's: [CLS] text [SEP]."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]"
    )


def bert_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="session")
def llama_tokenizer():
    return make_llama_tokenizer()


@pytest.fixture(scope="session")
def bert_tokenizer():
    return make_bert_tokenizer()


def save_backbone(kind: str, directory: str) -> str:
    """A random-initialized tiny backbone and its tokenizer saved as a local `from_pretrained` directory."""
    torch.manual_seed(0)
    tokenizer = make_llama_tokenizer() if kind == "llama" else make_bert_tokenizer()
    size = len(tokenizer)
    config = llama_config(size) if kind == "llama" else bert_config(size)
    AutoModel.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def llama_backbone_dir(tmp_path_factory):
    return save_backbone("llama", str(tmp_path_factory.mktemp("llama_backbone")))


@pytest.fixture(scope="session")
def bert_backbone_dir(tmp_path_factory):
    return save_backbone("bert", str(tmp_path_factory.mktemp("bert_backbone")))


def write_pairs(path: str, rows: list[dict] | None = None) -> str:
    rows = rows or [
        {"prompt": p, "chosen": c, "rejected": r, "subset": "a" if i % 2 else "b"}
        for i, (p, c, r) in enumerate(PAIRS)
    ]
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return write_pairs(str(tmp_path / "pairs.jsonl"))
