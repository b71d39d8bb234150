"""The real-data study's machinery (`benchmarks.studies.realdata`) on tiny runs built here: no training, no data.

Training and scoring are replaced by stand-ins that write what a run writes (metrics from `vrm.evaluate`'s
functions on synthetic rewards, per-pair scores); selection, seed grouping, the paired test and the report
are the study's own code.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks.studies.realdata import aggregate, runner, settings
from benchmarks.studies.realdata import report as study_report
from benchmarks.studies.realdata.aggregate import members, select, significance, summarize
from benchmarks.studies.realdata.config import RUNS, StudyConfig, pair_set_names
from benchmarks.studies.realdata.runner import RunResult, execute, load_results
from benchmarks.studies.realdata.specs import FROZEN_MAIN_VARIANTS, RunSpec, Variant, sweep_grid
from benchmarks.studies.stats import mean_std, paired_p_value
from vrm.evaluation.pairwise import metrics_by_subset
from vrm.evaluation.report import DatasetReport
from vrm.scoring.scores import SequenceScores

PAIRS = 40
SUBSETS = ["rmb/helpfulness/a"] * 20 + ["rmb/harmlessness/b"] * 20


def _scores(reward: np.ndarray, harm_weight: float) -> SequenceScores:
    n = reward.size
    weights = torch.tensor([[1 - harm_weight, harm_weight]] * n, dtype=torch.float32)
    weights[:20] = torch.tensor([0.8, 0.2])  # helpfulness prompts lean on objective 0
    return SequenceScores(torch.tensor(reward), torch.full((n,), 0.1), weights, torch.zeros(n, 2))


def fake_evaluation(skill: dict[str, float]):
    """A stand-in for `runner.evaluate_run`: `skill[head]` (+ seed noise) is how often chosen wins."""

    def evaluate(model_dir, spec, eval_sets, tokenized):
        rng = np.random.default_rng(spec.seed * 101 + len(spec.head))
        metrics, arrays = {}, {}
        for name in eval_sets:
            if name.endswith("rm_bench"):
                metrics[name] = {
                    "overall": {"easy": 0.9, "normal": 0.6, "hard": 0.3, "average": 0.6, "prompts": 3}
                }
                continue
            if name.endswith("bon_pool"):
                metrics[name] = {
                    "curve": [{"n": n, "kl_bon": float(np.log(n)), "gold": 0.3} for n in (1, 16)]
                }
                continue
            right = rng.random(PAIRS) < skill.get(spec.head, 0.5) + 0.1 * spec.learning_rate
            chosen = np.where(right, 1.0, -1.0).astype(np.float32) + rng.normal(0, 0.01, PAIRS).astype(
                np.float32
            )
            rejected = np.zeros(PAIRS, dtype=np.float32)
            lengths = rng.integers(1, 50, size=(2, PAIRS))
            metrics[name] = metrics_by_subset(
                _scores(chosen, 0.7), _scores(rejected, 0.7), lengths[0], lengths[1], SUBSETS
            )
            arrays.update(
                {
                    f"{name}/reward_chosen": chosen,
                    f"{name}/reward_rejected": rejected,
                    f"{name}/std_chosen": np.full(PAIRS, 0.1),
                    f"{name}/std_rejected": np.full(PAIRS, 0.1),
                }
            )
        return metrics, arrays, {"kl_z_per_dim": [0.5, 0.001], "active_feature_dims": 1}

    return evaluate


@pytest.fixture
def fake_training(monkeypatch):
    trained = []
    monkeypatch.setattr(runner, "train_run", lambda spec, cfg, model_dir: trained.append(spec))
    monkeypatch.setattr(runner, "evaluate_run", fake_evaluation({"bt": 0.6, "vrm": 0.8}))
    return trained


def _sets(prefix: str = "") -> dict[str, str]:
    return {name: name for name in [*pair_set_names(prefix), f"{prefix}rm_bench", f"{prefix}bon_pool"]}


def _spec(head: str, seed: int, lr: float = 0.1, group: str = "main", **changes) -> RunSpec:
    return RunSpec("frozen", "tiny", head, seed, lr, group=group, **changes)


def test_a_finished_run_is_a_file_and_is_not_trained_again(tmp_path, fake_training):
    spec = _spec("vrm", 1)
    first = execute(spec, StudyConfig(), _sets(), {}, root=str(tmp_path))
    again = execute(spec, StudyConfig(), _sets(), {}, root=str(tmp_path))
    assert len(fake_training) == 1 and first.key == again.key == spec.key and again.complete
    directory = tmp_path / "frozen" / "tiny" / spec.key
    assert sorted(os.listdir(directory)) == ["result.json", "scores.npz"]
    assert isinstance(again.metrics["rmb_id"], DatasetReport)  # read back through the typed eval report
    assert again.metrics["rmb_id"].overall.pairs == PAIRS
    # a migrated record (spec and key, no metrics) is trained again and replaced
    record = {"spec": json.loads(json.dumps(spec.__dict__)), "key": spec.key, "recorded": "aggregate.json"}
    (directory / "result.json").write_text(json.dumps(record))
    assert not load_results("frozen", "tiny", str(tmp_path))[0].complete
    assert execute(spec, StudyConfig(), _sets(), {}, root=str(tmp_path)).complete and len(fake_training) == 2


def test_the_run_key_ignores_group_label_and_new_defaults():
    spec = _spec("vrm", 0, group="sweep", label="x")
    assert spec.key == replace(spec, group="main", label="").key == replace(spec, bf16=False).key
    assert spec.key != replace(spec, beta=0.1).key and spec.key.startswith("vrm-s0-")
    with pytest.raises(ValueError, match="unknown fields"):
        RunSpec.from_dict({**spec.__dict__, "nonsense": 1})


def test_every_committed_run_file_is_named_by_its_key():
    checked = 0
    for directory, _, names in os.walk(RUNS):
        if "result.json" in names:
            with open(os.path.join(directory, "result.json"), encoding="utf-8") as handle:
                values = json.load(handle)
            assert RunSpec.from_dict(values["spec"]).key == values["key"] == os.path.basename(directory)
            checked += 1
    assert checked >= 200


def test_selection_on_validation_then_seeds_and_variants_of_the_winner(monkeypatch):
    made: list[RunSpec] = []

    def fake_execute(spec, cfg, eval_sets, tokenized, root=RUNS):
        made.append(spec)
        accuracy = 0.7 if spec.learning_rate == 1e-2 else 0.6  # lr 1e-2 wins; beta breaks the tie by NLL
        nll = 0.5 if spec.beta == 0.1 else 0.6
        validation = {"accuracy": accuracy, "nll": nll}
        return RunResult(spec, spec.key, 0.0, 0.0, 0.0, {}, recorded="x", validation=validation)

    monkeypatch.setattr(settings, "execute", fake_execute)
    settings.frozen_setting(StudyConfig(), "tiny", [0, 1], [0], subset=True)
    main = [s for s in made if s.group == "main"]
    chosen = {s.head: (s.learning_rate, s.beta) for s in main if not s.label}
    assert chosen == {"bt": (1e-2, 0.01), "ib": (1e-2, 0.1), "moe": (1e-2, 0.01), "vrm": (1e-2, 0.1)}
    assert sorted(s.seed for s in main if s.head == "bt" and not s.label) == [0, 1]
    labelled_all = [s for s in main if s.label == "labelled weights, all pairs"]
    assert {s.train for s in labelled_all} == {"ft_train_labelled"} and len(labelled_all) == 4
    assert len(made) == 24 + 4 * 2 + len(FROZEN_MAIN_VARIANTS) * 2
    sweep = [
        RunResult(s, s.key, 0, 0, 0, {}, validation={"accuracy": 0.5, "nll": n})
        for s, n in zip(sweep_grid("bt", "frozen", "tiny")[:2], (0.7, 0.6), strict=True)
    ]
    assert select(sweep, "val") is sweep[1]  # equal accuracy: the lower NLL


def test_seed_grouping_and_mean_std(tmp_path, fake_training):
    root, cfg, sets = str(tmp_path), StudyConfig(), _sets()
    chosen = _spec("bt", 0, lr=0.1, group="sweep")
    execute(_spec("bt", 0, lr=0.3, group="sweep"), cfg, sets, {}, root=root)  # the sweep's loser
    for spec in (chosen, replace(chosen, seed=1, group="main"), replace(chosen, seed=2, group="main")):
        execute(spec, cfg, sets, {}, root=root)
    results = load_results("frozen", "tiny", root)
    grouped = members(results, "main")
    assert sorted(r.spec.seed for r in grouped) == [0, 1, 2]  # the winner's sweep run is its seed 0
    row = summarize(grouped, pair_set_names(""))["bt"]
    accuracies = [r.metrics["rmb_id"].overall.accuracy for r in sorted(grouped, key=lambda r: r.spec.seed)]
    assert row["seeds"] == [0, 1, 2]
    assert row["rmb_id"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert row["rmb_id"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert row["rm_bench"]["hard"]["mean"] == pytest.approx(0.3)
    assert mean_std([1.0, None, float("nan")]) == {"mean": 1.0, "std": 0.0, "n": 1}


def test_the_paired_test_over_test_pairs(tmp_path, fake_training):
    root, cfg, sets = str(tmp_path), StudyConfig(), _sets()
    for head in ("bt", "vrm"):
        for seed in (0, 1):
            execute(_spec(head, seed), cfg, sets, {}, root=root)
    results = load_results("frozen", "tiny", root)
    found = significance(results, ["rmb_id"])["rmb_id"]
    correct = {
        h: np.mean([r.scores["rmb_id/reward_chosen"] > 0 for r in results if r.spec.head == h], 0)
        for h in ("bt", "vrm")
    }
    assert found["pairs"] == PAIRS
    assert found["difference"] == pytest.approx(correct["vrm"].mean() - correct["bt"].mean())
    assert found["p_value"] == paired_p_value(correct["vrm"], correct["bt"], resamples=20000)
    same = significance(results, ["rmb_id"], "bt", "bt")["rmb_id"]
    assert same["difference"] == 0 and same["p_value"] == 1.0


@pytest.mark.slow
def test_the_report_from_run_files_and_from_a_recorded_setting(tmp_path, fake_training, monkeypatch):
    monkeypatch.setattr(aggregate, "PERMUTATIONS", 999)  # p-values are tested above; here the tables
    root, results_dir, cfg = tmp_path / "runs", tmp_path / "results", StudyConfig()
    for head in ("bt", "vrm"):
        for seed in (0, 1, 2):
            execute(_spec(head, seed), cfg, _sets(), {}, root=str(root))
        execute(
            Variant(head, {"label": "labelled weights", "objective_label_weight": 1.0}).apply(
                _spec(head, 0), 0
            ),
            cfg,
            _sets(),
            {},
            root=str(root),
        )
    # a recorded setting: a sweep run file with its validation numbers, and the aggregate of its tables
    recorded = root / "frozen_subset" / "old"
    spec = RunSpec("frozen_subset", "old", "bt", 0, 0.01, group="sweep", train="ft_train")
    (recorded / spec.key).mkdir(parents=True)
    (recorded / spec.key / "result.json").write_text(
        json.dumps(
            {
                "spec": spec.__dict__,
                "key": spec.key,
                "recorded": "aggregate.json",
                "validation": {"accuracy": 0.61, "nll": 0.66},
            }
        )
    )
    entry = study_report.setting_entry(load_results("frozen", "tiny", str(root)))
    old = {**{k: v for k, v in entry.items() if k != "sweep"}, "main": {"bt": entry["main"]["bt"]}}
    old["main"]["bt"] = {
        k.replace("rmb", "ft_rmb") if k.startswith("rmb") else k: v for k, v in old["main"]["bt"].items()
    }
    (recorded / "aggregate.json").write_text(json.dumps({"provenance": "test", "entry": old}))
    results_dir.mkdir()
    md = "\n".join(study_report.write_report({"counts": {}}, "cmd", 0.0, str(root), str(results_dir)))
    assert "## frozen tiny: accuracy (mean ± std over seeds)" in md and "## frozen_subset old: accuracy" in md
    assert "### vrm (labelled weights) − bt (accuracy; the same test)" in md
    assert "| bt | 0.01 | 0.01 | 0.610 | 0.660 |" in md  # the recorded setting's sweep, from its run file
    assert "| :--- | ---: |" in md  # tables by vrm.reporttext.markdown_table, as `vrm eval --markdown`
    study = json.loads((results_dir / "study.json").read_text())
    assert list(study["settings"]) == ["frozen/tiny", "frozen_subset/old"]  # the study's order
    main = study["settings"]["frozen/tiny"]["main"]
    assert main["vrm"]["seeds"] == [0, 1, 2] and main["vrm (labelled weights)"]["seeds"] == [0]
    assert (results_dir / "study_bon.png").read_bytes()[:4] == b"\x89PNG"
    assert (results_dir / "study.md").read_text() == md + "\n"


def test_a_run_spec_becomes_valid_trainer_arguments(llama_backbone_dir):
    """The study's typed spec turns into `vrm.training` arguments: the frozen head on cached states, the
    objective labels where the head has objectives, the head learning rate the sweep chose."""
    from benchmarks.studies.training import build_arguments

    spec = _spec("vrm", 0, lr=0.01, beta=0.1, num_objectives=4)
    options = {"model_name_or_path": llama_backbone_dir, **runner.train_options(spec, StudyConfig())}
    model, _, training = build_arguments(options)
    assert model.freeze_backbone and model.head_type == "vrm" and model.num_objectives == 4
    assert training.head_learning_rate == 0.01 and training.beta_w == training.beta_z == 0.1
    assert training.attribute_names == ["helpfulness", "harmlessness"] and training.max_length == 192
    tuned = replace(spec, setting="finetune", head="bt")
    model, _, training = build_arguments(
        {"model_name_or_path": llama_backbone_dir, **runner.train_options(tuned, StudyConfig())}
    )
    assert (
        not model.freeze_backbone and training.head_learning_rate is None and training.attribute_names is None
    )


def test_the_study_plan_yaml(tmp_path):
    """The committed plan is the committed study's sizes and stages; flags override it; bad fields are named."""
    from benchmarks.studies.realdata.__main__ import load_plan, parse_args
    from benchmarks.studies.realdata.specs import FINETUNE_VARIANTS

    _, plan = parse_args(["--stages", "report", "--seeds", "0", "1"])
    assert plan.study_config() == StudyConfig() and tuple(plan.finetune_variants) == FINETUNE_VARIANTS
    assert plan.stages == ["report"] and plan.seeds == [0, 1] and plan.ablation_seeds == [0, 1, 2]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"sizes": {"rmb_train": 10, "colour": 1}}))
    with pytest.raises(ValueError, match=r"plan.yaml: sizes: unknown fields \['colour'\]"):
        load_plan(str(path))
    path.write_text(yaml.safe_dump({"stages": ["prepare", "train"]}))
    with pytest.raises(ValueError, match=r"stages: \['train'\]"):
        load_plan(str(path))
    path.write_text(yaml.safe_dump({"sizes": {"rmb_train": 10}}))
    assert load_plan(str(path)).study_config().rmb_train == 10


@pytest.mark.slow
def test_the_committed_report_regenerates_from_its_runs(tmp_path):
    """`--stages report` rebuilds study.md and study.json from the committed study_runs/ alone, number for
    number (the title line names the command)."""
    from benchmarks.studies.realdata.data import recorded_manifest

    results = Path(RUNS).parent
    md = study_report.write_report(recorded_manifest(), "cmd", 0.0, results=str(tmp_path))
    assert md[2:] == (results / "study.md").read_text().splitlines()[2:]
    new, old = (json.loads(p.read_text()) for p in (tmp_path / "study.json", results / "study.json"))
    assert new["settings"] == old["settings"] and new["data"] == old["data"]
