"""Group commit: concurrent items share a write; nobody is answered before their write."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.batch import GroupCommitter


async def test_items_arriving_during_a_write_share_the_next_one():
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            await release.wait()  # the first write is slow (an fsync)
        return [i * 10 for i in items]

    committer: GroupCommitter[int, int] = GroupCommitter(write)
    first = asyncio.create_task(committer.submit(1))
    await asyncio.sleep(0)
    others = [asyncio.create_task(committer.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in [first, *others])  # nobody answered before the write
    release.set()
    assert await first == 10
    assert [await t for t in others] == [20, 30, 40]
    assert batches == [[1], [2, 3, 4]]


async def test_a_failed_write_fails_every_item_of_its_batch_only():
    calls = 0

    async def write(items: Sequence[str]) -> list[str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 2:
            raise OSError("disk full")
        return list(items)

    committer: GroupCommitter[str, str] = GroupCommitter(write)
    a = asyncio.create_task(committer.submit("a"))
    await asyncio.sleep(0)
    b, c = (asyncio.create_task(committer.submit(x)) for x in "bc")
    assert await a == "a"
    for task in (b, c):
        with pytest.raises(OSError, match="disk full"):
            await task
    assert await committer.submit("d") == "d"  # the committer recovers


async def test_a_lingering_committer_gathers_what_arrives_meanwhile_into_one_write():
    batches: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def write(items: Sequence[int]) -> list[None]:
        batches.append((loop.time(), list(items)))
        return [None] * len(items)

    committer: GroupCommitter[int, None] = GroupCommitter(write, linger=0.2)
    started = loop.time()
    tasks = [asyncio.create_task(committer.submit(1))]
    for i in (2, 3, 4):
        await asyncio.sleep(0.02)
        tasks.append(asyncio.create_task(committer.submit(i)))
    await asyncio.gather(*tasks)
    assert [items for _, items in batches] == [[1, 2, 3, 4]]
    assert batches[0][0] - started >= 0.19  # the first item waited for the others
    await committer.submit(5)  # a lone item is written too, after its own linger
    assert [items for _, items in batches] == [[1, 2, 3, 4], [5]]
