"""The learning-curve study (`benchmarks.studies.learning_curves`): nested subsets, aggregation and tests on
made-up run files, the report rebuilt from run files, and one tiny run through `VRMTrainer` on cached states."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from benchmarks.studies.learning_curves import aggregate, report, runner
from benchmarks.studies.learning_curves.plan import HeadPlan, Schedule, SettingPlan, load_plan, run_spec
from benchmarks.studies.learning_curves.runner import load_runs, pack_bits, pair_metrics, unpack_bits
from benchmarks.studies.learning_curves.subsets import nested_subset, ordering
from benchmarks.studies.stats import paired_p_value

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_nested_subsets_are_nested_and_fixed_per_seed():
    sizes = [5, 20, 50, 100]
    for seed in (0, 1):
        subsets = [nested_subset(100, n, seed) for n in sizes]
        for small, large in zip(subsets, subsets[1:], strict=False):
            assert set(small) < set(large)
        assert [nested_subset(100, n, seed) for n in sizes] == subsets  # same seed, same pairs
        assert sorted(subsets[-1]) == list(range(100))
    assert nested_subset(100, 20, 0) != nested_subset(100, 20, 1)
    assert not np.array_equal(ordering(100, 0), ordering(100, 1))
    with pytest.raises(ValueError, match="outside"):
        nested_subset(10, 11, 0)


def test_packed_bits_round_trip():
    correct = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1], dtype=float)
    assert np.array_equal(unpack_bits(pack_bits(correct), correct.size), correct)


def _setting(name: str = "toy", kind: str = "synthetic") -> SettingPlan:
    return SettingPlan(
        name=name,
        kind=kind,
        sizes=[10, 40],
        seeds=[0, 1, 2],
        heads=[HeadPlan("bt", "bt", 0.03), HeadPlan("vrm", "vrm", 0.003, labels=True)],
        schedule=Schedule(epochs=1.0, min_steps=2, batch_size=4),
    )


def _write_made_up_run(root, setting, head, n, seed, train_acc, correct_iid, correct_shifted):
    spec = run_spec(setting, head, n, seed)
    rng = np.random.default_rng(seed)
    sets = {"test_iid": correct_iid, "test_shifted": correct_shifted, "test_iid_check": correct_iid[::-1]}
    metrics = {"train": {"pairs": n, "accuracy": train_acc, "ties": 0.0, "nll": 0.5, "ece": 0.1}}
    for name, correct in sets.items():
        margin = np.where(correct > 0, 1.0, -1.0) * rng.uniform(0.1, 2.0, correct.size)
        metrics[name] = pair_metrics(margin, np.zeros_like(margin), keep_pairs=True)
    _save_run(root, setting, spec, n, metrics)


def _save_run(root, setting, spec, n, metrics):
    """A run file as `runner.execute_frozen` writes it, with made-up metrics."""
    result = {
        "spec": {"name": spec.name, "seed": spec.seed, "options": spec.options},
        "key": spec.key,
        "n": n,
        "subset": "x",
        "train_seconds": 1.0,
        "eval_seconds": 0.1,
        "metrics": metrics,
    }
    path = runner.run_path(spec, setting.name, str(root))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def _made_up_study(root) -> tuple[SettingPlan, dict]:
    """bt and vrm at two sizes, three seeds: known train accuracies and per-pair correctness."""
    setting = _setting()
    rng = np.random.default_rng(7)
    truth = {}
    for n in (10, 40):
        for seed in range(3):
            bt = (rng.random(60) < 0.6).astype(float)
            vrm = (rng.random(60) < 0.7).astype(float)
            shifted = (rng.random(30) < 0.5).astype(float)
            _write_made_up_run(root, setting, setting.heads[0], n, seed, 0.95, bt, shifted)
            _write_made_up_run(root, setting, setting.heads[1], n, seed, 0.85 + 0.01 * seed, vrm, shifted)
            truth[("bt", n, seed)] = (0.95, bt)
            truth[("vrm", n, seed)] = (0.85 + 0.01 * seed, vrm)
    return setting, truth


def test_aggregation_computes_the_gap_and_the_paired_tests(tmp_path):
    setting, truth = _made_up_study(tmp_path)
    runs = load_runs(setting.name, str(tmp_path))
    assert len(runs) == 12
    table = aggregate.curve_table(runs, "test_iid", ["test_iid", "test_shifted"])
    for head in ("bt", "vrm"):
        for n in (10, 40):
            gaps = [truth[(head, n, s)][0] - truth[(head, n, s)][1].mean() for s in range(3)]
            row = table[head][str(n)]
            assert row["gap"]["mean"] == pytest.approx(np.mean(gaps))
            assert row["gap"]["std"] == pytest.approx(np.std(gaps, ddof=1))
            assert row["seeds"] == [0, 1, 2]
            assert "test_shifted_accuracy" in row
    tests = aggregate.paired_tests(runs, "test_iid", ["test_iid", "test_shifted"])
    entry = tests["vrm"]["40"]
    gap_diffs = [
        (truth[("vrm", 40, s)][0] - truth[("vrm", 40, s)][1].mean())
        - (truth[("bt", 40, s)][0] - truth[("bt", 40, s)][1].mean())
        for s in range(3)
    ]
    assert entry["gap_difference"] == pytest.approx(np.mean(gap_diffs))
    # three seeds, all differences of one sign: the exact sign-flip p is 2 / 2^3
    assert all(d < 0 for d in gap_diffs)
    assert entry["gap_sign_flip_p"] == pytest.approx(0.25)
    vrm = np.mean([truth[("vrm", 40, s)][1] for s in range(3)], 0)
    bt = np.mean([truth[("bt", 40, s)][1] for s in range(3)], 0)
    assert entry["test_iid"]["accuracy_difference"] == pytest.approx(vrm.mean() - bt.mean())
    assert entry["test_iid"]["p_value"] == pytest.approx(
        paired_p_value(vrm, bt, resamples=aggregate.PERMUTATIONS)
    )
    assert entry["test_shifted"]["accuracy_difference"] == pytest.approx(0.0)  # same shifted pairs


def test_clopper_pearson_bound_is_exact_binomial_tail_and_above_hoeffding_free_estimate():
    from scipy.stats import binom

    upper = aggregate.clopper_pearson_upper(30, 200, 0.05)
    assert binom.cdf(30, 200, upper) == pytest.approx(0.05, abs=1e-6)  # P(X <= 30 | p = upper) = delta
    assert 30 / 200 < upper < aggregate.hoeffding_upper(30, 200, 0.05)
    assert aggregate.clopper_pearson_upper(200, 200) == 1.0


def test_report_regenerates_from_run_files(tmp_path):
    setting, _ = _made_up_study(tmp_path / "runs")
    from benchmarks.studies.learning_curves.plan import StudyPlan

    plan = StudyPlan(settings=[setting, _setting("not_run")])
    written = report.write_report(plan, "toy.yaml", "python -m x", 0.0, str(tmp_path / "runs"), str(tmp_path))
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["learning_curves.json", "learning_curves.md", "learning_curves_toy.png"]
    found = json.loads((tmp_path / "learning_curves.json").read_text())
    assert list(found["settings"]) == ["toy"]  # a setting without run files is left out
    assert found["settings"]["toy"]["runs"] == 12
    assert "vrm" in found["settings"]["toy"]["paired_tests_vs_bt"]
    text = (tmp_path / "learning_curves.md").read_text()
    assert "## toy (synthetic)" in text and "Clopper" in text
    first = (tmp_path / "learning_curves.json").read_text()
    report.write_report(plan, "toy.yaml", "python -m x", 0.0, str(tmp_path / "runs"), str(tmp_path))
    again = json.loads((tmp_path / "learning_curves.json").read_text())
    again["wall_seconds_of_this_invocation"] = found["wall_seconds_of_this_invocation"]
    assert again == json.loads(first)


def test_a_realdata_run_key_names_its_training_pool():
    from benchmarks.studies.learning_curves.plan import REALDATA_POOL

    head = HeadPlan("bt", "bt", 0.03)
    realdata = run_spec(_setting("real", kind="realdata"), head, 10, 0)
    assert realdata.options["pool"] == REALDATA_POOL
    finetune = run_spec(_setting("real", kind="realdata_finetune"), head, 10, 0)
    assert finetune.options["pool"] == "ft_train[:1000]"
    without_pool = {k: v for k, v in realdata.options.items() if k != "pool"}
    assert realdata.key != type(realdata)(realdata.name, realdata.seed, without_pool).key


def test_committed_plan_reads_and_a_bad_field_names_the_file(tmp_path):
    plan = load_plan(
        os.path.join(REPOSITORY, "benchmarks", "experiments", "learning_curves", "frozen_and_finetune.yaml")
    )
    assert {s.kind for s in plan.settings} == {"realdata", "synthetic", "realdata_finetune"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"settings": [{"name": "x", "kind": "nope", "sizes": [10], "seeds": [0], "heads": []}]}
        )
    )
    with pytest.raises(ValueError, match="bad.yaml.*kind"):
        load_plan(str(bad))


def test_a_frozen_run_trains_through_vrm_trainer_on_cached_states(tmp_path, bert_backbone_dir, write_pairs):
    from benchmarks.studies.learning_curves.states import SettingStates, tokenize_and_embed

    data = write_pairs(str(tmp_path / "pairs.jsonl"))
    found = tokenize_and_embed(
        bert_backbone_dir, {"train": data, "test_iid": data}, str(tmp_path / "cache"), 64, 32, [], None
    )
    states = SettingStates(found["train"], {"test_iid": found["test_iid"]}, [], None, bert_backbone_dir)
    setting = SettingPlan(
        name="tiny",
        kind="synthetic",
        sizes=[4, "all"],
        seeds=[0],
        heads=[HeadPlan("bt", "bt", 0.03)],
        schedule=Schedule(epochs=1.0, min_steps=2, batch_size=2),
    )
    path = runner.execute_frozen(setting, setting.heads[0], 4, 0, states, str(tmp_path / "runs"))
    run = runner.read_run(path)
    assert run.n == 4 and run.metrics["train"]["pairs"] == 4
    assert run.metrics["test_iid"]["pairs"] == len(found["test_iid"])
    assert run.spec.options["steps"] == 2
    mtime = os.path.getmtime(path)
    assert runner.execute_frozen(setting, setting.heads[0], 4, 0, states, str(tmp_path / "runs")) == path
    assert os.path.getmtime(path) == mtime  # a finished run is not trained again


def test_a_single_seed_has_no_gap_test_but_keeps_the_per_pair_test(tmp_path):
    setting, _ = _made_up_study(tmp_path)
    runs = [r for r in load_runs(setting.name, str(tmp_path)) if r.spec.seed == 0]
    entry = aggregate.paired_tests(runs, "test_iid", ["test_iid"])["vrm"]["10"]
    assert entry["seeds"] == [0] and entry["gap_sign_flip_p"] is None and entry["gap_ttest_p"] is None
    assert 0.0 <= entry["test_iid"]["p_value"] <= 1.0


def test_rm_bench_rows_become_nine_pairs_whose_subset_accuracies_are_rm_bench_scores(tmp_path, monkeypatch):
    from benchmarks.studies.learning_curves import states
    from vrm.evaluation.benchmark_rules import rm_bench_scores

    monkeypatch.setattr(states, "WORK", str(tmp_path / "work"))
    # sorted by domain as the study's file is: 6 chat rows then 2 code rows
    rows = [
        {
            "prompt": f"q{k}",
            "chosen": [f"c{k}{i}" for i in range(3)],
            "rejected": [f"r{k}{j}" for j in range(3)],
            "subset": "chat" if k < 6 else "code",
        }
        for k in range(8)
    ]
    source = tmp_path / "rm_bench.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = states.rm_bench_pairs_file(str(source), prompts=4)
    assert states.rm_bench_pairs_file(str(source), prompts=4) == path  # written once
    with open(path) as handle:
        pairs = [json.loads(line) for line in handle]
    assert len(pairs) == 36  # 4 prompts, 9 pairs each
    prompts = [p["prompt"] for p in pairs[::9]]
    assert (
        sum(int(p[1:]) < 6 for p in prompts) == 3 and sum(int(p[1:]) >= 6 for p in prompts) == 1
    )  # 6:2 -> 3:1
    assert prompts == sorted(prompts, key=lambda p: int(p[1:]))  # file order kept
    first = prompts[0]
    assert pairs[1] == {
        "prompt": first,
        "chosen": f"c{first[1:]}0",
        "rejected": f"r{first[1:]}1",
        "subset": "hard",
    }
    assert [p["subset"] for p in pairs[:9]].count("hard") == 3
    outcomes = np.random.default_rng(0).random((4, 3, 3)) < 0.5  # [prompt, chosen i, rejected j]
    margin = np.where(outcomes.reshape(-1), 1.0, -1.0)
    found = pair_metrics(margin, np.zeros(36), True, [p["subset"] for p in pairs], [9] * 4)
    expected = rm_bench_scores(outcomes)
    for subset in ("easy", "normal", "hard"):
        assert found["subset_accuracy"][subset] == pytest.approx(expected[subset])
    assert found["accuracy"] == pytest.approx(expected["average"])
    with pytest.raises(ValueError, match="group sizes add up to 27, not the 36 pairs"):
        pair_metrics(margin, np.zeros(36), True, None, [9, 9, 9])


def test_grouped_pairs_are_tested_per_prompt_not_per_pair(tmp_path):
    setting = _setting("grouped")
    rng = np.random.default_rng(3)
    sizes = [9] * 20
    correct = {}
    for head in setting.heads:
        for seed in range(3):
            spec = run_spec(setting, head, 10, seed)
            bits = (rng.random(180) < (0.7 if head.name == "vrm" else 0.5)).astype(float)
            correct[(head.name, seed)] = bits
            metrics = {"train": {"pairs": 10, "accuracy": 0.9, "ties": 0.0, "nll": 0.5, "ece": 0.1}}
            for name in ("test_iid", "rm_bench"):
                margin = np.where(bits > 0, 1.0, -1.0)
                metrics[name] = pair_metrics(
                    margin, np.zeros(180), True, group_sizes=sizes if name == "rm_bench" else None
                )
            _save_run(tmp_path, setting, spec, 10, metrics)
    runs = load_runs(setting.name, str(tmp_path))
    entry = aggregate.paired_tests(runs, "test_iid", ["test_iid", "rm_bench"])["vrm"]["10"]
    vrm = np.mean([correct[("vrm", s)] for s in range(3)], 0)
    bt = np.mean([correct[("bt", s)] for s in range(3)], 0)
    per_prompt = paired_p_value(
        vrm.reshape(20, 9).mean(1), bt.reshape(20, 9).mean(1), resamples=aggregate.PERMUTATIONS
    )
    assert entry["rm_bench"]["p_value"] == pytest.approx(per_prompt)
    assert entry["rm_bench"]["tested_units"] == "20 prompts" and entry["rm_bench"]["pairs"] == 180
    assert entry["test_iid"]["p_value"] == pytest.approx(
        paired_p_value(vrm, bt, resamples=aggregate.PERMUTATIONS)
    )
    assert entry["rm_bench"]["accuracy_difference"] == pytest.approx(entry["test_iid"]["accuracy_difference"])
    hard = aggregate.paired_tests(
        runs, "test_iid", ["rm_bench"], parts={"rm_bench_hard": ("rm_bench", (1, 2, 5))}
    )["vrm"]["10"]["rm_bench_hard"]
    vrm_hard, bt_hard = (side.reshape(20, 9)[:, [1, 2, 5]].mean(1) for side in (vrm, bt))
    assert hard["accuracy_difference"] == pytest.approx(vrm_hard.mean() - bt_hard.mean())
    assert hard["p_value"] == pytest.approx(
        paired_p_value(vrm_hard, bt_hard, resamples=aggregate.PERMUTATIONS)
    )
    assert hard["pairs"] == 60 and hard["tested_units"] == "20 prompts"
