"""Data-parallel `vrm eval` and `vrm bench bon` (`vrm.scoring.scores.score_in_shards`): under
`python -m torch.distributed.run` with two gloo processes each scores a share of the prompts and rank 0 writes the
report one process writes (scores to float rounding); a rank killed mid-run leaves no partial report and a new
launch writes the whole one; the split keeps a prompt's responses on one rank and balances the tokens."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_models import PAIRS

from vrm.scoring.data_parallel import ScoringWorld, balanced_shards
from vrm.scoring.scores import SequenceScores, score_in_shards


def launch(argv, processes, background=False):
    launcher = [sys.executable, "-m", "vrm"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        launcher += ["--standalone", "-m", "vrm"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(
            [*launcher, *argv], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    return subprocess.run([*launcher, *argv], env=environment, capture_output=True, text=True, timeout=300)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def preference_rows(count):
    return [
        {
            "prompt": PAIRS[i % 6][0] + f" #{i}",
            "chosen": PAIRS[i % 6][1] + " " * (i % 3),
            "rejected": PAIRS[i % 6][2],
            "subset": f"s{i % 3}",
        }
        for i in range(count)
    ]


def best_of_k_rows(count):
    return [
        {
            "prompt": PAIRS[i % 6][0] + f" (k{i})",
            "chosen": [PAIRS[i % 6][1]],
            "rejected": [PAIRS[(i + 1) % 6][2], PAIRS[(i + 2) % 6][2]],
            "subset": "bestofn",
        }
        for i in range(count)
    ]


def close(one, other, path="report"):
    """Equal reports: numbers to 1e-4 (another batch mix pads differently), everything else exactly."""
    if isinstance(one, dict):
        assert one.keys() == other.keys(), path
        for key in one:
            close(one[key], other[key], f"{path}.{key}")
    elif isinstance(one, list):
        assert len(one) == len(other), path
        for index, (a, b) in enumerate(zip(one, other, strict=True)):
            close(a, b, f"{path}[{index}]")
    elif isinstance(one, float) and isinstance(other, float):
        assert one == pytest.approx(other, abs=1e-4, nan_ok=True), path
    else:
        assert one == other, path


def eval_argv(model, datasets, output):
    return ["eval", "--model", model, "--dataset", *datasets, "--output", output, "--device", "cpu"]


def without_timing(report):
    return {k: v for k, v in report.items() if k not in ("seconds", "elapsed_seconds")}


# ----- the split --------------------------------------------------------------------------------------------------
def test_balanced_shards_keep_groups_whole_and_balance_their_cost():
    groups = [[0, 5], [1], [2, 3, 4], [6], [7, 8]]
    costs = [10, 1, 9, 8, 2]
    shards = balanced_shards(groups, costs, 2)
    assert sorted(i for shard in shards for i in shard) == list(range(9))  # every item once
    for group in groups:
        assert sum(set(group) <= set(shard) for shard in shards) == 1  # a group on one rank
    load = [sum(c for g, c in zip(groups, costs, strict=True) if set(g) <= set(s)) for s in shards]
    assert sorted(load) == [13, 17]  # the best split of these costs (no subset sums to 15)
    assert shards == balanced_shards(groups, costs, 2)  # every rank computes the same split
    assert balanced_shards(groups, costs, 8)[7] == []  # more ranks than groups: some score nothing


class RankZeroOfTwo:
    """Rank 0 of two in one process: `all_gather` adds what rank 1 would score, to test the assembly."""

    rank, size, distributed, is_main = 0, 2, True, True

    def __init__(self, keys, costs, score):
        self.keys, self.costs, self.score = keys, costs, score

    def all_gather(self, value):
        members = {}
        for index, key in enumerate(self.keys):
            members.setdefault(key, []).append(index)
        groups = list(members.values())
        other = balanced_shards(groups, [sum(self.costs[i] for i in g) for g in groups], 2)[1]
        return [value, (other, self.score(other) if other else None)]


def fake_scores(index):
    values = torch.tensor(index, dtype=torch.float32)
    column = values[:, None]
    return SequenceScores(
        values,
        values / 10,
        column.repeat(1, 2),
        -column.repeat(1, 2),
        values / 20,
        values / 30,
        column.repeat(1, 3),
    )


def test_sharded_scores_come_back_in_input_order_with_ensemble_fields():
    keys, costs = ["a", "b", "a", "c", "d", "b"], [5, 4, 5, 1, 2, 4]
    seen = []

    def score(index):
        seen.append(index)
        return fake_scores(index)

    result = score_in_shards(RankZeroOfTwo(keys, costs, score), keys, costs, score)
    assert sorted(i for index in seen for i in index) == list(range(6))  # each sequence scored once
    expected = fake_scores(list(range(6)))
    for name in (
        "reward",
        "reward_std",
        "objective_weights",
        "objective_scores",
        "aleatoric_std",
        "epistemic_std",
        "member_rewards",
    ):
        assert torch.equal(getattr(result, name), getattr(expected, name)), name


def test_one_process_scores_everything_itself():
    calls = []

    def score(index):
        calls.append(index)
        return SequenceScores(
            torch.zeros(len(index)),
            torch.zeros(len(index)),
            torch.ones(len(index), 1),
            torch.zeros(len(index), 1),
        )

    score_in_shards(ScoringWorld(), ["a", "a", "b"], [1, 2, 3], score)
    assert calls == [[0, 1, 2]]


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--model", "m", "--dataset", "d.jsonl"],
        ["bench", "bon", "--pool", "p.jsonl", "--proxy", "m", "--gold_column", "gold"],
    ],
)
def test_an_embedding_cache_is_refused_with_several_processes(monkeypatch, tmp_path, capsys, argv):
    from vrm.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as usage_error:
        main([*argv, "--embedding_cache", str(tmp_path / "cache")])
    assert usage_error.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--embedding_cache with 2 processes: the ranks would write the same cache files" in error


# ----- two processes against one --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_eval")
    pairs = write_jsonl(root / "pairs.jsonl", preference_rows(30))
    best_of_k = write_jsonl(root / "best_of_k.jsonl", best_of_k_rows(9))
    return root, [pairs, best_of_k]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vrm", "classifier"])
def test_two_processes_write_the_report_one_process_writes(
    tmp_path, eval_data, three_objective_model_dir, save_classifier, kind
):
    _, datasets = eval_data
    model = three_objective_model_dir if kind == "vrm" else save_classifier(tmp_path / "clf", "llama")
    reports = {}
    for processes in (1, 2):
        output = str(tmp_path / f"report{processes}.json")
        done = launch(eval_argv(model, datasets, output) + ["--no_progress"], processes)
        assert done.returncode == 0, done.stdout + done.stderr
        with open(output) as handle:
            reports[processes] = without_timing(json.load(handle))
        if processes == 2:  # one table printed, by rank 0
            assert done.stdout.count("[vrm] report written to") == 1
    close(reports[2], reports[1])
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["report1.json", "report2.json", *(["clf"] if kind == "classifier" else [])]
    )


@pytest.mark.slow
def test_two_processes_write_the_best_of_n_curves_one_process_writes(tmp_path, three_objective_model_dir):
    pool = [
        {
            "prompt": PAIRS[i % 6][0] + f" #{i}",
            "responses": [PAIRS[j % 6][1 + j % 2] for j in range(i, i + 4)],
            "gold": [float((i * j) % 5) for j in range(4)],
        }
        for i in range(10)
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", pool)
    curves = {}
    for processes in (1, 2):
        output = str(tmp_path / f"bon{processes}.json")
        argv = [
            "bench",
            "bon",
            "--pool",
            path,
            "--proxy",
            three_objective_model_dir,
            "--gold_column",
            "gold",
            "--best_of",
            "1",
            "2",
            "4",
            "--output",
            output,
            "--device",
            "cpu",
            "--no_progress",
        ]
        done = launch(argv, processes)
        assert done.returncode == 0, done.stdout + done.stderr
        with open(output) as handle:
            curves[processes] = json.load(handle)["curves"]
    close(curves[2], curves[1])


@pytest.mark.slow
def test_a_rank_killed_mid_eval_leaves_no_partial_report_and_a_relaunch_writes_it(
    tmp_path, three_objective_model_dir
):
    datasets = [write_jsonl(tmp_path / "pairs.jsonl", preference_rows(400))]
    output = str(tmp_path / "report.json")
    running = launch(eval_argv(three_objective_model_dir, datasets, output) + ["--no_progress"], 2, True)
    rank_one = None
    deadline = time.time() + 60
    while rank_one is None and time.time() < deadline and running.poll() is None:
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    environment = handle.read().split(b"\0")
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    command = handle.read()
            except (OSError, ValueError):
                continue
            if b"RANK=1" in environment and output.encode() in command:
                rank_one = int(pid)
        time.sleep(0.05)
    assert rank_one is not None, "rank 1 never started"
    time.sleep(1.0)  # into loading or scoring
    os.kill(rank_one, signal.SIGKILL)
    running.wait(timeout=120)
    if os.path.exists(output):  # rank 1 had already handed rank 0 its scores: the report is whole
        with open(output) as handle:
            json.load(handle)
    else:
        assert running.returncode != 0
    assert not [name for name in os.listdir(tmp_path) if name.startswith("report.json.")]  # no temporary left
    done = launch(eval_argv(three_objective_model_dir, datasets, output) + ["--no_progress"], 2)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(output) as handle:
        assert json.load(handle)["datasets"][datasets[0]]["overall"]["pairs"] == 400
