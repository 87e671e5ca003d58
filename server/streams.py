"""Merging async streams: the items of several sources as they come, in one stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")


class _Failed:
    def __init__(self, error: Exception):
        self.error = error


_DONE = object()


async def merged(sources: Sequence[AsyncIterator[T]]) -> AsyncGenerator[T, None]:
    """Every item of every source, in arrival order. The first error of any source is raised
    here; closing the merged stream (or an error) cancels the sources still running."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump(source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
        except Exception as exc:  # handed to the consumer, never lost
            queue.put_nowait(_Failed(exc))
        finally:
            queue.put_nowait(_DONE)

    tasks = [asyncio.create_task(pump(source)) for source in sources]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, _Failed):
                raise item.error
            else:
                yield item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
