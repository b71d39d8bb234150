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
    python benchmarks/head_flops.py --ensemble_only      # adds the "ensemble" block to that file

**Ensembles** (`--ensemble_members N`, `vrm.ensemble`): N heads on one backbone pass. The backbone's FLOPs do
not depend on the head (its backward gets a gradient of the same shape), so a step of an N-member ensemble
costs `full(1) - head(1) + head(N)`, where `head(N)` is counted on the head alone (forward of the pair states
through `sample_pairs`, the loss with bootstrap weights, backward into the states; its FLOPs depend only on
the shapes) and `full(1)` is the full step of the single head measured above. `--ensemble_only` counts
`head(N)` for bt and vrm, N = 1, 4, 8, and checks the decomposition once against a full counted step of
N = 8 on the first MiniLM batch (`check`).
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

    from vrm.training.losses import preference_loss

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


ENSEMBLE_HEADS = ("bt", "vrm")
ENSEMBLE_SIZES = (1, 4, 8)


def head_step_flops(head_type: str, text_config, batch: int, members: int, seed: int) -> int:
    """FLOPs of the head's part of a training step on B pairs of states (shapes only matter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vrm.models.config import VRMConfig
    from vrm.models.modeling import build_head
    from vrm.training.losses import bootstrap_weights, preference_loss

    torch.manual_seed(seed)
    config = VRMConfig(text_config=text_config, head_type=head_type, ensemble_members=members)
    head = build_head(config)
    states = [torch.randn(batch, text_config.hidden_size, requires_grad=True) for _ in range(3)]
    weights = bootstrap_weights(members, batch, torch.Generator().manual_seed(seed)) if members > 1 else None
    with FlopCounterMode(display=False) as counter:
        samples = head.sample_pairs(*states, config.num_samples)
        preference_loss(samples, beta_w=0.01, beta_z=0.01, pair_weights=weights).loss.backward()
    return int(counter.get_total_flops())


def measure_ensembles(backbone: str, data: str, seed: int, full_step: dict | None, check: bool) -> dict:
    """Head FLOPs per pair of bt / vrm ensembles and, with the full single-head step, their step ratios."""
    from transformers import AutoConfig

    settings = SETTINGS[backbone]
    text_config = AutoConfig.from_pretrained(backbone_path(backbone))
    size = settings["batch_size"]
    head = {
        name: {str(n): head_step_flops(name, text_config, size, n, seed) / size for n in ENSEMBLE_SIZES}
        for name in ENSEMBLE_HEADS
    }
    entry: dict = {"hidden_size": text_config.hidden_size, "batch_size": size, "head_flops_per_pair": head}
    if full_step:
        entry["step_over_single_head"] = {
            name: {
                n: (full_step[name] - head[name]["1"] + value) / full_step[name]
                for n, value in head[name].items()
            }
            for name in ENSEMBLE_HEADS
        }
        entry["step_over_bt"] = {
            name: {
                n: (full_step[name] - head[name]["1"] + value) / full_step["bt"]
                for n, value in head[name].items()
            }
            for name in ENSEMBLE_HEADS
        }
    if check:
        entry["check"] = check_decomposition(backbone, data, seed, text_config)
    return entry


def check_decomposition(backbone: str, data: str, seed: int, text_config) -> dict:
    """Full counted steps of bt with 1 and 8 members on one batch against full(1) - head(1) + head(8)."""
    from transformers import AutoConfig

    from vrm.data.collate import PreferenceCollator
    from vrm.models.modeling import VRMForSequenceClassification
    from vrm.models.pooling import backbone_is_causal

    settings = SETTINGS[backbone]
    path = backbone_path(backbone)
    is_causal = backbone_is_causal(AutoConfig.from_pretrained(path))
    size = settings["batch_size"]
    tokenizer, template, pairs = tokenized_pairs(path, data, size, settings["max_length"], is_causal)
    batch = PreferenceCollator(tokenizer.pad_token_id)(pairs[:size])
    full = {}
    for members in (1, 8):
        torch.manual_seed(seed)
        model = VRMForSequenceClassification.from_backbone(path, head_type="bt", ensemble_members=members)
        model.config.response_marker_ids = template.response_marker_ids
        full[members] = step_flops(model, batch)
        del model
    predicted = (
        full[1]
        - head_step_flops("bt", text_config, size, 1, seed)
        + head_step_flops("bt", text_config, size, 8, seed)
    )
    return {"head": "bt", "pairs": size, "full_1": full[1], "full_8": full[8], "predicted_8": predicted}


def measure(backbone: str, data: str, batches: int, seed: int) -> dict:
    from transformers import AutoConfig

    from vrm.data.collate import PreferenceCollator
    from vrm.models.modeling import VRMForSequenceClassification
    from vrm.models.pooling import backbone_is_causal

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
    parser.add_argument(
        "--ensemble_only",
        action="store_true",
        help="Count the heads of bt / vrm ensembles (N = 1, 4, 8) and add them to --output, whose full-step "
        "counts give the step ratios.",
    )
    args = parser.parse_args()
    if args.ensemble_only:
        return ensemble_main(args)
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
    from vrm.data.files import write_json

    write_json(report, args.output)
    print(
        "\n| backbone | causal | prompt share of tokens | " + " | ".join(f"{v} / bt" for v in VARIANTS) + " |"
    )
    print("|---|---|---:|" + "---:|" * len(VARIANTS))
    for name, entry in report["backbones"].items():
        ratios = " | ".join(f"{entry['over_bt'][v]:.4f}" for v in VARIANTS)
        print(f"| {name} | {entry['is_causal']} | {entry['prompt_share_of_tokens']:.3f} | {ratios} |")
    print(f"written to {args.output}")


def ensemble_main(args) -> None:
    """`--ensemble_only`: the "ensemble" block of the existing results file (its full steps kept as they are)."""
    import json

    from vrm.data.files import write_json

    report = {}
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as handle:
            report = json.load(handle)
    started = time.time()
    measured = report.get("backbones", {})
    block = {
        "command": "python benchmarks/head_flops.py " + shlex.join(sys.argv[1:]),
        "method": "step(N) = full step of one head (this file's flops_per_pair) - head(1) + head(N); head(N) "
        "counted on the head alone (sample_pairs, loss with Poisson(1) bootstrap weights, backward)",
        "seed": args.seed,
        "machine": machine(),
        "backbones": {
            name: measure_ensembles(
                name,
                args.data,
                args.seed,
                measured.get(name, {}).get("flops_per_pair"),
                check=name == "minilm",
            )
            for name in args.backbones
        },
    }
    block["wall_seconds"] = time.time() - started
    report["ensemble"] = block
    write_json(report, args.output)
    print(
        "\n| backbone | head | "
        + " | ".join(f"N = {n}: head FLOPs/pair" for n in ENSEMBLE_SIZES)
        + " | "
        + " | ".join(f"step N = {n} / N = 1" for n in ENSEMBLE_SIZES[1:])
        + " |"
    )
    print("|---|---|" + "---:|" * (2 * len(ENSEMBLE_SIZES) - 1))
    for name, entry in block["backbones"].items():
        for head in ENSEMBLE_HEADS:
            flops = " | ".join(f"{entry['head_flops_per_pair'][head][str(n)]:.3g}" for n in ENSEMBLE_SIZES)
            ratios = entry.get("step_over_single_head", {}).get(head, {})
            shown = " | ".join(f"{ratios[str(n)]:.5f}" if ratios else "—" for n in ENSEMBLE_SIZES[1:])
            print(f"| {name} | {head} | {flops} | {shown} |")
        if "check" in entry:
            print(f"check ({name}): {entry['check']}")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
