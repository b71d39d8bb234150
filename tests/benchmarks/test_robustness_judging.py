"""The robustness benchmark's judging (`benchmarks.robustness`): how a finished command or an HTTP answer is
counted, and the per-surface summary. No training; the one subprocess is a `python -c` that sleeps."""

import subprocess
import sys

import bad_inputs

from benchmarks.robustness.harness import Case, Step, judge, run_case, surface_of, vrm
from benchmarks.robustness.report import summarize, targets
from benchmarks.robustness.server import judge_response

TRACE = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nZeroDivisionError: division by zero\n'


def done(returncode: int, stderr: str = "", stdout: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["vrm"], returncode, stdout, stderr)


def case(**overrides) -> Case:
    values = dict(name="c", group="train", steps=[Step(vrm("train"), True)], message=r"x\.jsonl:2")
    return Case(**{**values, **overrides})


def test_a_traceback_is_a_traceback_even_with_an_error_line():
    result = judge(case(), done(1, TRACE + "vrm train: error: x.jsonl:2: bad\n"))
    assert result["outcome"] == "traceback"


def test_one_error_line_is_a_clear_error_naming_the_field_or_not():
    named = judge(case(), done(1, "some warning\nvrm train: error: x.jsonl:2: 'chosen' must be text\n"))
    assert named["outcome"] == "clear_error" and named["names_field"] is True
    other = judge(case(), done(1, "vrm train: error: something else\n"))
    assert other["outcome"] == "clear_error" and other["names_field"] is False
    module = judge(
        case(message="e.yaml"), done(1, "python -m benchmarks.studies.experiment: error: e.yaml: x\n")
    )
    assert module["outcome"] == "clear_error" and module["names_field"] is True


def test_no_line_two_lines_a_signal_or_the_wrong_exit_code_are_unclear():
    assert judge(case(), done(1, "it broke\n"))["outcome"] == "unclear_error"
    two = "vrm train: error: one\nvrm train: error: two\n"
    assert judge(case(), done(1, two))["outcome"] == "unclear_error"
    assert judge(case(), done(-9))["outcome"] == "unclear_error"
    usage = case(returncode=2)
    assert judge(usage, done(1, "vrm serve: error: x\n"))["outcome"] == "unclear_error"
    assert judge(usage, done(2, "vrm serve: error: x\n"))["outcome"] == "clear_error"


def test_exit_0_on_a_refusal_is_silent_unless_accepting_is_correct():
    assert judge(case(), done(0, stdout="done\n"))["outcome"] == "silent"
    assert judge(case(also_ok=("accepted",)), done(0))["outcome"] == "accepted"
    skipped = case(also_ok=("skipped",), skip_message=r"x\.jsonl:2")
    assert (
        judge(skipped, done(0, stdout="1 unusable row(s) skipped: x.jsonl:2 (bad)\n"))["outcome"] == "skipped"
    )


def test_controls_and_checks():
    control = case(refuse=False)
    assert judge(control, done(0))["outcome"] == "accepted"
    assert judge(control, done(1, "vrm train: error: no\n"))["outcome"] == "false_refusal"
    checked = case(refuse=False, check=lambda process: "the output has 2 duplicated rows")
    assert judge(checked, done(0)) == {
        "returncode": 0,
        "outcome": "silent",
        "detail": "the output has 2 duplicated rows",
    }


def test_non_finite_outputs_are_silent(tmp_path):
    output = tmp_path / "out.jsonl"
    output.write_text('{"reward": 1.0}\n{"reward": NaN}\n')
    result = judge(case(refuse=False, outputs=[str(output)]), done(0))
    assert result["outcome"] == "silent" and result["detail"].endswith("out.jsonl:2")


def test_a_step_past_its_timeout_is_a_stall_and_the_surface_comes_from_the_command():
    sleeper = case(steps=[Step([sys.executable, "-c", "import time; time.sleep(30)"], True, timeout=0.5)])
    result = run_case(sleeper, timeout=60)
    assert result["outcome"] == "stall" and result["seconds"] < 20
    assert surface_of(case(steps=[Step(vrm("bench", "bon", "--pool", "p"), True)])) == "vrm bench bon"
    assert surface_of(case(steps=[Step([sys.executable, "-m", "benchmarks.studies.experiment"], True)])) == (
        "python -m benchmarks.studies.experiment"
    )


