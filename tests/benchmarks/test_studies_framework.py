"""The shared parts of the study framework (`benchmarks/studies`): run specs and YAML configs, statistics, the
report writer, training options and backbone names."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import pytest
import yaml

from benchmarks.studies.backbones import backbone_label, backbone_path
from benchmarks.studies.report import fmt, markdown_table, write_report
from benchmarks.studies.spec import RunSpec, grid_points, read_yaml_config, run_key
from benchmarks.studies.stats import mean_std, pair_correctness, paired_p_value, sample_std
from benchmarks.studies.training import build_arguments, run_options


def test_run_key_is_name_seed_and_a_hash_of_the_options():
    options = {"head_type": "vrm", "learning_rate": 0.01}
    digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]
    spec = RunSpec("vrm_rw", 2, options)
    assert spec.key == f"vrm_rw-s2-{digest}" == run_key("vrm_rw", 2, dict(reversed(options.items())))
    assert spec.with_seed(0).key == f"vrm_rw-s0-{digest}"  # the seed is not hashed: a run's seeds share it
    assert RunSpec("vrm_rw", 2, {**options, "learning_rate": 0.03}).key != spec.key


def test_grid_points_vary_the_first_key_slowest():
    assert grid_points({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}
    ]  # fmt: skip
    assert grid_points({}) == [{}]


@dataclass
class _Config:
    name: str
    seeds: list[int] = field(default_factory=lambda: [0])


def test_yaml_configs_name_the_file_and_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "seeds": [1, 2]}))
    assert read_yaml_config(str(path), _Config, "study") == _Config("x", [1, 2])
    path.write_text(yaml.safe_dump({"name": "x", "colour": "red"}))
    with pytest.raises(ValueError, match=r"c.yaml: unknown fields \['colour'\]"):
        read_yaml_config(str(path), _Config, "study")
    path.write_text(yaml.safe_dump({"seeds": [0]}))
    with pytest.raises(ValueError, match="c.yaml: .*name"):
        read_yaml_config(str(path), _Config, "study")
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping of study fields"):
        read_yaml_config(str(path), _Config, "study")


def test_paired_p_value_is_the_exact_sign_flip_test():
    # four pairs all won by a: of the 16 sign flips, only "all +" and "all -" reach |mean| = 1 -> p = 2/16
    assert paired_p_value([1, 1, 1, 1], [0, 0, 0, 0]) == pytest.approx(0.125)
    assert paired_p_value([1, 0, 1], [1, 0, 1]) == 1.0
    assert paired_p_value([1] * 40, [0] * 40) < 1e-3


def test_mean_std_leaves_out_missing_values():
    assert mean_std([1.0, None, float("nan")]) == {"mean": 1.0, "std": 0.0, "n": 1}
    stat = mean_std([1, 2, 4])
    assert (
        stat["mean"] == pytest.approx(7 / 3)
        and stat["std"] == pytest.approx(math.sqrt(7 / 3))
        and stat["n"] == 3
    )
    empty = mean_std([None])
    assert math.isnan(empty["mean"]) and empty["n"] == 0
    assert sample_std([3.0]) == 0.0
    assert pair_correctness([1.0, 0.0, 2.0], [0.0, 1.0, 2.0]).tolist() == [1.0, 0.0, 0.5]


def test_report_writer(tmp_path):
    assert fmt({"mean": 0.51234, "std": 0.0211, "n": 3}) == "0.512 ± 0.021"
    assert fmt({"mean": 1.0, "std": 0.0, "n": 1}, 1) == "1.0 ± 0.0"
    assert fmt({"mean": math.nan, "std": math.nan, "n": 0}) == "—" and fmt(None) == "—"
    table = markdown_table(["model", "a|b", "acc"], [["bt", "x", "0.5"]], left=2)
    assert table == ["| model | a\\|b | acc |", "| :--- | :--- | ---: |", "| bt | x | 0.5 |"]
    write_report({"value": 1.5}, "# title\n", str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == {"value": 1.5}
    assert (tmp_path / "out" / "report.md").read_text() == "# title\n"


def test_training_options_become_the_trainer_arguments(llama_backbone_dir):
    model, data, training = build_arguments(
        {
            "model_name_or_path": llama_backbone_dir,
            "dataset_name": "pairs.jsonl",
            "head_type": "vrm",
            "num_objectives": 2,
            "max_length": 64,
            "learning_rate": "1e-3",  # YAML 1.1 reads 1e-3 as text
            "max_train_samples": 5,
            "output_dir": "out",
        }
    )
    assert model.head_type == "vrm" and model.num_objectives == 2
    assert data.dataset_name == ["pairs.jsonl"] and data.max_train_samples == 5
    assert training.max_length == 64 and training.learning_rate == 1e-3
    with pytest.raises(ValueError, match=r"unknown arguments \['colour'\]"):
        build_arguments({"model_name_or_path": llama_backbone_dir, "colour": "red"})
    with pytest.raises(ValueError, match="head_type"):
        build_arguments({"model_name_or_path": llama_backbone_dir, "head_type": "nonsense"})
    options = run_options(RunSpec("bt", 3, {"freeze_backbone": True}), "/b", "t.jsonl", "out", "cache")
    assert (
        options["seed"] == 3
        and options["embedding_cache"] == "cache"
        and options["dataset_name"] == ["t.jsonl"]
    )
    assert "embedding_cache" not in run_options(RunSpec("bt", 3, {}), "/b", "t.jsonl", "out", "cache")


def test_backbone_names():
    assert backbone_path("/models/tiny") == "/models/tiny" and backbone_path("org/model") == "org/model"
    assert backbone_label("Qwen/Qwen2.5-0.5B/") == "Qwen--Qwen2.5-0.5B"
