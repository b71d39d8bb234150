"""The over-optimization study (`benchmarks.studies.overoptimization`): the best-of-n gold estimator, lambda
selection, ensembles, error detection, the cache assembly of bootstrap resamples, the report from run files, and
the study end to end on a tiny backbone."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks.studies.overoptimization.report import build_report, plot_report, pool_record, report_markdown
from benchmarks.studies.overoptimization.runner import (
    RunScores,
    StudyConfig,
    StudyData,
    assemble_cached_states,
    bootstrap_file,
    load_study,
    run_specs,
    run_study,
    training_tokens,
)
from benchmarks.studies.overoptimization.selection import (
    PairScores,
    PoolScores,
    ensemble_pairs,
    ensemble_pool,
    gold_curve,
    select_lambda,
    split_prompts,
    std_spread,
    uncertainty_aurocs,
)
from vrm.evaluation.metrics import kl_bon


def brute_force_best_of_n(score, gold, n):
    """Mean over every n-subset of the gold of its highest-scoring candidate."""
    values = [
        gold[max(subset, key=lambda i: score[i])] for subset in itertools.combinations(range(len(gold)), n)
    ]
    return float(np.mean(values))


def test_gold_curve_equals_enumeration_of_all_subsets_plain_and_conservative():
    rng = np.random.default_rng(0)
    reward = [rng.normal(size=6), rng.normal(size=5)]
    std = [rng.uniform(0.1, 1, size=6), rng.uniform(0.1, 1, size=5)]
    gold = [rng.normal(size=6), rng.normal(size=5)]
    scores = PoolScores(reward, std)
    for lam in (0.0, 1.5):
        curve = gold_curve(scores, gold, [1, 2, 3, 5, 6], lam)
        for point in curve:
            expected = [
                brute_force_best_of_n(reward[i] - lam * std[i], gold[i], point["n"])
                for i in range(2)
                if len(gold[i]) >= point["n"]
            ]
            assert point["gold"] == pytest.approx(np.mean(expected), abs=1e-12)
            assert point["prompts"] == len(expected)
    assert curve[-1]["prompts"] == 1  # the 5-candidate prompt has no best-of-6


def test_kl_bon_formula():
    assert kl_bon(1) == 0.0
    assert kl_bon(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_bon(64) == pytest.approx(math.log(64) - 63 / 64)


def test_select_lambda_picks_the_lambda_that_undoes_the_uncertain_bonus():
    # the proxy adds 1.5 sigma to the gold: only lambda = 2 of the grid ranks the four candidates as the gold does
    # (lambda 0 / 0.5 / 1 leave the sigma = 2 candidate too high, lambda 4 ties the two best)
    gold = [np.array([0.0, 1.0, 2.0, 3.0])] * 3
    std = [np.array([2.0, 0.0, 0.0, 0.4])] * 3
    scores = PoolScores([g + 1.5 * s for g, s in zip(gold, std, strict=True)], std)
    assert select_lambda(scores, gold, [0, 0.5, 1, 2, 4], [2, 3], [0, 1, 2]) == 2
    assert select_lambda(PoolScores(scores.reward, None), gold, [0, 0.5, 1, 2, 4], [2, 3], [0, 1]) == 0.0


def test_ensemble_mean_and_member_std():
    members = [PoolScores([np.array([1.0, 2.0])], None), PoolScores([np.array([3.0, 2.0])], None)]
    pooled = ensemble_pool(members)
    assert pooled.reward[0].tolist() == [2.0, 2.0]
    assert pooled.std[0].tolist() == pytest.approx([math.sqrt(2), 0.0])
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble_pool(members[:1])


def test_member_disagreement_detects_the_wrong_pairs():
    # pairs 0-2 right for every member; pairs 3-4 wrong on average, members disagree there
    right = PairScores(np.array([1.0, 1, 1, 0, 0]), np.array([0.0, 0, 0, 0.5, 0.5]))
    other = PairScores(np.array([1.1, 1, 0.9, 2, -2]), np.array([0.0, 0, 0, 0.5, 0.5]))
    third = PairScores(np.array([0.9, 1, 1.1, -2, 2]), np.array([0.0, 0, 0, 0.5, 0.5]))
    pairs = ensemble_pairs([right, other, third])
    aurocs = uncertainty_aurocs(pairs)
    assert aurocs["member_margin_std"] == 1.0
    assert set(aurocs) == {"margin", "std", "flip", "member_margin_std"}


def test_std_spread_of_a_constant_sigma():
    pairs = PairScores(np.array([1.0, 2.0]), np.array([0.0, 0.5]), np.full(2, 0.7), np.full(2, 0.7))
    spread = std_spread(pairs)
    assert spread["cv"] == 0.0 and spread["mean"] == pytest.approx(0.7)
    assert math.isnan(spread["corr_abs_margin"])
    assert std_spread(PairScores(np.ones(2), np.zeros(2))) is None


def test_split_prompts_is_a_fixed_partition():
    validation, test = split_prompts(10, 0.5, seed=0)
    assert sorted(validation + test) == list(range(10)) and len(validation) == 5
    assert split_prompts(10, 0.5, seed=0) == (validation, test)


def fixture_config(**extra) -> StudyConfig:
    return StudyConfig(
        name="tiny",
        backbone="minilm",
        data={"kind": "synthetic"},
        proxies={"bt": {"head_type": "bt"}, "vrm": {"head_type": "vrm"}},
        ensembles={"bt-ensemble": "bt"},
        ensemble_members=2,
        seeds=[0, 1],
        lambdas=[0.0, 2.0],
        ns=[1, 2, 4],
        **extra,
    )


def fixture_run(
    name: str, reward, std, chosen=(1.0, 0.0), rejected=(0.0, 1.0), std_pairs=(0.0, 0.0)
) -> RunScores:
    return RunScores(name, {}, reward, std, list(chosen), list(rejected), list(std_pairs), list(std_pairs))


def test_report_builder_on_fixture_runs(tmp_path):
    # 4 prompts x 4 candidates, gold 0..3; vrm's reward overrates the high-sigma worst candidate, bt ranks by gold
    gold = [0.0, 1.0, 2.0, 3.0]
    pool = [{"prompt": f"p{i}", "responses": list("abcd"), "gold_scores": gold} for i in range(4)]
    vrm_reward, vrm_std = [[4.0, 1.0, 2.0, 3.0]] * 4, [[1.0, 0.1, 0.1, 0.1]] * 4
    runs = {}
    for seed in (0, 1):
        runs[f"bt-s{seed}"] = fixture_run(f"bt-s{seed}", [gold] * 4, [[0.0] * 4] * 4)
        runs[f"vrm-s{seed}"] = fixture_run(f"vrm-s{seed}", vrm_reward, vrm_std, std_pairs=(0.2, 0.9))
        for m in (0, 1):
            runs[f"bt-boot-s{seed}-m{m}"] = fixture_run(f"m{m}", [[g + m for g in gold]] * 4, [[0.0] * 4] * 4)
    report = build_report(fixture_config(), runs, pool_record(pool), {"command": "test", "notes": ""})
    vrm = report["proxies"]["vrm"]["summary"]
    assert vrm["lambdas"] == [2.0, 2.0]
    assert vrm["plain"][-1]["mean"] == 0.0  # best of all 4 by r: the gold-0 candidate
    assert vrm["conservative"][-1]["mean"] == 3.0 and vrm["gain_at_max_n"]["mean"] == 3.0
    bt = report["proxies"]["bt"]["summary"]
    assert not bt["has_std"] and bt["plain"][-1]["mean"] == 3.0 and bt["lambdas"] == [0.0, 0.0]
    assert bt["accuracy"]["mean"] == 0.5 and set(bt["auroc"]) == {"margin"}
    ensemble = report["proxies"]["bt-ensemble"]["summary"]
    assert ensemble["plain"][-1]["mean"] == 3.0 and "member_margin_std" in ensemble["auroc"]
    assert report["oracle_gold"][-1] == 3.0 and report["ns"] == [1, 2, 4]
    markdown = report_markdown(report)
    assert "| vrm | 2, 2 |" in markdown and "| bt-ensemble |" in markdown and "cv of σ" in markdown
    png = plot_report(report, str(tmp_path / "curve.png"))
    assert os.path.getsize(png) > 1000
    # a proxy with a missing seed is averaged over the seeds it has; one with no run at all is left out
    del runs["vrm-s1"], runs["bt-boot-s0-m1"]
    partial = build_report(fixture_config(), runs, pool_record(pool), {"command": "test"})
    assert partial["proxies"]["vrm"]["summary"]["seeds"] == [0]
    assert partial["proxies"]["bt-ensemble"]["summary"]["seeds"] == [1]


def test_run_study_resumes_from_run_files(tmp_path):
    config = fixture_config()
    calls = []

    def runner(spec, config, data, work_dir):
        calls.append(spec.name)
        return fixture_run(spec.name, [[0.0, 1.0]], [[0.0, 0.0]])

    data = StudyData("train", "test", "pool")
    run_study(config, data, str(tmp_path), str(tmp_path / "work"), runner=runner)
    assert len(calls) == len(run_specs(config)) == 2 * 2 + 2 * 2
    assert "bt-boot-s1-m1" in calls
    run_study(config, data, str(tmp_path), str(tmp_path / "work"), runner=runner)
    assert len(calls) == 8  # nothing retrained


def test_load_study_names_the_bad_field(tmp_path):
    path = tmp_path / "study.yaml"
    values = {"name": "x", "backbone": "minilm", "data": {"kind": "synthetic"}, "proxies": {"bt": {}}}
    path.write_text(yaml.safe_dump({**values, "ensembles": {"e": "vrm"}}))
    with pytest.raises(ValueError, match=r"study.yaml: ensembles.e: 'vrm' is not one of the proxies"):
        load_study(str(path))
    path.write_text(yaml.safe_dump({**values, "lambda": [1]}))
    with pytest.raises(ValueError, match=r"unknown fields \['lambda'\]"):
        load_study(str(path))
    path.write_text(yaml.safe_dump({**values, "data": {"kind": "csv"}}))
    with pytest.raises(ValueError, match="data.kind"):
        load_study(str(path))


def test_bootstrap_resample_reuses_the_cached_states(tmp_path, llama_backbone_dir, write_pairs):
    from vrm.data.state_cache import EmbeddingCache

    source = write_pairs(str(tmp_path / "pairs.jsonl"))
    resample = str(tmp_path / "boot.jsonl")
    bootstrap_file(source, resample, seed=3)
    with open(source) as a, open(resample) as b:
        source_rows, resample_rows = a.readlines(), b.readlines()
    assert len(resample_rows) == len(source_rows) and set(resample_rows) <= set(source_rows)
    options = {
        "model_name_or_path": llama_backbone_dir,
        "freeze_backbone": True,
        "output_dir": str(tmp_path / "m"),
    }
    cache_dir = str(tmp_path / "cache")
    assert assemble_cached_states(options, source, resample, cache_dir) == 2 * len(resample_rows)
    model, sequences, lengths, pad = training_tokens(options, resample)
    cache = EmbeddingCache(cache_dir, progress=False)
    prompt, response = cache.states(model, sequences, lengths, pad)
    assert cache.computed == 0  # read from the assembled entry
    from vrm.data.state_cache import compute_states

    expected_prompt, expected_response = compute_states(model, sequences, lengths, pad)
    assert torch.allclose(response, expected_response, atol=1e-5)
    assert torch.allclose(prompt, expected_prompt, atol=1e-5)


@pytest.mark.slow
def test_study_end_to_end_on_a_tiny_backbone(tmp_path, llama_backbone_dir, capsys):
    from benchmarks.studies.overoptimization.__main__ import main
    from vrm.data.synthetic import WorldConfig, write_world

    world = str(tmp_path / "world")
    write_world(world, WorldConfig(train_pairs=24, test_pairs=12, pool_prompts=4, pool_candidates=4))
    config = {
        "name": "tiny",
        "backbone": llama_backbone_dir,
        "data": {
            "kind": "synthetic",
            "world_dir": world,
            "pool_prompts": 4,
            "pool_candidates": 4,
            "pool_seed": 1,
        },
        "common": {"freeze_backbone": True, "max_steps": 2, "per_device_train_batch_size": 8},
        "proxies": {"vrm": {"head_type": "vrm", "num_objectives": 2}},
        "ensembles": {"vrm-ensemble": "vrm"},
        "ensemble_members": 2,
        "seeds": [0],
        "ns": [1, 2, 4],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    results = str(tmp_path / "results")
    assert main([str(path), "--results_dir", results, "--work_dir", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    assert "vrm-boot-s0-m1" in printed
    assert printed.count("embedding 48 of 48") == 1  # the bootstrap members read assembled states
    with open(os.path.join(results, "report.json")) as handle:
        report = json.load(handle)
    assert set(report["proxies"]) == {"vrm", "vrm-ensemble"}
    assert report["proxies"]["vrm"]["summary"]["has_std"]
    assert "member_margin_std" in report["proxies"]["vrm-ensemble"]["summary"]["auroc"]
    assert len(report["proxies"]["vrm"]["summary"]["plain"]) == 3
    assert os.path.exists(os.path.join(results, "gold_vs_kl.png"))
    assert not os.listdir(os.path.join(tmp_path, "work", "models", "tiny"))  # models deleted once scored
    # the report is rebuilt from the results directory alone (runs/ and pool.json), the numbers unchanged
    shutil.rmtree(tmp_path / "work")
    assert (
        main([str(path), "--results_dir", results, "--work_dir", str(tmp_path / "gone"), "--report_only"])
        == 0
    )
    with open(os.path.join(results, "report.json")) as handle:
        again = json.load(handle)
    assert again["proxies"] == report["proxies"] and not (tmp_path / "gone").exists()


def test_committed_studies_are_valid_train_arguments(monkeypatch):
    """Every run (and the gold) of every committed study config builds its trainer arguments."""
    import benchmarks.studies.training

    # the backbone is only named here: no need for the MiniLM package the studies run on (not a dev extra)
    monkeypatch.setattr(benchmarks.studies.training, "backbone_path", lambda name: f"/backbones/{name}")
    from benchmarks.studies.training import build_arguments, run_options

    configs = sorted(
        (Path(__file__).parents[2] / "benchmarks" / "experiments" / "overoptimization").glob("*.yaml")
    )
    assert len(configs) == 4
    for path in configs:
        config = load_study(str(path))
        specs = [config.spec(run.proxy, run.seed) for run in run_specs(config)] + [config.spec("gold", 0)]
        for spec in specs:
            options = run_options(spec, config.backbone, "unused.jsonl", "out", "cache")
            if not torch.cuda.is_available():  # transformers refuses bf16 without the hardware for it
                options.pop("bf16", None)
            build_arguments(options)


@pytest.mark.slow
def test_committed_synthetic_report_regenerates_from_its_runs(tmp_path):
    """`--report_only` rebuilds the committed synthetic report from its runs/ and pool.json, number for number
    (the command line and the table alignment rows aside)."""
    from benchmarks.studies.overoptimization.__main__ import main

    committed = (
        Path(__file__).parents[2]
        / "benchmarks"
        / "results"
        / "overoptimization"
        / "overoptimization_synthetic"
    )
    shutil.copytree(committed / "runs", tmp_path / "runs")
    shutil.copy(committed / "pool.json", tmp_path / "pool.json")
    config = Path(__file__).parents[2] / "benchmarks" / "experiments" / "overoptimization" / "synthetic.yaml"
    assert (
        main(
            [str(config), "--report_only", "--results_dir", str(tmp_path), "--work_dir", str(tmp_path / "w")]
        )
        == 0
    )

    def numbers(path: Path) -> list[str]:
        lines = path.read_text().splitlines()[3:]  # below the command line
        return [line.replace(" ", "") for line in lines if not set(line) <= set("|-: ")]

    assert numbers(tmp_path / "report.md") == numbers(committed / "report.md")
    new, old = (json.loads(p.read_text()) for p in (tmp_path / "report.json", committed / "report.json"))
    for name, entry in old["proxies"].items():
        assert new["proxies"][name]["per_seed"] == entry["per_seed"]
        assert [p["mean"] for p in new["proxies"][name]["summary"]["plain"]] == [
            p["mean"] for p in entry["summary"]["plain"]
        ]
