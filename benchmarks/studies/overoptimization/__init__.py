"""Does a reward model's uncertainty pay? Best-of-n over-optimization against a gold reward, and error detection.

    python -m benchmarks.studies.overoptimization benchmarks/experiments/overoptimization/synthetic.yaml
    python -m benchmarks.studies.overoptimization benchmarks/experiments/overoptimization/synthetic.yaml --report_only

The study is declared in a YAML file:

    name: overoptimization_synthetic
    backbone: minilm                       # `minilm` (the pip-installed MiniLM) or a local directory
    data: {kind: synthetic, world_dir: ..., pool_prompts: 100, pool_candidates: 64, pool_seed: 3}
    common: {freeze_backbone: true, max_length: 128, ...}   # training options of every run
    gold: {}                               # synthetic: the true rewards; alpacaeval: training options of the gold
    proxies: {bt: {head_type: bt}, vrm: {head_type: vrm, ...}}
    ensembles: {bt-ensemble: bt}           # a deep ensemble of `ensemble_members` heads of that proxy's options
    ensemble_members: 4
    seeds: [0, 1, 2]
    lambdas: [0, 0.5, 1, 2, 4]             # lambda of r - lambda * sigma, chosen on the validation prompts
    ns: [1, 2, 4, 8, 16, 32, 64]

Over-optimization (Gao et al., 2022): a policy that picks the best of n candidates by a proxy reward moves
KL_BoN = log n - (n - 1) / n nats away from the base policy; the gold score of its choice first rises with n,
then falls where the proxy's errors are what it selects for. The expected gold score of the proxy's best of n is
computed exactly over all n-subsets of each pool (`vrm.evaluation.best_of_n.bon_curve`). Conservative selection
(Coste et al., 2023; Eisenstein et al., 2023) ranks by `vrm.scoring.conservative` r - lambda * sigma, sigma a
deep ensemble's member std or a variational head's posterior `reward_std`, lambda chosen on validation prompts.
Error detection: the AUROC of each uncertainty signal for "this pair is ranked wrongly".

Modules: `selection` (the best-of-n curves, lambda selection, ensembles, error detection), `data` (proxy training
pairs, test pairs and the pool with gold scores), `runner` (the config, the runs and their files), `report`
(the tables and the figure, from the run files alone), `__main__` (the command line).
"""
