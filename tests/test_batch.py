"""Group commit: concurrent items share a write; nobody is answered before their write."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence

import pytest

from gateway.batch import GroupCommitter
from gateway.errors import StoreError
from gateway.store.queue import Copy, IncomingMessage, QueueStore


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


async def test_a_failed_store_fails_every_item_of_its_batch_only():
    broken = False
    writes: list[list[str]] = []

    async def write(items: Sequence[str]) -> list[str]:
        writes.append(list(items))
        failing = broken
        await asyncio.sleep(0.01)
        if failing:  # the store itself: every item would meet it again
            raise StoreError("store write failed: database or disk is full") \
                from sqlite3.OperationalError("database or disk is full")
        return list(items)

    committer: GroupCommitter[str, str] = GroupCommitter(write)
    a = asyncio.create_task(committer.submit("a"))
    await asyncio.sleep(0.005)  # a's write has begun
    b, c = (asyncio.create_task(committer.submit(x)) for x in "bc")
    broken = True
    assert await a == "a"
    for task in (b, c):
        with pytest.raises(StoreError, match="disk is full"):
            await task
    assert writes == [["a"], ["b", "c"]]  # not tried again item by item
    broken = False
    assert await committer.submit("d") == "d"  # the committer recovers


@pytest.mark.parametrize("failure", [
    UnicodeEncodeError("utf-8", "\udce9", 0, 1, "surrogates not allowed"),
    StoreError("store write failed: UNIQUE constraint failed"),
], ids=["not-bindable", "constraint"])
async def test_an_item_the_write_cannot_take_fails_alone_not_its_whole_batch(
        failure: Exception):
    writes: list[list[str]] = []

    async def write(items: Sequence[str]) -> list[str]:
        writes.append(list(items))
        await asyncio.sleep(0.01)
        if "bad" in items:
            if isinstance(failure, StoreError):
                raise failure from sqlite3.IntegrityError("UNIQUE constraint failed")
            raise failure
        return [item.upper() for item in items]

    committer: GroupCommitter[str, str] = GroupCommitter(write)
    first = asyncio.create_task(committer.submit("first"))
    await asyncio.sleep(0)
    batch = [asyncio.create_task(committer.submit(x)) for x in ("good", "bad", "other")]
    assert await first == "FIRST"
    assert await batch[0] == "GOOD"
    with pytest.raises(type(failure)):
        await batch[1]
    assert await batch[2] == "OTHER"
    assert writes == [["first"], ["good", "bad", "other"], ["good"], ["bad"], ["other"]]


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


async def test_a_message_the_store_cannot_bind_fails_alone_in_a_group_commit(db):
    queue = QueueStore(db, "me")
    committer: GroupCommitter[IncomingMessage, list[Copy]] = GroupCommitter(
        queue.commit_messages)

    def incoming(queue_id: str, helo: str) -> IncomingMessage:
        return IncomingMessage(queue_id, time.time(), "crm", "127.0.0.1", "news@example.com",
                               b"Subject: x\r\n\r\nbody\r\n", ("jane@example.net",),
                               helo=helo)

    first = asyncio.create_task(committer.submit(incoming("Q0", "a.example")))
    await asyncio.sleep(0)
    good, bad = (asyncio.create_task(committer.submit(incoming(queue_id, helo)))
                 for queue_id, helo in (("Q1", "b.example"), ("Q2", "pc-r\udce9ception")))
    assert len(await first) == 1
    assert len(await good) == 1
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: SQLite cannot bind it
        await bad
    assert {e.message_id for e in await queue.list()} == {"Q0", "Q1"}
