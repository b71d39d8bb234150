"""The report writer of every study: mean ± std cells, markdown tables and the report files.

Tables are `vrm.evaluation.text.markdown_table` (the format of `vrm eval --markdown`); `report.json` is written
atomically by `vrm.data.files.write_json`, `report.md` through `atomic_output`, so a report is whole or absent.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from vrm.data.files import atomic_output, write_json
from vrm.evaluation.text import escape_cell, markdown_table

__all__ = [
    "command_line",
    "escape_cell",
    "fmt",
    "machine",
    "markdown_table",
    "write_markdown",
    "write_report",
]


def fmt(stat: Mapping[str, float] | None, digits: int = 3) -> str:
    """`mean ± std` of a `stats.mean_std` entry; `—` where no seed has the value."""
    if not stat or stat.get("n", 0) == 0:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """`python -m <module> <arguments>`: how a report was made, for the report itself."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def write_markdown(markdown: str, path: str) -> None:
    with atomic_output(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.write(markdown)


def write_report(report: Mapping[str, Any], markdown: str, directory: str, name: str = "report") -> None:
    """`<directory>/<name>.json` and `<directory>/<name>.md`."""
    write_json(report, os.path.join(directory, f"{name}.json"))
    write_markdown(markdown, os.path.join(directory, f"{name}.md"))


def run_main(main, module: str) -> int:
    """A study's `main()`, with a bad file, option or value as one line `python -m MODULE: error: ...` and exit 1
    instead of a traceback."""
    import sys

    try:
        return main()
    except (OSError, ValueError) as err:
        print(f"python -m {module}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
