"""The framework that produces the project's evidence: declared studies, resumable runs, one report writer.

A study is declared in a YAML file (under `benchmarks/experiments/`); each run it makes trains one reward model
through `vrm.training.VRMTrainer` (`training`), is scored, and leaves a run file under
`benchmarks/results/...`; the report is rebuilt from those run files alone. The shared parts:

* `spec` — a run's specification (`RunSpec`: model name, seed, training options) and its resumable key; reading
  a study's YAML into its dataclass with errors that name the file and the field;
* `training` — one run through `VRMTrainer` from its options (no command-line strings);
* `backbones` — names of the installed backbones (`minilm`, `smollm2`) to local directories;
* `stats` — mean ± std over seeds, the paired sign-flip permutation test (`scipy.stats.permutation_test`);
* `report` — mean ± std cells, markdown tables, writing `report.json` / `report.md` and the command line.

The three kinds of study, each `python -m benchmarks.studies.<kind> CONFIG.yaml` (`--report_only` rebuilds the
report from the committed runs):

* `experiment` — variants × seeds, one learning rate per variant chosen on validation, paired tests, E[w] error
  (`benchmarks/experiments/*.yaml`, results in `benchmarks/results/experiments/<name>/`);
* `overoptimization` — best-of-n against a gold reward with r − λ·σ, error detection by each uncertainty
  signal (`benchmarks/experiments/overoptimization/*.yaml`, `benchmarks/results/overoptimization/<name>/`);
* `realdata` — the real-data study of `docs/results.md` (`benchmarks/experiments/realdata.yaml`,
  `benchmarks/results/study.{json,md}`, `study_runs/`), in stages (`--stages report` rebuilds the report).
"""
