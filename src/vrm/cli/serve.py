"""`vrm serve`: an HTTP reward server with dynamic batching (`vrm.serving`): OpenRLHF's `/get_reward`, `/score`,
`/health`, `/stats`. Needs the `serve` extra (fastapi, uvicorn).

`--model a --model b` serves both (a request picks one with its `"model"` field; the first is the default),
`--model a --model b --ensemble` serves their deep ensemble as one model, and `--devices cuda:0,cuda:1` loads each
model on each device (one replica, with its own batching worker, per device)."""

from __future__ import annotations

import argparse

from vrm.cli.options import model_paths

HELP = "serve a reward model over HTTP (OpenRLHF /get_reward, /score)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `ServerConfig` field, with its default, and where to listen."""
    from dataclasses import fields

    from vrm.serving.config import ServerConfig

    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help='Directory of a saved vrm model. Repeat it to serve several models (a request\'s "model" field '
        "names one by its directory's base name; the first is the default), or, with --ensemble, a deep ensemble.",
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="Serve the --model directories as one deep ensemble."
    )
    parser.add_argument(
        "--model_id",
        default=None,
        help="Name shown by /health for a single model (default: the model directory's base name).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=8000)
    for item in fields(ServerConfig):
        default = item.default
        parser.add_argument(
            f"--{item.name}",
            type=type(default),
            default=default,
            help=item.metadata["help"],
        )
    parser.add_argument(
        "--devices",
        "--device",
        dest="devices",
        default=None,
        metavar="DEVICES",
        help="torch device, or a comma-separated list of them: one replica of each model per device, each with its "
        "own batching worker; a request goes to the least-loaded replica (cuda:0,cuda:1; cpu,cpu: two CPU "
        "replicas; all: every GPU). Default: cuda if available, else cpu.",
    )
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 is steadier on cores shared with other work).",
    )
    parser.add_argument(
        "--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from vrm.serving.app import run_server, served_model_names
    from vrm.serving.batching import replica_devices
    from vrm.serving.config import ServerConfig

    try:
        config = ServerConfig(**{item.name: getattr(args, item.name) for item in fields(ServerConfig)})
    except ValueError as err:
        args.parser.error(str(err))
    if args.torch_threads is not None and args.torch_threads < 1:
        args.parser.error(f"--torch_threads must be >= 1, got {args.torch_threads}")
    # several --model: several served models, unless --ensemble makes them one
    models = [model_paths(args.parser, args)] if args.ensemble else list(args.model)
    try:
        served_model_names(models, args.model_id)
        devices = replica_devices(args.devices)
    except ValueError as err:
        args.parser.error(str(err))
    run_server(
        models,
        args.host,
        args.port,
        config,
        devices,
        args.log_level,
        args.torch_threads,
        args.model_id,
    )
    return 0
