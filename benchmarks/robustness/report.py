"""The report of the robustness benchmark: the summary (overall, as before, and per surface), the targets and
the JSON file (`benchmarks/results/robustness.json`; its keys are those of the single-file script, with
`summary.per_surface`, `slow_clients` and each case's `surface` added)."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

SERVE = "vrm serve (HTTP)"


def summarize(cases: list[dict], load: dict, latency: dict, slow: dict | None = None) -> dict[str, Any]:
    slow = slow or {}
    bad = [c for c in cases if c["expected"] != "accept"]
    controls = [c for c in cases if c["expected"] == "accept"]
    outcomes = Counter(c["outcome"] for c in bad)
    return {
        "inputs_tried": len(bad),
        "inputs_tried_cli": sum(c["group"] != "serve" for c in bad),
        "inputs_tried_server": sum(c["group"] == "serve" for c in bad),
        "clear_errors": outcomes["clear_error"],
        "clear_errors_naming_the_field": sum(
            c.get("names_field") is True for c in bad if c["outcome"] == "clear_error"
        ),
        "rows_skipped_with_a_warning_naming_them": outcomes["skipped"],  # vrm eval's rule for unusable rows
        "accepted_with_finite_outputs": outcomes["accepted"],  # only where ignoring the input is correct
        "tracebacks": outcomes["traceback"] + sum(c["outcome"] == "traceback" for c in controls),
        "unclear_errors": outcomes["unclear_error"],
        "silent_misbehaviour": outcomes["silent"] + sum(c["outcome"] == "silent" for c in controls),
        "server_5xx_single_requests": outcomes["server_5xx"]
        + sum(c["outcome"] == "server_5xx" for c in controls),
        "server_wrong_4xx_status": sum(c.get("expected_status") is False for c in bad),
        "stalls_or_crashes": outcomes["stall"] + outcomes["crash"] + outcomes["setup_failed"],
        "harness_errors": outcomes["harness_error"] + sum(c["outcome"] == "harness_error" for c in controls),
        "controls": len(controls),
        "controls_accepted": sum(c["outcome"] == "accepted" for c in controls),
        "server_5xx_under_load": load.get("responses_5xx"),
        "load_requests": load.get("requests"),
        "load_wrong_answers": load.get("wrong_answers"),
        "p99_latency_1_item_during_maximal_request_s": latency.get("p99_s"),
        "p99_latency_1_item_with_slow_clients_s": slow.get("p99_s"),
        "non_200_1_item_with_slow_clients": slow.get("non_200"),
        "silent_connection_408_and_closed": (slow.get("silent_connection") or {}).get("outcome")
        == "408_and_closed"
        if slow
        else None,
        "per_surface": per_surface(cases, load, latency, slow),
    }


def empty_row() -> dict[str, Any]:
    return {
        "cases": 0,
        "clear_errors": 0,
        "tracebacks": 0,
        "silent_wrong_results": 0,
        "hangs": 0,
        "responses_5xx": 0,
        "rows_lost": 0,
        "worst_stall_1_item_s": None,
        "slowest_case_s": 0.0,
    }


def per_surface(cases: list[dict], load: dict, latency: dict, slow: dict) -> dict[str, dict[str, Any]]:
    """Per surface (`vrm train`, ..., `vrm serve (HTTP)`): cases, clear errors, tracebacks, silent wrong results,
    hangs, 5xx, rows lost, and the worst stall of a 1-item request (the server: the slowest 1-item request of the
    latency and slow-client phases; a command: its slowest case, in seconds)."""
    surfaces: dict[str, dict[str, Any]] = {}
    for case in cases:
        name = case.get("surface") or case["group"]
        row = surfaces.setdefault(name, empty_row())
        outcome = case["outcome"]
        row["cases"] += 1
        row["clear_errors"] += outcome == "clear_error"
        row["tracebacks"] += outcome == "traceback"
        row["silent_wrong_results"] += outcome == "silent"
        row["hangs"] += outcome in ("stall", "crash")
        row["responses_5xx"] += outcome == "server_5xx"
        row["rows_lost"] += int(case.get("rows_lost") or 0)
        row["slowest_case_s"] = round(max(row["slowest_case_s"], float(case.get("seconds") or 0)), 2)
    if load or latency or slow:
        row = surfaces.setdefault(SERVE, empty_row())
        row["responses_5xx"] = (
            row["responses_5xx"]
            + int(load.get("responses_5xx") or 0)
            + sum(n for code, n in (slow.get("probe_statuses") or {}).items() if code.startswith("5"))
        )
        row["silent_wrong_results"] = (
            row["silent_wrong_results"]
            + int(load.get("wrong_answers") or 0)
            + int(slow.get("wrong_answers") or 0)
        )
        stalls = [value for value in (latency.get("max_s"), slow.get("max_s")) if value is not None]
        row["worst_stall_1_item_s"] = max(stalls) if stalls else None
        row.pop("slowest_case_s", None)
    return dict(sorted(surfaces.items()))


def targets(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {
        "tracebacks": (summary["tracebacks"], 0),
        "silent_misbehaviour": (summary["silent_misbehaviour"], 0),
        "unclear_errors": (summary["unclear_errors"], 0),
        "stalls_or_crashes": (summary["stalls_or_crashes"], 0),
        "server_5xx": (summary["server_5xx_single_requests"] + (summary["server_5xx_under_load"] or 0), 0),
        "load_wrong_answers": (summary["load_wrong_answers"] or 0, 0),
        "controls_rejected": (summary["controls"] - summary["controls_accepted"], 0),
        "p99_latency_s": (summary["p99_latency_1_item_during_maximal_request_s"], 2.0),
    }
    if summary.get("p99_latency_1_item_with_slow_clients_s") is not None:
        rows["1-item p99 ≤ 2 s with 1,000 slow clients"] = (
            summary["p99_latency_1_item_with_slow_clients_s"],
            2.0,
        )
        rows["non_200_with_slow_clients"] = (summary["non_200_1_item_with_slow_clients"], 0)
        rows["silent_connection_not_408_and_closed"] = (
            int(not summary["silent_connection_408_and_closed"]),
            0,
        )
    return {
        name: {"value": value, "target": f"<= {goal}", "met": value is not None and value <= goal}
        for name, (value, goal) in rows.items()
    }


def write_json_atomic(data: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(temporary, path)


def print_summary(report: dict[str, Any], output: str) -> None:
    summary = report["summary"]
    print("\n" + "\n".join(f"{key:<48} {value}" for key, value in summary.items() if key != "per_surface"))
    columns = [
        "cases",
        "clear_errors",
        "tracebacks",
        "silent_wrong_results",
        "hangs",
        "responses_5xx",
        "rows_lost",
    ]
    # worst_s: the server's slowest 1-item request; a command's slowest case
    header = [*columns, "worst_s"]
    print(f"\n{'surface':<40}" + "".join(f"{c:>{len(c) + 2}}" for c in header))
    for name, row in summary["per_surface"].items():
        stall = row.get("worst_stall_1_item_s")
        values = [row.get(c, 0) for c in columns] + [
            stall if stall is not None else row.get("slowest_case_s")
        ]
        print(f"{name:<40}" + "".join(f"{v!s:>{len(c) + 2}}" for c, v in zip(header, values, strict=True)))
    for case in report["cases"]:
        if case["outcome"] not in ("clear_error", "accepted", "skipped"):
            print(f"[robustness] NOT OK {case['case']}: {case['outcome']}: {case.get('detail', '')}")
    if report["targets"]:
        missed = [name for name, row in report["targets"].items() if not row["met"]]
        print(f"[robustness] targets missed: {', '.join(missed) or 'none'}")
    print(f"[robustness] {report['seconds']:.0f} s; report written to {output}")
