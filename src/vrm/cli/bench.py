"""`vrm bench bon`: Best-of-N over-optimization, the gold score of each proxy's best-of-n pick as n grows (Gao et
al., 2022), against a gold reward model or a column of gold scores (`vrm.evaluation.best_of_n`)."""

from __future__ import annotations

import argparse

from vrm.cli.options import add_device_arguments

HELP = "benchmarks: `vrm bench bon` (Best-of-N over-optimization against a gold scorer)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="<benchmark>", required=True)
    bon = benchmarks.add_parser(
        "bon",
        help="Best-of-N over-optimization: the gold score of each proxy's best-of-n pick",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bon.set_defaults(parser=bon)
    add_bon_arguments(bon)


def add_bon_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", help="Pool file: prompt + responses (+ gold scores) per row.")
    parser.add_argument("--proxy", action="append", default=[], help="Proxy reward model (repeatable).")
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="Use the --proxy models as one proxy: their deep ensemble (mean reward), not side by side.",
    )
    parser.add_argument("--gold_model", default=None, help="Gold reward model that scores the candidates.")
    parser.add_argument("--gold_column", default=None, help="Column of gold scores in the pool file.")
    parser.add_argument(
        "--n",
        "--best_of",
        dest="n",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16, 32],
        help="The n of best-of-n (under torchrun write --best_of: its own parser takes --n for one of its options).",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--output", default="bon.json", help="JSON results (and the pool output of --build_pool)."
    )
    parser.add_argument("--plot", default=None, help="PNG of the curves.")
    parser.add_argument(
        "--build_pool", default=None, help="Build a pool file from this preference file instead."
    )
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument(
        "--conservative_lambda",
        type=float,
        default=0.0,
        help="Proxies rank candidates by reward - lambda * reward_std (lambda >= 0).",
    )
    parser.add_argument(
        "--embedding_cache", default=None, help="Backbone states of frozen-backbone proxies are cached here."
    )
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import os
    import platform
    import shlex

    import numpy as np
    import torch

    from vrm.data.files import write_json
    from vrm.evaluation.best_of_n import bon_curve, build_pool, plot_curves, read_pool, score_pool
    from vrm.scoring.conservative import check_conservative_lambda
    from vrm.scoring.device import resolve
    from vrm.scoring.loading import load_scorer

    try:
        check_conservative_lambda(args.conservative_lambda, "--conservative_lambda")
    except ValueError as err:
        args.parser.error(str(err))
    if any(n < 1 for n in args.n):
        args.parser.error(f"--n / --best_of: every n of best-of-n must be >= 1, got {args.n}")
    loading = {"device": args.device, "dtype": args.dtype, "trust_remote_code": args.trust_remote_code}
    resolve(args.device, args.dtype)  # a bad --device / --dtype fails before any model loads
    from vrm.scoring.data_parallel import ScoringWorld

    world = ScoringWorld.detect()  # several processes under torchrun / accelerate launch: each scores a part
    if world.distributed and args.embedding_cache:
        args.parser.error(
            f"--embedding_cache with {world.size} processes: the ranks would write the same cache files; "
            "run in one process to use the cache"
        )
    loading["device"] = world.device(args.device)
    if args.build_pool:
        if not world.is_main:  # no scoring: rank 0 builds the pool alone
            return 0
        kept = build_pool(args.build_pool, args.output)
        print(f"[vrm] pool of {kept} prompts written to {args.output}")
        return 0
    if not args.pool or not args.proxy:
        args.parser.error("--pool and at least one --proxy are needed (or --build_pool)")
    if (args.gold_model is None) == (args.gold_column is None):
        args.parser.error("give exactly one of --gold_model and --gold_column")
    pool = read_pool(args.pool, args.gold_column)
    progress = not args.no_progress and world.is_main
    if args.gold_column:
        gold = [np.asarray([float(v) for v in row[args.gold_column]], dtype=np.float64) for row in pool]
    else:
        gold_scorer = load_scorer(args.gold_model, batch_size=args.batch_size, world=world, **loading)
        gold = score_pool(gold_scorer, pool, progress)
    if args.ensemble and len(args.proxy) < 2:
        args.parser.error("--ensemble needs at least two --proxy (the models of the deep ensemble)")
    results = {}
    for path in [args.proxy] if args.ensemble else args.proxy:
        cache = args.embedding_cache
        scorer = load_scorer(path, batch_size=args.batch_size, embedding_cache=cache, world=world, **loading)
        proxy = score_pool(scorer, pool, progress, args.conservative_lambda)
        results[path if isinstance(path, str) else " + ".join(path)] = bon_curve(proxy, gold, args.n)
    if not world.is_main:  # every rank holds the same curves: rank 0 prints and writes them
        return 0
    print(f"{'proxy':<40} " + " ".join(f"{'n=' + str(n):>8}" for n in args.n))
    for path, curve in results.items():
        print(f"{os.path.basename(path.rstrip('/')):<40} " + " ".join(f"{p['gold']:>8.3f}" for p in curve))
    report = {
        "command": "vrm bench " + shlex.join(args.argv),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "pool": args.pool,
        "prompts": len(pool),
        "candidates": int(sum(len(row["responses"]) for row in pool)),
        "gold": args.gold_model or f"column {args.gold_column}",
        "conservative_lambda": args.conservative_lambda,
        "estimator": "exact expectation over all n-subsets of each pool (Gao et al., 2022)",
        "curves": results,
    }
    write_json(report, args.output)
    if args.plot:
        plot_curves(results, args.plot)
    print(f"[vrm] best-of-n results written to {args.output}" + (f" and {args.plot}" if args.plot else ""))
    return 0
