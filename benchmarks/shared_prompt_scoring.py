"""Best-of-N scoring with the shared prompt computed once, against the separate layout (issue 20).

    python benchmarks/shared_prompt_scoring.py         # -> benchmarks/results/shared_prompt_scoring.json

Pools of 16 candidates (the synthetic world's Best-of-N pool, `vrm.data.synthetic`, seed 0, regenerated here) are
scored three ways by the same model, in one process, alternating, `--repeats` times (median):

* `one_by_one`   — each candidate in its own forward (candidate by candidate);
* `separate`     — `score_sequences` batched and length-sorted, every candidate its own sequence x ⊕ y;
* `shared_prompt` — `score_sequences` in the tree layout `[x | y_1 | ... | y_16]`: the prompt runs once.

Backbones: SmolLM2-135M's architecture (`smollm2_arch` of train_throughput.py: random weights, MiniLM's
tokenizer; causal: the shared layout is exact, the largest reward difference is reported) and MiniLM as a
model trained with `--pair_layout shared_prompt` (an encoder is scored in the layout it was trained in; its
separate numbers are a different model's). Heads are freshly initialized vrm heads: scores do not
matter for speed, and the causal comparison checks equality.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time

import torch
from train_throughput import HERE, backbone_path, machine


def pools(count: int, candidates: int) -> list[dict]:
    from vrm.data.synthetic import WorldConfig, write_world

    folder = tempfile.mkdtemp(prefix="vrm-bon-")
    paths = write_world(folder, WorldConfig(seed=0))
    with open(paths["bon_pool"], encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return [{"prompt": r["prompt"], "responses": r["responses"][:candidates]} for r in rows[:count]]


def measure(backbone: str, rows: list[dict], repeats: int, batch_size: int) -> dict:
    import vrm.scoring.pipeline as pipeline
    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.models.modeling import VRMForSequenceClassification

    path = backbone_path(backbone)
    torch.manual_seed(0)
    model = VRMForSequenceClassification.from_backbone(path, head_type="vrm").eval()
    if not model.config.is_causal:
        model.config.tokenization = {"pair_layout": "shared_prompt"}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    template = PreferenceTokenizer(tokenizer, max_length=512, is_causal=bool(model.config.is_causal))
    encoded = [template.tokenize_single(r["prompt"], y) for r in rows for y in r["responses"]]
    sequences, lengths = [ids for ids, _ in encoded], [n for _, n in encoded]
    pad = tokenizer.pad_token_id
    real_layout = pipeline.score_layout

    def shared():
        return pipeline.score_sequences(model, sequences, lengths, pad, batch_size)

    trained = dict(model.config.tokenization or {})

    def as_separate(run):
        """Force the separate layout (an encoder's model config says how it was trained: switched here)."""
        pipeline.score_layout = lambda _model: "separate"
        model.config.tokenization = {**trained, "pair_layout": "separate"}
        try:
            return run()
        finally:
            pipeline.score_layout = real_layout
            model.config.tokenization = trained or None

    def separate():
        return as_separate(lambda: pipeline.score_sequences(model, sequences, lengths, pad, batch_size))

    def one_by_one():
        def each():
            pairs = zip(sequences, lengths, strict=True)
            return torch.cat([pipeline.score_sequences(model, [s], [n], pad).reward for s, n in pairs])

        return as_separate(each)

    seconds: dict[str, list[float]] = {"one_by_one": [], "separate": [], "shared_prompt": []}
    rewards = {}
    for _ in range(repeats):
        for name, run in (("one_by_one", one_by_one), ("separate", separate), ("shared_prompt", shared)):
            start = time.perf_counter()
            out = run()
            seconds[name].append(time.perf_counter() - start)
            rewards[name] = out if isinstance(out, torch.Tensor) else out.reward
    median = {name: statistics.median(values) for name, values in seconds.items()}
    prompt_tokens = sum(lengths)
    total_tokens = sum(len(s) for s in sequences)
    return {
        "is_causal": bool(model.config.is_causal),
        "pools": len(rows),
        "candidates": len(sequences),
        "prompt_share_of_tokens": prompt_tokens / total_tokens,
        "seconds": median,
        "seconds_runs": seconds,
        "candidates_per_second": {name: len(sequences) / value for name, value in median.items()},
        "shared_speedup_over_one_by_one": median["one_by_one"] / median["shared_prompt"],
        "shared_speedup_over_separate_batched": median["separate"] / median["shared_prompt"],
        # causal: the layouts agree (exact); encoder: the separate numbers are another model's
        "max_abs_reward_difference_vs_separate": float(
            (rewards["shared_prompt"] - rewards["separate"]).abs().max()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["smollm2_arch", "minilm"])
    parser.add_argument("--pools", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "shared_prompt_scoring.json"))
    args = parser.parse_args()
    rows = pools(args.pools, args.candidates)
    started = time.time()
    report = {
        "command": "python benchmarks/shared_prompt_scoring.py " + shlex.join(sys.argv[1:]),
        "data": "vrm.data.synthetic Best-of-N pool (WorldConfig(seed=0)), first pools, first candidates",
        "machine": {**machine(), "shared": "2 CPU cores shared with five other engineers' jobs"},
        "settings": vars(args),
        "backbones": {name: measure(name, rows, args.repeats, args.batch_size) for name in args.backbones},
    }
    report["wall_seconds"] = time.time() - started
    from vrm.data.files import write_json

    write_json(report, args.output)
    print(json.dumps(report["backbones"], indent=1))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
