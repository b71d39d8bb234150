"""Nested training subsets: one random ordering of the training pairs per seed; size n is its first n pairs.

Every head at a seed sees the same pairs (a paired comparison), and the pairs of a smaller size are a subset of
those of every larger size at that seed (a curve measures more data, not other data).
"""

from __future__ import annotations

import hashlib

import numpy as np

SUBSET_STREAM = 20260  # the orderings' random stream, apart from every training seed's


def ordering(available: int, seed: int) -> np.ndarray:
    """A permutation of range(available), fixed by `seed`."""
    return np.random.default_rng([SUBSET_STREAM, seed]).permutation(available)


def nested_subset(available: int, n: int, seed: int) -> list[int]:
    """The training pairs of size `n` at `seed`: the first n of `ordering(available, seed)`."""
    if not 0 < n <= available:
        raise ValueError(f"subset size {n} is outside 1..{available}")
    return [int(i) for i in ordering(available, seed)[:n]]


def subset_digest(indices: list[int]) -> str:
    """A short hash of a subset (as a set), recorded in each run file so its training pairs can be checked."""
    return hashlib.sha1(np.asarray(sorted(indices), dtype=np.int64).tobytes()).hexdigest()[:12]
