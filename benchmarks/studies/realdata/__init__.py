"""Real-data study: does a Variational Reward Model beat a Bradley-Terry reward model?

One command reproduces every number of `docs/results.md` (stages are resumable: a finished run is skipped):

    python -m benchmarks.studies.realdata benchmarks/experiments/realdata.yaml                   # all stages
    python -m benchmarks.studies.realdata benchmarks/experiments/realdata.yaml --stages report   # from the runs

The YAML file holds the study's sizes (`config.StudyConfig`) and what each stage runs (seeds, backbones, the
fine-tuning grid and variants); command-line flags override it. Each run's result (`result.json`: spec,
metrics, posterior diagnostics, times) and per-pair scores (`scores.npz`, no weights) are committed under
benchmarks/results/study_runs/<setting>/<backbone>/<key>/; the report (study.json, study.md, study_bon.png) is
rebuilt from those files alone.

Stages:
  prepare   split ../shared/data into train / validation / test files (seeded, by prompt or instruction;
            written under benchmarks/.cache/study/data, never into the repository) — `data.py`;
  frozen    MiniLM states computed once (embedding cache); for each head (bt, ib, moe, vrm) a sweep of the same
            size chosen on the validation split only, then seeds with the best setting; the helpfulness ->
            harmlessness shift; the ablations of vrm; moe and vrm also with labelled weights — `settings.py`;
  frozen_subset  the same sweep and seeds on the fine-tuned setting's subset (1,000 training pairs, smaller
            test splits), for MiniLM and SmolLM2-135M;
  finetune  MiniLM fine-tuned end to end: each head sweeps the backbone learning rate at seed 0, then more
            seeds, and the variants of `specs.FINETUNE_VARIANTS`;
  report    benchmarks/results/study.json, study.md (tables) and study_bon.png — `report.py`.

Modules, one per concern: `config` (sizes and names), `data` (the data recipes), `specs` (a run's
specification and its resumable key; the sweep grids, ablations and variants as data), `runner` (train, score,
diagnose one run; read finished runs), `settings` (which runs each stage makes), `aggregate` (selection, seed
grouping, summaries and paired tests on `benchmarks.studies.stats`), `report` (tables, figure, study.json),
`__main__` (the command line). Every run trains through `VRMTrainer` (`benchmarks.studies.training`) and is
scored with `vrm.evaluation`'s functions.
"""
