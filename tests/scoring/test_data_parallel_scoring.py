"""Data-parallel `vrm score` (`vrm.scoring.score_file` with a `ScoringWorld` of several processes): two gloo
processes started by `python -m torch.distributed.run` write the rows one process writes, in input order; a
kill -9 of one rank mid-run is resumed (with the same or another number of processes) to the same rows; the
manifest still refuses another model; a second launch into an output being written is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tiny_models import PAIRS

from vrm.scoring.score_file import ShardPlan, merge_parts

ROWS = 40


def write_rows(path, count=ROWS):
    rows = [
        {"id": i, "prompt": PAIRS[i % 6][0] + f" #{i}", "response": PAIRS[i % 6][1 + i % 2]}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def vrm_score(model, data, output, processes=1, *extra, background=False, env=None):
    launcher = (
        [sys.executable, "-m", "vrm"]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--standalone",
            "-m",
            "vrm",
        ]
    )
    argv = [*launcher, "score", "--model", model, "--input", data, "--output", output, "--device", "cpu"]
    argv += ["--batch_size", "4", "--chunk_size", "4", "--no_progress", *extra]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if background:
        return subprocess.Popen(
            argv, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=300)


def same_rows(one, other):
    """Rows equal field by field, scores to float32 rounding (another batch mix pads differently)."""
    assert [r["id"] for r in one] == [r["id"] for r in other] == list(range(ROWS))
    for a, b in zip(one, other, strict=True):
        assert a.keys() == b.keys()
        assert a["prompt"] == b["prompt"] and a["response"] == b["response"]
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-5)
        assert a["objective_weights"] == pytest.approx(b["objective_weights"], abs=1e-5)


@pytest.fixture(scope="module")
def single_process_output(tmp_path_factory, three_objective_model_dir):
    root = tmp_path_factory.mktemp("one_process")
    data = write_rows(root / "rows.jsonl")
    output = str(root / "out.jsonl")
    done = vrm_score(three_objective_model_dir, data, output)
    assert done.returncode == 0, done.stdout + done.stderr
    return output


@pytest.fixture(scope="module")
def single_process_rows(single_process_output):
    return read_jsonl(single_process_output)


@pytest.mark.slow
def test_two_processes_write_the_rows_one_process_writes(
    tmp_path, three_objective_model_dir, single_process_rows
):
    data = write_rows(tmp_path / "rows.jsonl")
    output = str(tmp_path / "out.jsonl")
    done = vrm_score(three_objective_model_dir, data, output, 2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{ROWS} rows: {ROWS} scored, 0 already in" in done.stdout
    same_rows(read_jsonl(output), single_process_rows)
    left = sorted(os.listdir(tmp_path))
    assert left == ["out.jsonl", "out.jsonl.manifest.json", "rows.jsonl"]  # no parts, plan or locks remain


@pytest.mark.slow
@pytest.mark.parametrize("resume_with", [2, 1])
def test_a_rank_killed_mid_run_resumes_to_the_same_rows(
    tmp_path, three_objective_model_dir, single_process_rows, resume_with
):
    data = write_rows(tmp_path / "rows.jsonl")
    for attempt in range(3):  # a run can finish between two looks at its part: then start afresh
        output = str(tmp_path / f"out{attempt}.jsonl")
        part = output + ".part1-of-2"
        launch = vrm_score(three_objective_model_dir, data, output, 2, background=True)
        deadline = time.time() + 120
        while time.time() < deadline and launch.poll() is None:
            if os.path.exists(part) and os.path.getsize(part) > 0:
                break
            time.sleep(0.002)
        try:
            with open(output + ".part1-of-2.lock") as handle:
                os.kill(int(handle.read().strip()), signal.SIGKILL)  # rank 1, by the pid its part lock holds
            break
        except (FileNotFoundError, ProcessLookupError, ValueError):  # rank 1 had finished its part already
            launch.kill()
            launch.wait(timeout=120)
    else:
        pytest.fail("each of 3 two-process runs finished before rank 1 could be killed mid-run")
    launch.wait(timeout=120)
    assert launch.returncode != 0
    assert os.path.exists(ShardPlan.path(output))
    assert len(read_jsonl(output)) < ROWS if os.path.exists(output) else True
    resumed = vrm_score(three_objective_model_dir, data, output, resume_with)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    same_rows(read_jsonl(output), single_process_rows)
    assert not os.path.exists(ShardPlan.path(output)) and not os.path.exists(part)


@pytest.mark.slow
def test_resuming_with_another_model_is_refused(
    tmp_path, three_objective_model_dir, tiny_model, single_process_rows, single_process_output
):
    data = write_rows(tmp_path / "rows.jsonl")
    output = str(tmp_path / "out.jsonl")
    model, tokenizer, _ = tiny_model("llama_chat", num_objectives=3, seed=1)
    other = str(tmp_path / "other_model")
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    # an unfinished two-process run: its plan and parts, as a kill leaves them
    rows = [json.dumps(row) + "\n" for row in single_process_rows]
    open(output, "w").writelines(rows[:8])
    open(output + ".manifest.json", "w").write(open(single_process_output + ".manifest.json").read())
    plan = ShardPlan.split(output, 8, ROWS, 2)
    plan.save(output)
    open(plan.parts[0], "w").writelines(rows[8:12])
    refused = vrm_score(other, data, output, 2)
    assert refused.returncode != 0
    assert "was scored from another model" in refused.stdout + refused.stderr
    assert open(plan.parts[0]).readlines() == rows[8:12] and len(read_jsonl(output)) == 8  # nothing touched


def test_merging_parts_keeps_only_rows_that_continue_the_output(tmp_path):
    output = str(tmp_path / "out.jsonl")
    lines = [json.dumps({"id": i}) + "\n" for i in range(10)]
    open(output, "w").writelines(lines[:2])
    plan = ShardPlan.split(output, 2, 10, 3)
    assert plan.shards == [(2, 4), (4, 7), (7, 10)]
    open(plan.parts[0], "w").writelines(lines[2:4])  # complete
    open(plan.parts[1], "w").writelines(lines[4:6] + ['{"id": 6'])  # 2 of 3 rows, then a torn line
    open(plan.parts[2], "w").writelines(lines[7:9])  # after an unfinished part: scored again
    plan.save(output)
    assert merge_parts(output, 2, ShardPlan.load(output)) == 6
    assert open(output).readlines() == lines[:6]
    assert not any(os.path.exists(p) for p in [*plan.parts, ShardPlan.path(output)])


def test_merging_after_a_crash_midway_appends_only_what_the_output_lacks(tmp_path):
    output = str(tmp_path / "out.jsonl")
    lines = [json.dumps({"id": i}) + "\n" for i in range(6)]
    plan = ShardPlan.split(output, 0, 6, 2)
    open(plan.parts[0], "w").writelines(lines[:3])
    open(plan.parts[1], "w").writelines(lines[3:])
    open(output, "w").writelines(lines[:4])  # the merge had appended 4 rows when it was killed
    assert merge_parts(output, 4, plan) == 6
    assert open(output).readlines() == lines


def test_the_world_comes_from_the_launcher_environment(monkeypatch):
    from vrm.scoring.data_parallel import ScoringWorld

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert ScoringWorld.detect() == ScoringWorld(0, 1, 0) and not ScoringWorld.detect().distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ScoringWorld.detect() == ScoringWorld(3, 4, 1)
    assert ScoringWorld.detect().device("cpu") == "cpu"
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4 WORLD_SIZE=4"):
        ScoringWorld.detect()


def test_calibrate_refuses_a_launch_of_several_processes(monkeypatch, capsys, tmp_path):
    from vrm.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--dataset", "pairs.jsonl", "--model", "no-model"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "vrm calibrate runs in one process, but a launcher" in error[0]
    assert (
        "started 2" in error[0] and "rank" not in error[0].split(":")[1]
    )  # one line, the same on every rank


def test_a_pipeline_with_an_embedding_cache_is_refused_before_any_rank_scores(tmp_path):
    from types import SimpleNamespace

    from vrm.scoring.data_parallel import ScoringWorld
    from vrm.scoring.score_file import score_file

    data = write_rows(tmp_path / "rows.jsonl")
    output = str(tmp_path / "out.jsonl")
    pipeline = SimpleNamespace(embedding_cache=object())  # refused before the pipeline is used
    with pytest.raises(ValueError, match="does not take a pipeline with an embedding_cache"):
        score_file(pipeline, data, output, world=ScoringWorld(rank=0, size=2))
    assert not os.path.exists(output)
