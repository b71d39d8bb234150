"""What the shared-prompt layout changes on an encoder: fine-tuned MiniLM, two sequences vs one tree per pair.

    python benchmarks/encoder_layout_accuracy.py      # -> benchmarks/results/encoder_layout_accuracy.json

On an encoder, `--pair_layout shared_prompt` is a different model: the prompt tokens attend to the prompt only
(their states are h_x, so the prompt-only pass disappears) and each response to the prompt and itself. This runs
the quickstart's experiment (`examples/quickstart.py`: the synthetic world, MiniLM fine-tuned 60 steps × 16
pairs, learning rate 5e-5, head 1e-3, seeds 0 1 2) for bt and vrm in both layouts and reports accuracy on
`test_iid` and `test_shifted` (mean ± std over seeds) and training time. Extra arguments go to the quickstart.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import quickstart  # noqa: E402

SHARED = (("pair_layout", "shared_prompt"),)
quickstart.VARIANTS["bt_shared"] = quickstart.Variant("bt", flags=SHARED)
quickstart.VARIANTS["vrm_shared"] = quickstart.Variant("vrm", 3, ratings=True, flags=SHARED)

if __name__ == "__main__":
    defaults = ["--seeds", "0", "1", "2", "--heads", "bt", "bt_shared", "vrm", "vrm_shared",
                "--output_dir", "runs/encoder-layout",
                "--results_json", os.path.join(HERE, "results", "encoder_layout_accuracy.json")]  # fmt: skip
    sys.argv = [sys.argv[0], *defaults, *sys.argv[1:]]
    quickstart.main()