def test_server_answers_are_judged_by_status_and_content():
    bad = bad_inputs.BadRequest("lambda", "/score", b"{}", r"conservative_lambda", expect=(422,))
    assert judge_response(bad, 500, '{"detail": "boom"}', True)["outcome"] == "server_5xx"
    assert judge_response(bad, 200, "{}", True)["outcome"] == "silent"
    assert judge_response(bad, None, "", True)["outcome"] == "stall"
    clear = judge_response(bad, 422, '{"detail": "conservative_lambda: too large"}', True)
    assert clear["outcome"] == "clear_error" and clear["names_field"] and clear["expected_status"]
    good = bad_inputs.BadRequest("good", "/score", b"{}", expect=(200,), no_null=True)
    assert judge_response(good, 200, '{"results": [{"reward": 1.0}]}', True)["outcome"] == "accepted"
    assert (
        judge_response(good, 200, '{"results": [{"conservative_reward": null}]}', True)["outcome"] == "silent"
    )


def test_summary_per_surface_and_targets():
    cases = [
        {
            "case": "a",
            "group": "train",
            "surface": "vrm train",
            "expected": "refuse",
            "outcome": "clear_error",
        },
        {"case": "b", "group": "train", "surface": "vrm train", "expected": "refuse", "outcome": "traceback"},
        {
            "case": "c",
            "group": "score",
            "surface": "vrm score",
            "expected": "refuse",
            "outcome": "silent",
            "rows_lost": 3,
        },
        {
            "case": "d",
            "group": "serve",
            "surface": "vrm serve (HTTP)",
            "expected": "refuse",
            "outcome": "stall",
        },
    ]
    load = {"responses_5xx": 2, "requests": 10, "wrong_answers": 0}
    slow = {"p99_s": 2.5, "max_s": 3.0, "non_200": 1, "probe_statuses": {"200": 49, "503": 1}}
    summary = summarize(cases, load, {"p99_s": 0.5, "max_s": 1.0}, slow)
    surfaces = summary["per_surface"]
    assert surfaces["vrm train"]["cases"] == 2 and surfaces["vrm train"]["tracebacks"] == 1
    assert surfaces["vrm score"]["silent_wrong_results"] == 1 and surfaces["vrm score"]["rows_lost"] == 3
    served = surfaces["vrm serve (HTTP)"]
    assert served["hangs"] == 1 and served["responses_5xx"] == 3 and served["worst_stall_1_item_s"] == 3.0
    rows = targets(summary)
    slow_row = rows["1-item p99 ≤ 2 s with 1,000 slow clients"]
    assert slow_row["value"] == 2.5 and not slow_row["met"]
    assert rows["tracebacks"]["value"] == 1 and not rows["non_200_with_slow_clients"]["met"]


LAUNCHER_REPORT = """E1206 12:21:52.501000 27050 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2)
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 940, in main
    run(args)
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
vrm FAILED
------------------------------------------------------------
"""


def test_a_launch_of_two_ranks_refusing_alike_is_one_clear_error_despite_the_launchers_report():
    refusal = "vrm bench bon: error: --n / --best_of: every n of best-of-n must be >= 1, got [0]\n"
    result = judge(case(message="best_of"), done(1, refusal + refusal + LAUNCHER_REPORT))
    assert result["outcome"] == "clear_error" and result["names_field"] is True


def test_a_rank_traceback_under_a_launcher_is_still_a_traceback():
    result = judge(case(), done(1, TRACE + LAUNCHER_REPORT))
    assert result["outcome"] == "traceback"


def test_two_different_error_lines_are_not_one_clear_error():
    result = judge(case(), done(1, "vrm eval: error: one thing\nvrm eval: error: another\n"))
    assert result["outcome"] == "unclear_error"
