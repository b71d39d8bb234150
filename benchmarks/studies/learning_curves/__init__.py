"""Learning curves: does a Variational Reward Model generalize better than a Bradley-Terry one as data shrinks?

The paper claims a tighter generalization bound for a VRM; in practice that would show as (a) a smaller gap
between accuracy on the training pairs and on held-out pairs, and (b) better held-out accuracy when pairs are
few. This study trains each head (bt, vrm, vrm whose weights also learn from labels or ratings, moe, a 4-member
bt ensemble) on nested subsets of n ∈ {125, ..., 4,000, all} training pairs, several seeds each, in three
settings (`benchmarks/experiments/learning_curves/frozen_and_finetune.yaml`): frozen MiniLM on the real-data study's splits, frozen
MiniLM on the synthetic world (ratings and true weights known; iid and length-shifted tests), and MiniLM
fine-tuned end to end (bt and vrm, few sizes). One command makes the runs and the report:

    python -m benchmarks.studies.learning_curves benchmarks/experiments/learning_curves/frozen_and_finetune.yaml
    python -m benchmarks.studies.learning_curves benchmarks/experiments/learning_curves/frozen_and_finetune.yaml --stages report

Run files (small JSON, per-pair correctness as packed bits) are committed under
`benchmarks/results/learning_curves_runs/<setting>/`; the report (`learning_curves.json`, `.md`, one PNG per
setting) is rebuilt from them alone.

Modules: `plan` (the YAML as dataclasses; a run's spec and key), `subsets` (nested subsets, one ordering per
seed), `states` (each setting's data and its frozen MiniLM states, computed once — the real-data split files are
`benchmarks.studies.realdata.data`'s), `runner` (train a run through `VRMTrainer`, score it, write its file),
`aggregate` (mean ± std over seeds, paired tests against bt on `benchmarks.studies.stats`, held-out error
bounds), `report` (JSON, markdown, figures), `__main__` (the command line).
"""
