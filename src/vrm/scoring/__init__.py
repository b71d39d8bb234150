"""Scoring with reward models: `RewardPipeline` (texts in, rewards, uncertainty and objective weights out),
`load_scorer` for any reward model on disk (vrm checkpoints, deep ensembles of them, foreign
`AutoModelForSequenceClassification` models), resumable file scoring (`score_file`), conservative rewards, the
GRPO / RL reward function (`reward_function`) and where a model runs (`device`)."""

from vrm.scoring.conservative import conservative_reward
from vrm.scoring.deep_ensemble import DeepEnsembleRewardModel
from vrm.scoring.loading import load_scorer
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.reward_function import VRMRewardFunction
from vrm.scoring.score_file import score_file
from vrm.scoring.scores import SequenceScores, score_sequences

__all__ = [
    "DeepEnsembleRewardModel",
    "RewardPipeline",
    "SequenceScores",
    "VRMRewardFunction",
    "conservative_reward",
    "load_scorer",
    "score_file",
    "score_sequences",
]
