"""`vrm synth`: write the synthetic preference world (`vrm.data.synthetic`) that the quickstart trains on."""

from __future__ import annotations

import argparse

HELP = "write the synthetic preference world used by the quickstart"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vrm.data.synthetic import WorldConfig

    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_pairs", type=int, default=WorldConfig.train_pairs)
    parser.add_argument("--test_pairs", type=int, default=WorldConfig.test_pairs)
    parser.add_argument("--seed", type=int, default=WorldConfig.seed)


def run(args: argparse.Namespace) -> int:
    from vrm.data.synthetic import WorldConfig, write_world

    config = WorldConfig(train_pairs=args.train_pairs, test_pairs=args.test_pairs, seed=args.seed)
    for name, path in write_world(args.output_dir, config).items():
        print(f"[vrm] {name}: {path}")
    return 0
