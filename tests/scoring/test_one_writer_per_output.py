"""One writer per `vrm score` output: a second run on an output that another is writing is refused at once with
one line naming the output (no duplicated rows, the manifest untouched), and the lock goes away with its
holder, whether it finishes, fails or is killed."""

import json
import os
import subprocess
import sys
import threading

import pytest
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.data.files import OutputLockedError, exclusive_lock
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.score_file import score_file


@pytest.fixture
def pipeline(tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    return RewardPipeline(model, tokenizer, batch_size=4)


def rows_file(tmp_path, count=12):
    path = tmp_path / "rows.jsonl"
    rows = [{"id": i, "prompt": PAIRS[i % 6][0], "response": PAIRS[i % 6][1 + i % 2]} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ids(path):
    with open(path) as handle:
        return [json.loads(line)["id"] for line in handle]


def test_a_second_concurrent_writer_is_refused_and_the_first_writes_every_row_once(tmp_path, pipeline):
    data, output = rows_file(tmp_path), str(tmp_path / "out.jsonl")
    first_is_scoring, second_is_done = threading.Event(), threading.Event()
    original = pipeline.score

    def slow_score(prompts, responses, progress=False):
        # the first writer is mid-run (one chunk written, the lock held) while the second one starts
        if threading.current_thread() is not threading.main_thread():
            first_is_scoring.set()
            assert second_is_done.wait(60)
        return original(prompts, responses, progress)

    pipeline.score = slow_score
    results = {}

    def first():
        try:
            results["first"] = score_file(pipeline, data, output, chunk_size=4, progress=False)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            results["first"] = err

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_is_scoring.wait(60)
        manifest_before = open(output + ".manifest.json").read()
        for overwrite in (False, True):  # --overwrite must not truncate the output under the first writer
            with pytest.raises(
                OutputLockedError, match="another process .* is writing this output"
            ) as caught:
                score_file(pipeline, data, output, chunk_size=4, progress=False, overwrite=overwrite)
            assert str(caught.value).startswith(output) and "\n" not in str(caught.value)
        assert open(output + ".manifest.json").read() == manifest_before
    finally:
        second_is_done.set()
        thread.join(60)
    assert results["first"] == {"rows": 12, "skipped": 0, "scored": 12}
    assert ids(output) == list(range(12))
    assert not os.path.exists(output + ".lock")  # released and removed
    # the lock is gone with its holder: the next run resumes (nothing left to score)
    assert score_file(pipeline, data, output, progress=False) == {"rows": 12, "skipped": 12, "scored": 0}


def test_a_failed_run_releases_the_lock(tmp_path, pipeline, monkeypatch):
    data, output = rows_file(tmp_path), str(tmp_path / "out.jsonl")

    def broken(prompts, responses, progress=False):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pipeline, "score", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        score_file(pipeline, data, output, progress=False)
    monkeypatch.undo()
    assert score_file(pipeline, data, output, progress=False)["scored"] == 12


def test_the_lock_excludes_threads_and_is_reentrant_after_release(tmp_path):
    target = str(tmp_path / "sub" / "out.jsonl")
    with exclusive_lock(target) as lock_path:
        assert lock_path == target + ".lock" and os.path.exists(lock_path)
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            with exclusive_lock(target):
                pass
    with exclusive_lock(target):  # free again
        pass


HOLD_LOCK = """
import sys, time
from vrm.data.files import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


@pytest.mark.slow
def test_vrm_score_refuses_an_output_another_process_writes_until_that_process_is_killed(
    tmp_path, pipeline, one_line_error
):
    model_dir = str(tmp_path / "model")
    pipeline.save_pretrained(model_dir)
    data, output = rows_file(tmp_path, count=4), str(tmp_path / "out.jsonl")
    argv = ["score", "--model", model_dir, "--input", data, "--output", output, "--no_progress"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, output], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        if holder.stdout.readline().strip() != "locked":
            holder.kill()
            pytest.fail(f"the lock holder did not start: {holder.stderr.read()[-2000:]}")
        assert main(argv) == 1
        line = one_line_error("score")
        assert output in line and f"pid {holder.pid}" in line
        assert not os.path.exists(output) and not os.path.exists(output + ".manifest.json")
    finally:
        holder.kill()  # a crash: the OS drops its lock, though the lock file stays behind
        holder.wait(60)
    assert os.path.exists(output + ".lock")
    assert main(argv) == 0
    assert ids(output) == [0, 1, 2, 3]
