"""Group commit: items submitted while a write is in flight go together in the next one.

The batch grows with the load and a lone item is never delayed: one transaction (one fsync)
serves every message accepted, or every copy sent, meanwhile. Each submitter waits for the
write that holds its item, so nobody is told "done" before the commit. An item the write
cannot take fails alone: the others of its batch are written again, each on its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from gateway.errors import StoreError

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommitter(Generic[Item, Result]):
    def __init__(self, write: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
                 linger: float = 0.0) -> None:
        """`write` takes a batch and returns one result per item, in order.

        `linger` (seconds): how long the first item of a batch waits for others before the
        write starts. Only for writes nobody waits on (the audit of a transaction that ended,
        a purge mark): each write is a transaction on the store's writer thread, whose every
        statement takes the interpreter lock back from the event loop.
        """
        self._write = write
        self._linger = linger
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining = False
        # the loop of the first submit, kept: on Python 3.11 asyncio.get_running_loop() makes a
        # getpid() system call each time (it checks for a fork), and this is on every RCPT
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, item: Item) -> Result:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            if self._linger:
                await asyncio.sleep(self._linger)
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as exc:
                    if len(batch) > 1 and not _store_wide(exc):
                        # one item the write could not take (text SQLite cannot bind, a
                        # bug): each is written alone, so only that one's submitter fails
                        await self._write_each(batch)
                        continue
                    for _, future in batch:  # every submitter of this batch sees the failure
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = False

    async def _write_each(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        for item, future in batch:
            try:
                [result] = await self._write([item])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(result)


def _store_wide(exc: Exception) -> bool:
    """A failure of the store itself (locked, full, read-only, I/O: sqlite3.OperationalError
    under StoreError), which every item would meet again: not retried item by item."""
    return isinstance(exc, StoreError) and (
        exc.__cause__ is None or isinstance(exc.__cause__, sqlite3.OperationalError))
