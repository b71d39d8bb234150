"""Training a reward model: `VRMTrainer` (a `transformers.Trainer` whose loss is the negative ELBO of `losses`)
and its arguments, as TRL pairs `RewardTrainer` with `RewardConfig`; loading the backbone (`backbone`: LoRA,
QLoRA), checkpoints and the crash-safe final save (`checkpoints`), the model card (`model_card`), and how many
training rows feed each auxiliary term of the loss (`auxiliary_terms`)."""

from vrm.training.arguments import DataArguments, ModelArguments, VRMTrainingArguments
from vrm.training.auxiliary_terms import AuxiliaryTermCounts
from vrm.training.backbone import build_model, load_tokenizer
from vrm.training.pair_data import PairDataset, preference_examples
from vrm.training.trainer import VRMTrainer

__all__ = [
    "AuxiliaryTermCounts",
    "DataArguments",
    "ModelArguments",
    "PairDataset",
    "VRMTrainer",
    "VRMTrainingArguments",
    "build_model",
    "load_tokenizer",
    "preference_examples",
]
