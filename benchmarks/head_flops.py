"""What the vrm head costs over the bt head, counted in FLOPs: a measure that CPU timing noise cannot blur.

`train_throughput.py` times training steps; on a shared 2-core CPU its runs of one trainer spread by about
10%, more than the 5% overhead it tries to check. This benchmark counts the floating-point operations of one
training step instead (forward and backward of `forward_pairs` + `preference_loss`, with
`torch.utils.flop_counter.FlopCounterMode`), on the same real batches `train_throughput.py` trains on, for
the bt and the vrm head. The count is deterministic: one run suffices.

Where vrm costs more it says where: a bidirectional encoder (MiniLM) needs a prompt-only backbone pass for the
prompt state h_x (the prompt must not see the response), so its overhead is about the prompt's share of the
tokens; a causal backbone (SmolLM2) reads h_x from the same pass, so only the head's few matmuls remain.
`vrm-detached` is vrm with `--no_prompt_state_gradient`: h_x is detached, so the encoder's prompt-only pass
runs forward only (no backward).

    python benchmarks/head_flops.py                      # -> benchmarks/results/head_flops.json
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
from train_throughput import DEFAULT_DATA, HERE, SETTINGS, backbone_path, machine, tokenized_pairs

# name -> (head type, VRMConfig fields)
VARIANTS = {
    "bt": ("bt", {}),
    "moe": ("moe", {}),
    "ib": ("ib", {}),
    "vrm": ("vrm", {}),
    "vrm-detached": ("vrm", {"prompt_state_gradient": False}),
}


def step_flops(model, batch: dict) -> int:
    """FLOPs of one training step: forward of the pair batch, the negative ELBO, backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from vrm.losses import preference_loss

    model.train()
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        samples = model.forward_pairs(
            batch["chosen_input_ids"],
            batch["chosen_attention_mask"],
            batch["rejected_input_ids"],
            batch["rejected_attention_mask"],
            batch["prompt_lengths"],
        )
        preference_loss(samples, beta_w=0.01, beta_z=0.01).loss.backward()
    return int(counter.get_total_flops())


def measure(backbone: str, data: str, batches: int, seed: int) -> dict:
    from transformers import AutoConfig

    from vrm.data import PreferenceCollator
    from vrm.modeling import VRMForSequenceClassification, backbone_is_causal

    settings = SETTINGS[backbone]
    path = backbone_path(backbone)
    is_causal = backbone_is_causal(AutoConfig.from_pretrained(path))
    size = settings["batch_size"]
    tokenizer, template, pairs = tokenized_pairs(
        path, data, size * batches, settings["max_length"], is_causal
    )
    collate = PreferenceCollator(tokenizer.pad_token_id)
    collated = [collate(pairs[i : i + size]) for i in range(0, len(pairs), size)]
    flops = {}
    for name, (head, fields) in VARIANTS.items():
        torch.manual_seed(seed)
        model = VRMForSequenceClassification.from_backbone(path, head_type=head, **fields)
        model.config.response_marker_ids = template.response_marker_ids
        flops[name] = sum(step_flops(model, batch) for batch in collated)
        del model
    prompt_tokens = sum(p.prompt_length for p in pairs)
    tokens = sum(len(p.chosen_input_ids) + len(p.rejected_input_ids) for p in pairs)
    return {
        "settings": settings,
        "is_causal": is_causal,
        "pairs": len(pairs),
        "flops_per_pair": {head: value / len(pairs) for head, value in flops.items()},
        "over_bt": {head: value / flops["bt"] for head, value in flops.items()},
        "prompt_share_of_tokens": prompt_tokens / tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batches", type=int, default=4, help="Batches of the speed benchmark's size.")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "head_flops.json"))
    args = parser.parse_args()
    if not os.path.exists(args.data):
        parser.error(
            f"--data {args.data}: not found (the shared preference data, see ../shared/data/README.md)"
        )
    started = time.time()
    report = {
        "command": "python benchmarks/head_flops.py " + shlex.join(sys.argv[1:]),
        "data": os.path.relpath(args.data, os.path.join(HERE, "..")),
        "seed": args.seed,
        "machine": machine(),
        "backbones": {name: measure(name, args.data, args.batches, args.seed) for name in args.backbones},
    }
    report["wall_seconds"] = time.time() - started
    from vrm.fileio import write_json

    write_json(report, args.output)
    print(
        "\n| backbone | causal | prompt share of tokens | " + " | ".join(f"{v} / bt" for v in VARIANTS) + " |"
    )
    print("|---|---|---:|" + "---:|" * len(VARIANTS))
    for name, entry in report["backbones"].items():
        ratios = " | ".join(f"{entry['over_bt'][v]:.4f}" for v in VARIANTS)
        print(f"| {name} | {entry['is_causal']} | {entry['prompt_share_of_tokens']:.3f} | {ratios} |")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
