"""The dynamic batcher's shutdown: every request it holds is answered."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from vrm.scoring.scores import SequenceScores
from vrm.serving.batching import BatcherStoppedError, DynamicBatcher


def test_stop_fails_requests_whose_items_are_all_in_the_batch_being_computed():
    entered, release = threading.Event(), threading.Event()

    def slow_score(sequences, prompt_lengths):
        entered.set()
        release.wait(10)
        n = len(sequences)
        return SequenceScores(torch.zeros(n), torch.zeros(n), torch.zeros(n, 1), torch.zeros(n, 1))

    async def scenario():
        batcher = DynamicBatcher(slow_score, max_wait_ms=0)
        await batcher.start()
        request = asyncio.ensure_future(batcher.submit([[1, 2, 3]], [1]))
        await asyncio.wait_for(asyncio.to_thread(entered.wait, 10), 10)  # its only item is being scored
        assert batcher.queued == 0 and not batcher._active
        try:
            await asyncio.wait_for(batcher.stop(), 5)
            with pytest.raises(BatcherStoppedError):
                await asyncio.wait_for(request, 5)  # answered promptly, not left hanging
        finally:
            release.set()

    asyncio.run(scenario())
