"""The processes of one data-parallel launch: `accelerate launch`, `torchrun` and `python -m torch.distributed.run`
start the same command once per process and tell each its place through the environment (`RANK`, `WORLD_SIZE`,
`LOCAL_RANK`). `ScoringWorld.detect` reads it; a plain `python` / `vrm` run is a world of one, which scores on
the single-process path.

The processes talk over a gloo group (CPU tensors, whatever device the model is on). `vrm score` streams: rank 0
decides (the output's lock, its manifest, which rows each rank scores) and broadcasts the decision; a barrier marks
the end of scoring, after which rank 0 merges the ranks' part files into the output in input order. `vrm eval` and
`vrm bench bon` need every score before their metrics: each rank scores the groups of sequences
`balanced_shards` gives it and `all_gather` hands every rank the whole result (`vrm.scoring.scores.score_in_shards`),
so every rank computes the same report and rank 0 writes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

# ranks finish their shards at different times (other devices, other row lengths): wait long at the barrier.
# A rank that dies does not leave the others waiting: the launcher ends a launch when one of its processes fails.
BARRIER_TIMEOUT = timedelta(hours=24)


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a whole number") from None


@dataclass(frozen=True)
class ScoringWorld:
    """This process's place in a launch: `rank` of `size` processes, `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def detect(cls) -> ScoringWorld:
        """The world the launcher set in the environment (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`); one process when
        they are not set."""
        size = _environment_int("WORLD_SIZE", 1)
        rank = _environment_int("RANK", 0)
        local_rank = _environment_int("LOCAL_RANK", rank)
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"RANK={rank} WORLD_SIZE={size}: a rank must be in 0..WORLD_SIZE-1")
        return cls(rank=rank, size=size, local_rank=local_rank)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: Any) -> Any:
        """The device this rank scores on: with several processes, `auto` / `cuda` become `cuda:LOCAL_RANK`
        (one GPU per process, as `accelerate launch` and `torchrun` lay them out); anything else is kept."""
        if not self.distributed:
            return device
        import torch

        if str(device) in ("cuda", "auto", "None") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return device

    # ----- communication (gloo, set up on first use) -----------------------------------------------------------
    def _group(self):
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
            stop_when_the_launcher_dies()
        if dist.get_backend() == "gloo":
            return None  # the default group
        global _GLOO_GROUP
        if _GLOO_GROUP is None:  # a group set up by someone else (accelerate on GPUs: nccl)
            _GLOO_GROUP = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
        return _GLOO_GROUP

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._group())
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` on rank 0, in rank order (None on the other ranks)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        gathered = [None] * self.size if self.is_main else None
        dist.gather_object(value, gathered, dst=0, group=self._group())
        return gathered

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value` on every rank, in rank order (any picklable object; tensors on the CPU)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value, group=self._group())
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._group())


_GLOO_GROUP = None


def balanced_shards(groups: list[list[int]], costs: list[int], size: int) -> list[list[int]]:
    """Split `groups` (lists of item indices that must stay together, e.g. the responses of one prompt, which a
    shared-prompt model scores in one pass) into `size` shards of about equal cost: the costliest group first,
    each to the shard with the least cost so far (ties: the lowest rank). Deterministic, so every rank computes
    the same split from the same data. Returns each shard's indices, sorted."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    shards: list[list[int]] = [[] for _ in range(size)]
    load = [0] * size
    for group in sorted(range(len(groups)), key=lambda g: (-costs[g], g)):
        rank = min(range(size), key=lambda r: (load[r], r))
        shards[rank].extend(groups[group])
        load[rank] += costs[group]
    return [sorted(shard) for shard in shards]


def refuse_several_processes(command: str) -> None:
    """A `ValueError` when `command` (which runs in one process) was started by a launcher in several: each process
    would do all the work and write the same outputs over one another."""
    world = ScoringWorld.detect()
    if world.distributed:
        raise ValueError(  # the same line on every rank: the launch prints one refusal, however many ranks
            f"{command} runs in one process, but a launcher (accelerate launch / torchrun) started "
            f"{world.size}: each would do all of it and write the same outputs; run it without the launcher "
            "(vrm score, vrm eval and vrm bench bon split their rows across processes)"
        )


def stop_when_the_launcher_dies(poll_seconds: float = 1.0) -> None:
    """End this process when its launcher (its parent) is gone: a launcher killed with SIGKILL cannot stop its
    ranks, and a rank left waiting at a barrier would hold the output's lock for `BARRIER_TIMEOUT`. What the rank
    has written stays (whole rows only) and a relaunch resumes it."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                print("[vrm] the launcher of this process is gone: stopping (a relaunch resumes)", flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="vrm-launcher-watch", daemon=True).start()


class RankZeroError(ValueError):
    """Raised on ranks other than 0 when rank 0 refused the launch, with rank 0's message: every rank prints the
    same line, so a launch prints one refusal."""
