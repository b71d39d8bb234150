"""Declarative experiments (`benchmarks.studies.experiment`): selection on validation, seeds, resumption, paired
tests, the report, a real run on a tiny backbone, and the committed experiments."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from benchmarks.studies.experiment import (
    ExperimentConfig,
    RunResult,
    SetResult,
    build_report,
    collect,
    load_experiment,
    main,
    report_markdown,
    run_experiment,
)
from vrm.evaluation.metrics import weight_error

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results" / "experiments"
CONFIGS = Path(__file__).parents[2] / "benchmarks" / "experiments"


def _config(**overrides) -> ExperimentConfig:
    values = dict(
        name="toy",
        backbone="unused",
        train="train.jsonl",
        validation="val.jsonl",
        test={"test": "test.jsonl"},
        variants={"bt": {"head_type": "bt"}, "vrm": {"head_type": "vrm"}},
        baseline="bt",
        grid={"learning_rate": [0.1, 0.2]},
        seeds=[0, 1, 2],
    )
    return ExperimentConfig(**{**values, **overrides})


def _fake_runner(calls: list):
    """Validation accuracy peaks at lr 0.2 for vrm and 0.1 for bt; vrm wins every test pair, bt half."""

    def runner(spec, config, work_dir):
        calls.append(spec.key)
        best = {"bt": 0.1, "vrm": 0.2}[spec.name]
        val = 0.9 if spec.options["learning_rate"] == best else 0.6
        test = [1.0] * 20 if spec.name == "vrm" else [1.0, 0.0] * 10
        sets = {
            "validation": SetResult(10, val, [val] * 10, 0.1, None, None),
            "test": SetResult(20, sum(test) / 20 - 0.01 * spec.seed, test, 0.05, 0.2, [0.5, 0.5]),
        }
        return RunResult(spec.name, spec.seed, spec.key, spec.options, sets)

    return runner


def test_each_variant_runs_its_grid_once_then_the_chosen_point_at_every_seed(tmp_path):
    config, calls = _config(), []
    run_experiment(config, str(tmp_path), str(tmp_path / "work"), runner=_fake_runner(calls))
    assert len(calls) == 2 * (2 + 2)  # per variant: 2 grid points at seed 0, then seeds 1 and 2
    runs = collect(config, str(tmp_path))
    assert {v: [r.flags["learning_rate"] for r in rs] for v, rs in runs.items()} == {
        "bt": [0.1, 0.1, 0.1],
        "vrm": [0.2, 0.2, 0.2],
    }
    again: list = []  # finished runs are read back, never retrained
    run_experiment(config, str(tmp_path), "", runner=_fake_runner(again))
    assert again == []

    report = build_report(config, runs)
    vrm = report["variants"]["vrm"]["sets"]["test"]
    assert vrm["accuracy_mean"] == pytest.approx(0.99) and vrm["accuracy_std"] == pytest.approx(0.01)
    assert report["variants"]["bt"]["flags"]["learning_rate"] == 0.1
    test = report["paired_tests"]["vrm - bt"]
    assert test["seeds"] == [0, 1, 2] and test["sets"]["test"]["difference"] == pytest.approx(0.5)
    assert test["sets"]["test"]["p"] < 0.01
    markdown = report_markdown(report)
    assert "| vrm | 0.900 ± 0.000 | 0.990 ± 0.010 |" in markdown and "vrm - bt" in markdown
    with pytest.raises(ValueError, match="made on other data"):  # reused runs must come from the same data
        run_experiment(_config(train="other.jsonl"), str(tmp_path), "", runner=_fake_runner([]))


def test_a_tie_on_validation_picks_the_first_grid_point_in_every_path(tmp_path):
    """The run and the report (rebuilt from files, whose names are hashes) make the same choice on a tie."""
    config = _config(grid={"learning_rate": [0.3, 0.2, 0.1]}, variants={"bt": {"head_type": "bt"}})

    def tied(spec, config, work_dir):
        sets = {name: SetResult(4, 0.5, [0.5] * 4, 0.1, None, None) for name in ("validation", "test")}
        return RunResult(spec.name, spec.seed, spec.key, spec.options, sets)

    run_experiment(config, str(tmp_path), "", runner=tied)
    runs = collect(config, str(tmp_path))["bt"]
    assert [r.flags["learning_rate"] for r in runs] == [0.3, 0.3, 0.3] and [r.seed for r in runs] == [0, 1, 2]


def test_running_one_variant_keeps_the_others_in_the_report(tmp_path, monkeypatch):
    config = _config()
    run_experiment(config, str(tmp_path), "", runner=_fake_runner([]))
    monkeypatch.setattr("benchmarks.studies.experiment.load_experiment", lambda path: config)
    monkeypatch.setattr("benchmarks.studies.experiment.run_experiment", lambda *args, **kwargs: None)
    assert main(["unused.yaml", "--results_dir", str(tmp_path), "--variants", "vrm"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["variants"]) == {"bt", "vrm"} and "vrm - bt" in report["paired_tests"]


def test_experiment_files_are_checked(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "colour": "red"}))
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        load_experiment(str(path))
    fields = dict(
        name="x", backbone="b", train="t", validation="v", test={}, variants={"bt": {}}, baseline="vrm"
    )
    path.write_text(yaml.safe_dump(fields))
    with pytest.raises(ValueError, match="baseline 'vrm' is not one of the variants"):
        load_experiment(str(path))
    path.write_text(yaml.safe_dump(dict(fields, baseline="bt", grid={"lr": [1]}, variants={"bt": {"lr": 2}})))
    with pytest.raises(ValueError, match="variant 'bt' sets \\['lr'\\], which the grid sweeps"):
        load_experiment(str(path))


VALID = (
    "name: x\nbackbone: b\ntrain: t\nvalidation: v\ntest: {t: t.jsonl}\nvariants: {bt: {}}\nbaseline: bt\n"
)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: [unclosed\n", "not a valid experiment YAML file"),
        ("!!python/object/apply:os.system ['echo owned']\n", "not a valid experiment YAML file"),
        (VALID + "common: 5\n", "field 'common'"),
        (VALID + "grid: {learning_rate: 0.001}\n", "field 'grid.learning_rate'"),
        (VALID.replace("variants: {bt: {}}", "variants: [bt, vrm]"), "field 'variants'"),
        (VALID + "seeds: ab\n", "field 'seeds'"),
        (VALID.replace("name: x", "name: /abs/path"), "name '/abs/path' must be a plain name"),
        (VALID.replace("name: x", "name: ../../x"), "name '../../x' must be a plain name"),
        (
            VALID.replace("variants: {bt: {}}", "variants: {bt: {}, ../../../x: {}}"),
            "variant '../../../x' must be a plain name",
        ),
        (
            VALID + "common: {output_dir: /tmp/elsewhere}\n",
            "common sets \\['output_dir'\\], which the runner sets",
        ),
    ],
)
def test_a_malformed_or_hostile_experiment_file_is_one_error_naming_it(tmp_path, text, message):
    path = tmp_path / "e.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as refused:
        load_experiment(str(path))
    assert str(refused.value).startswith(str(path)) and "\n" not in str(refused.value)
    assert sorted(os.listdir(tmp_path)) == ["e.yaml"]  # nothing written, nowhere


@pytest.mark.slow
def test_a_real_experiment_trains_scores_and_reports(tmp_path, llama_backbone_dir, write_pairs):
    """Two variants on a tiny backbone trained through `VRMTrainer`; models are deleted once scored."""
    rows = [
        {
            "prompt": f"question {i}?",
            "chosen": "good answer",
            "rejected": "bad",
            "help_chosen": 2,
            "help_rejected": i % 3,
            "tone_chosen": i % 2,
            "tone_rejected": 1,
            "subset": "main" if i % 4 else "other",
        }
        for i in range(12)
    ]
    for name in ("train", "val", "test"):
        write_pairs(str(tmp_path / f"{name}.jsonl"), rows)
    config = {
        "name": "tiny",
        "backbone": llama_backbone_dir,
        "data_dir": str(tmp_path),
        "train": "train.jsonl",
        "validation": "val.jsonl",
        "test": {"test": "test.jsonl"},
        "eval_subsets": ["main"],
        "common": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64, "feature_dim": 4},
        "grid": {"learning_rate": [0.001]},
        "seeds": [0],
        "baseline": "bt",
        "variants": {
            "bt": {"head_type": "bt"},
            "vrm_rw": {
                "head_type": "vrm",
                "num_objectives": 2,
                "attribute_names": ["help", "tone"],
                "rating_weight_coef": 1.0,
            },
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    results_dir, work_dir = tmp_path / "results", tmp_path / "work"
    argv = [str(path), "--results_dir", str(results_dir), "--work_dir", str(work_dir)]
    assert main(argv) == 0  # `python -m benchmarks.studies.experiment CONFIG`
    report = json.loads((results_dir / "report.json").read_text())
    entry = report["variants"]["vrm_rw"]["sets"]["test"]
    assert 0 <= entry["accuracy_mean"] <= 1 and entry["weight_spread_mean"] is not None
    run = json.loads(next((results_dir / "runs").glob("vrm_rw-*.json")).read_text())
    assert run["sets"]["test"]["pairs"] == 9  # the 3 pairs of subset "other" are not scored
    assert not os.listdir(work_dir / "models")
    assert main([*argv, "--report_only"]) == 0
    markdown = (results_dir / "report.md").read_text()
    assert "vrm_rw - bt" in markdown
    # the rows that fed each auxiliary term travel from train_results.json into the run file and the report
    rows_fed = {"rows": 12, "objective_labels": 0, "attribute_ratings": 10, "ratings_to_weights": 10}
    assert run["auxiliary_terms"] == rows_fed
    assert report["variants"]["vrm_rw"]["auxiliary_terms"] == rows_fed
    assert report["variants"]["bt"]["auxiliary_terms"] is None
    assert "vrm_rw 0 / 10 / 10 of 12" in markdown


def test_the_report_has_no_empty_paragraphs_and_says_what_its_columns_are(tmp_path):
    config = _config(notes="")
    run_experiment(config, str(tmp_path), "", runner=_fake_runner([]))
    markdown = report_markdown(build_report(config, collect(config, str(tmp_path))))
    assert "\n\n\n" not in markdown
    prose = [line for line in markdown.splitlines() if line and not line.startswith(("#", "|"))]
    assert all(line.endswith((".", ":")) for line in prose), prose
    assert any(" are measured on `test`" in line for line in prose)


def test_results_go_to_a_run_directory_outside_the_committed_results_by_default(tmp_path, monkeypatch):
    config = _config()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("benchmarks.studies.experiment.load_experiment", lambda path: config)
    monkeypatch.setattr("benchmarks.studies.experiment.run_experiment", lambda *args, **kwargs: None)
    assert main(["unused.yaml", "--report_only"]) == 0
    assert (tmp_path / "runs" / "experiments" / "toy" / "report.md").exists()
    assert not (tmp_path / "benchmarks").exists()


def test_weight_error_compares_rated_objectives_renormalised():
    """Learned objective k against true objective k over the first len(truth) objectives, renormalised (the
    rest are free objectives of a larger head)."""
    truth = {"a": [0.7, 0.3], "b": [0.2, 0.8]}
    learned = {"a": [0.35, 0.15, 0.5], "b": [0.1, 0.1, 0.8]}  # a: exactly right once renormalised; b: 0.5/0.5
    assert weight_error(learned, truth) == pytest.approx((0 + 0 + 0.3 + 0.3) / 4)
    swapped = {"a": [0.3, 0.7], "b": [0.8, 0.2]}  # untied objectives are matched by the best assignment
    assert weight_error(swapped, truth, tied=False) == pytest.approx(0.0)
    assert weight_error(swapped, truth) == pytest.approx(0.5)


def test_committed_experiments_are_valid_train_arguments():
    """Every run of every committed experiment builds its trainer arguments (a removed Trainer option such as
    `warmup_ratio` once failed only when the run started)."""
    from benchmarks.studies.experiment import sweep_specs
    from benchmarks.studies.training import build_arguments

    configs = sorted(CONFIGS.glob("*.yaml"))
    assert configs
    for path in configs:
        if path.name == "realdata.yaml":  # the real-data study's plan, not an experiment
            continue
        config = load_experiment(str(path))
        for variant in config.variants:
            for spec in sweep_specs(config, variant):
                build_arguments(
                    {"model_name_or_path": "unused", "dataset_name": "unused.jsonl", **spec.options}
                )


@pytest.mark.parametrize("name", ["finegrained_qa_finetune_cpu", "encoder_layout"])
@pytest.mark.slow
def test_committed_reports_regenerate_from_their_runs(tmp_path, name):
    """`--report_only` rebuilds a committed report from its committed runs, number for number."""
    shutil.copytree(RESULTS / name / "runs", tmp_path / "runs")
    assert main([str(CONFIGS / f"{name}.yaml"), "--report_only", "--results_dir", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (RESULTS / name / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(
        (RESULTS / name / "report.json").read_text()
    )


def test_every_set_is_scored_whole_whatever_the_validation_sets_subsets(tmp_path, tiny_model, write_pairs):
    """Each set keeps all its pairs: a test set whose subsets the validation set lacks, and sets without a
    subset column at all, are scored whole (unless `eval_subsets` asks otherwise)."""
    from benchmarks.studies.experiment import score_sets

    model, tokenizer, _ = tiny_model("llama_chat", head_type="bt")
    model_dir = str(tmp_path / "model")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = [{"prompt": f"q{i}?", "chosen": "a good answer", "rejected": "no"} for i in range(8)]
    validation = write_pairs(str(tmp_path / "val.jsonl"), [{**row, "subset": "a"} for row in rows[:4]])
    test = write_pairs(str(tmp_path / "test.jsonl"), [{**row, "subset": "b"} for row in rows])
    plain = write_pairs(str(tmp_path / "plain.jsonl"), rows)
    scored = score_sets(model_dir, {"validation": validation, "test": test, "plain": plain}, None)
    assert {name: result.pairs for name, result in scored.items()} == {"validation": 4, "test": 8, "plain": 8}
    assert score_sets(model_dir, {"validation": validation}, None, subsets=["a"])["validation"].pairs == 4
    with pytest.raises(ValueError, match=r"test.jsonl: no pairs of the eval_subsets \['a'\] in the test set"):
        score_sets(model_dir, {"test": test}, None, subsets=["a"])
