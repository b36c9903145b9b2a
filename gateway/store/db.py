"""The SQLite store: one file, WAL, synchronous=FULL, numbered migrations.

Two aiosqlite connections: a writer (serialised by a lock; every write transaction is
`BEGIN IMMEDIATE` so it fails fast rather than deadlocks) and a reader that only ever sees
committed data. The hot path's group commits (`Database.write`) run instead as plain
functions on a writer thread of their own, under the same lock: aiosqlite costs the event loop
one thread hand-off per statement (~30-50 us of loop time each under load), a `write` costs
one per transaction, and the writes submitted while one is in flight share the next
transaction (one commit, one fsync). SQL lives in the store modules only, so another backend
can replace this one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import stat
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gateway.addresses import subject_form
from gateway.errors import StoreError
from gateway.files import make_private_dirs
from gateway.policy.rules import invalid_consent_method
from gateway.urls import shown_url

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
MIGRATION_BUSY_MS = 600_000  # while migrations are applied: another process's may be long
T = TypeVar("T")


def create_private_file(path: Path) -> None:
    """Create `path` (and its folder) readable by the owner only, if it does not exist yet.

    A symbolic link there is refused (OSError ELOOP), as is anything but a regular file: in a
    folder others can write to, a link planted at the store's path had the gateway chmod and
    then write over whatever file it named. The mode is set on the file opened, not by name.
    """
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


# Functions of one argument every connection of the store has (the writer thread's too):
# one person's rows, whatever the case or form of the address (store/subject.py); a URL as
# it may be recorded, without its secrets (the notifications outbox).
SQL_FUNCTIONS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("subject_form", subject_form), ("shown_url", shown_url),
    ("invalid_consent_method", invalid_consent_method))

AUDIT_RECHAIN_VERSION = 26  # the migration after whose SQL the audit rows are re-chained
# the WAL file is cut back to this after a checkpoint (a big transaction, an hour's content
# freed, left it at hundreds of MB for as long as the gateway ran)
WAL_KEPT_BYTES = 64 * 1024 * 1024
WAL_DUE_TASK = "wal-empty-due"  # a row in `maintenance`: Database.empty_wal_later
CHECKPOINT_BUSY_MS = 100  # empty_wal's wait for readers, each try
CONNECT_TRIES = 5

INSERT_CHUNK = 128  # rows per multi-row INSERT at most
MAX_VARIABLES = 999  # SQLite's limit before 3.32 (32,766 since): a statement stays under it


@lru_cache(maxsize=64)
def _values_sql(head: str, width: int, rows: int, tail: str) -> str:
    group = "(" + ",".join("?" * width) + ")"
    return head + " VALUES " + ",".join([group] * rows) + tail


def value_chunks(rows: Sequence[Sequence[Any]]) -> Iterator[Sequence[Sequence[Any]]]:
    """`rows` cut for multi-row statements: at most INSERT_CHUNK rows and MAX_VARIABLES values
    a chunk, and power-of-two sizes, so a statement has few distinct forms in the cache."""
    if not rows:
        return
    most = min(INSERT_CHUNK, 1 << ((MAX_VARIABLES // len(rows[0])).bit_length() - 1))
    start, total = 0, len(rows)
    while start < total:
        size = min(most, 1 << ((total - start).bit_length() - 1))
        yield rows[start:start + size]
        start += size


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]],
                tail: str = "") -> None:
    """`head` ("INSERT INTO t (a, b)") for every row, as a few multi-row statements, with
    `tail` (an ON CONFLICT clause) after the VALUES.

    For the writer thread, beside the event loop: executemany runs one sqlite3_step per row,
    and the sqlite3 module gives the GIL back and takes it again around each step, so 2,000
    audit rows took the GIL from the loop 2,000 times. Here that is a few dozen times, and
    the insert itself is faster (2,000 audit rows: 9.5 -> 5-6 ms).
    """
    for chunk in value_chunks(rows):
        conn.execute(_values_sql(head, len(chunk[0]), len(chunk), tail),
                     [v for row in chunk for v in row])


@lru_cache(maxsize=64)
def _with_values_sql(table: str, width: int, rows: int, statement: str) -> str:
    group = "(" + ",".join("?" * width) + ")"
    return f"WITH {table} AS (VALUES {','.join([group] * rows)}) {statement}"


def with_rows(conn: sqlite3.Connection, table: str, rows: Sequence[Sequence[Any]],
              statement: str, params: Sequence[Any] = ()) -> list[Any]:
    """Run `statement` (a SELECT of one aggregate row, or an INSERT ... SELECT) over `rows`
    as the common table `table` ("k(a, b)"), a chunk of rows at a time, its own `params`
    bound after the rows'. The first column of each chunk's row (None for an INSERT).

    A set of keys is one statement on the writer thread, not one per key: the thread gives
    the GIL back around each statement, and a busy event loop can keep it the whole switch
    interval each time."""
    results = []
    for chunk in value_chunks(rows):
        found = conn.execute(_with_values_sql(table, len(chunk[0]), len(chunk), statement),
                             [v for row in chunk for v in row] + list(params)).fetchall()
        results.append(found[0][0] if found else None)
    return results


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    found = []
    for entry in resources.files("gateway.store").joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class _FunctionFailed(Exception):
    """A write function of a shared transaction failed (the transaction is rolled back)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


class Database:
    """Owns the connections to one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._sync_executor: ThreadPoolExecutor | None = None
        self._sync_conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._writing: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> Database:
        self._closed = False
        try:
            create_private_file(self.path)
        except OSError as exc:
            why = ("it is a symbolic link (refused: name the real file in store.url)"
                   if exc.errno == errno.ELOOP else exc.strerror or str(exc))
            raise StoreError(f"cannot create the store {self.path}: {why}") from None
        try:
            self._writer = await self._connect()
            await self._migrate()
            self._reader = await self._connect()
        except sqlite3.DatabaseError as exc:
            await self.close()
            why = str(exc)
            if "readonly" in why and not os.access(self.path.parent, os.W_OK):
                # SQLite's words blame the file; its -wal and -shm files beside it are what
                # cannot be made (ops review)
                why += (f" (the folder {self.path.parent} must be writable: the store's "
                        "-wal and -shm files are made beside it)")
            raise StoreError(f"cannot open the store {self.path}: {why}") from exc
        except BaseException:
            await self.close()  # (the connections' threads would keep the process alive)
            raise
        return self

    async def _connect(self) -> aiosqlite.Connection:
        for attempt in range(CONNECT_TRIES):
            try:
                return await self._connect_once()
            except sqlite3.OperationalError as exc:
                # processes opening a new store together: its switch to WAL needs the file
                # to itself and can answer "locked" without waiting (seen 1 time in ~8)
                if "locked" not in str(exc) or attempt == CONNECT_TRIES - 1:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect_once(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so a 250 survives power loss (Postfix
            # fsyncs its queue file before the 250 too).
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
            await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            for name, function in SQL_FUNCTIONS:
                await conn.create_function(name, 1, function, deterministic=True)
        except BaseException:
            # its thread is no daemon: left open (a file that is no database), it kept the
            # process alive after the error was printed, `serve` deaf to SIGTERM
            await conn.close()
            raise
        return conn

    async def _migrate(self) -> None:
        conn = self.writer
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
        async with conn.execute("SELECT version FROM schema_migrations") as cur:
            applied = {row[0] for row in await cur.fetchall()}
        known = _migrations()
        newer = sorted(applied - {m[0] for m in known})
        if newer and newer[-1] > known[-1][0]:
            # a newer program migrated this store (an upgrade rolled back): this one would
            # write rows the newer one's tables and checks do not expect (an older version
            # broke the audit chain so)
            raise StoreError(f"{self.path}: the store is at schema version {newer[-1]}, "
                             f"newer than this program's ({known[-1][0]}): run the newer "
                             "version of the gateway on it (or restore a backup made "
                             "before the upgrade)")
        pending = [m for m in known if m[0] not in applied]
        if pending:
            # another process applying one holds the write lock for as long as it takes (a
            # table rebuilt: 022 takes ~2 s per million audit rows): wait for it, then find
            # it applied, rather than fail the start after the usual 5 s
            await conn.execute(f"PRAGMA busy_timeout={MIGRATION_BUSY_MS}")
        try:
            await self._apply(pending)
        finally:
            if pending:
                await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    async def _apply(self, pending: list[tuple[int, str, str]]) -> None:
        conn = self.writer
        for version, name, sql in pending:
            log.info("store: applying migration %s", name)
            # foreign keys off while a migration runs (it cannot change inside a
            # transaction): a table rebuilt (new table, copy, drop, rename: SQLite's own
            # procedure, lang_altertable.html) keeps the rows that reference it; dropping
            # the old one would otherwise delete them ON DELETE CASCADE. The references are
            # checked before the commit.
            await conn.execute("PRAGMA foreign_keys=OFF")
            try:
                # what a store already holds (edited by hand, say) does not stop the upgrade
                already = len(await self._broken_references())
                try:
                    # its row first: another process (a CLI command started with `serve`)
                    # that applied it meanwhile is found under the write lock, not half-way
                    await conn.executescript(
                        "BEGIN IMMEDIATE;\n"
                        f"INSERT INTO schema_migrations (version, name, applied_at) "
                        f"VALUES ({version}, '{name}', {time.time()});\n" + sql)
                except sqlite3.IntegrityError:
                    if conn.in_transaction:
                        await conn.execute("ROLLBACK")
                    async with conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?",
                                            (version,)) as cur:
                        if await cur.fetchone():
                            log.info("store: migration %s was applied by another process",
                                     name)
                            continue
                    raise
                if version == AUDIT_RECHAIN_VERSION:  # in the same transaction
                    from gateway.store.audit import rechain_for_026  # (audit imports db)

                    await rechain_for_026(conn)
                broken = await self._broken_references()
                if len(broken) > already:
                    raise sqlite3.DatabaseError(
                        f"migration {name} would leave {len(broken) - already} more rows "
                        f"referencing rows that do not exist, e.g. {broken[-1]}; nothing was "
                        "changed")
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
            finally:
                await conn.execute("PRAGMA foreign_keys=ON")

    async def _broken_references(self) -> list[tuple[Any, ...]]:
        async with self.writer.execute("PRAGMA foreign_key_check") as cur:
            return [tuple(row) for row in await cur.fetchall()]

    async def close(self) -> None:
        self._closed = True
        if self._writing is not None:
            await asyncio.wait([self._writing])  # what was submitted is committed first
        if self._sync_executor is not None:
            executor, self._sync_executor = self._sync_executor, None
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
            executor.shutdown(wait=True)
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in a write transaction (BEGIN IMMEDIATE ... COMMIT) on the writer
        thread, and return its result once committed.

        Writes submitted while another is in flight share the next transaction: the hot
        path's message commits, sent marks, objections and audit rows each wait for one commit
        (one fsync) instead of one each in turn. So `fn` must change nothing but the database,
        and may run more than once: when it fails, the shared transaction is rolled back, its
        caller gets the failure, and the others run again without it.

        `fn` should only execute statements: its parameters are best built before, in the
        event loop, so that the two threads do not take turns on the GIL. SQLite errors
        become StoreError, as in `transaction`. A caller that is cancelled does not take its
        write back: it is committed with the others.
        """
        if self._writer is None or self._closed:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, future))
        if self._writing is None:
            self._writing = loop.create_task(self._write_pending(loop))
        result: T = await future
        return result

    async def _write_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sync_executor is None:
            self._sync_executor = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                async with self._write_lock:
                    running = loop.run_in_executor(self._sync_executor, self._run_writes,
                                                   [fn for fn, _ in batch])
                    try:
                        outcomes = await asyncio.shield(running)
                    except asyncio.CancelledError:
                        # the transaction runs to its end on the thread: keep the lock until
                        # then, so no other write starts beside it and waits on SQLite's busy
                        # handler
                        await asyncio.wait([running])
                        raise
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(value)
                batch = []
                # one loop turn before the next transaction: the group committers whose items
                # just landed submit their next batch now, and it shares that transaction
                # with what waited meanwhile (a message commit with the sent marks, the
                # objections) instead of waiting a whole write for its own
                await asyncio.sleep(0)
        except BaseException as exc:
            for _, future in batch + self._pending:
                if not future.done():
                    future.set_exception(StoreError(f"store write failed: {exc!r}"))
            self._pending = []
            raise
        finally:
            self._writing = None

    def _run_writes(self, fns: list[Callable[[sqlite3.Connection], Any]]
                    ) -> list[tuple[bool, Any]]:
        """On the writer thread: every function in one transaction; one that fails is left
        out and the rest run again; a store failure (BEGIN, COMMIT) is everybody's."""
        outcomes: list[tuple[bool, Any] | None] = [None] * len(fns)
        left = list(range(len(fns)))
        while left:
            try:
                results = self._transaction([fns[i] for i in left])
            except _FunctionFailed as failed:
                outcomes[left.pop(failed.index)] = (False, failed.error)
                continue
            except Exception as exc:
                for i in left:
                    outcomes[i] = (False, exc)
                break
            for i, result in zip(left, results, strict=True):
                outcomes[i] = (True, result)
            break
        return [outcome for outcome in outcomes if outcome is not None]

    def _transaction(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        try:
            if self._sync_conn is None:
                conn = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
                for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                               f"journal_size_limit={WAL_KEPT_BYTES}",
                               f"busy_timeout={BUSY_TIMEOUT_MS}"):
                    conn.execute(f"PRAGMA {pragma}")
                for name, function in SQL_FUNCTIONS:
                    conn.create_function(name, 1, function, deterministic=True)
                self._sync_conn = conn
            conn = self._sync_conn
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from exc
        results = []
        try:
            for index, fn in enumerate(fns):
                try:
                    result = fn(conn)
                    if isinstance(result, sqlite3.Cursor):
                        # its statement would be finalised in the event loop's thread while
                        # this one uses the connection: SQLITE_MISUSE ("bad parameter or
                        # other API misuse")
                        result.close()
                        raise TypeError("a Database.write function must not return a cursor")
                except Exception as exc:
                    # cursors left in the failed function's frames must go here, not in the
                    # event loop's thread (see above)
                    traceback.clear_frames(exc.__traceback__)
                    if isinstance(exc, sqlite3.Error):
                        error: Exception = StoreError(f"store write failed: {exc}")
                        error.__cause__ = exc
                    else:
                        error = exc
                    raise _FunctionFailed(index, error) from None
                results.append(result)
            conn.execute("COMMIT")
            return results
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"store write failed: {exc}") from exc
            raise

    async def write_one(self, sql: str, params: Iterable[Any] = (), many: bool = False) -> int:
        """One statement (`many`: executemany over `params`) as one write transaction; the
        number of rows it changed."""
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.executemany(sql, params) if many else conn.execute(sql, tuple(params))
            changed = cur.rowcount
            cur.close()
            return changed

        return await self.write(run)

    def _close_sync(self) -> None:
        if self._sync_conn is not None:
            self._sync_conn.close()
            self._sync_conn = None

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is not open")
        return self._reader

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error.

        SQLite errors (locked, full, read-only, corrupt) become StoreError, which the SMTP side
        answers with 451 4.3.0: the client keeps the message and retries.
        """
        async with self._write_lock:
            conn = self.writer
            begin = asyncio.ensure_future(conn.execute("BEGIN IMMEDIATE"))
            try:
                # shielded: a caller cancelled while BEGIN waits on SQLite's busy handler (a
                # stop cancelling the queue scanner) must not leave this shared connection
                # inside a transaction nobody ends, holding the store's write lock
                await asyncio.shield(begin)
            except asyncio.CancelledError:
                await asyncio.wait([begin])
                if not begin.cancelled() and begin.exception() is None:
                    await self._rollback(conn)
                raise
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from exc
            try:
                yield conn
                await asyncio.shield(conn.execute("COMMIT"))
            except BaseException as exc:
                await self._rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"store write failed: {exc}") from exc
                raise

    @staticmethod
    async def _rollback(conn: aiosqlite.Connection) -> None:
        """End the connection's transaction, whatever cancels the caller meanwhile."""
        rollback = asyncio.ensure_future(conn.execute("ROLLBACK"))
        await asyncio.wait([rollback])  # not cancelled with us
        if not rollback.cancelled():
            rollback.exception()  # retrieved: "no transaction is active" is no failure here

    async def empty_wal(self, tries: int = 50) -> bool:
        """A TRUNCATE checkpoint: the WAL's old page images (rows deleted since, in clear)
        go into the file, whose deleted cells secure_delete zeroed, and the WAL is emptied.
        True when it could be; False when a reader held a snapshot all along."""
        for attempt in range(tries):
            if attempt:
                await asyncio.sleep(0.5)  # the lock let go meanwhile: commits go on
            async with self._write_lock:
                try:
                    # a reader holding a snapshot makes the checkpoint wait busy_timeout (5 s)
                    # with SQLite's write lock held: every commit of every process behind it
                    await self.writer.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
                    try:
                        async with self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)"
                                                       ) as cur:
                            row = await cur.fetchone()
                    finally:
                        await self.writer.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                except sqlite3.Error as exc:
                    raise StoreError(f"store checkpoint failed: {exc}") from exc
            if not (row and row[0]):
                return True
        return False

    async def empty_wal_later(self) -> None:
        """Note that the WAL still holds page images of rows deleted for privacy (an erasure,
        a purge) that it could not be emptied of: a running `serve` retries `empty_wal`
        each minute until it can (`empty_wal_if_due`). SQLite's own checkpoints never
        shrink or zero the WAL file, and under `serve` its last connection never closes."""
        await self.write_one("INSERT OR REPLACE INTO maintenance (task, ran_at) VALUES (?, ?)",
                             (WAL_DUE_TASK, time.time()))

    async def empty_wal_if_due(self, tries: int = 3) -> bool | None:
        """`empty_wal` when `empty_wal_later` asked for it: None when it had not, else
        whether the WAL is empty now (the request kept until it is)."""
        if await self.fetchone("SELECT 1 FROM maintenance WHERE task = ?",
                               (WAL_DUE_TASK,)) is None:
            return None
        if not await self.empty_wal(tries):
            return False
        await self.write_one("DELETE FROM maintenance WHERE task = ?", (WAL_DUE_TASK,))
        return True

    async def compact(self) -> bool:
        """Rewrite the file so that nothing deleted survives in it: VACUUM rebuilds every page
        (free pages and the slack of live ones keep old bytes otherwise), and a TRUNCATE
        checkpoint before and after empties the WAL, which holds old page images too.

        True when the WAL could be emptied; False when a reader of another process held a
        snapshot all along (its pages go at the next checkpoint). Blocks writers meanwhile:
        seconds on a large store.
        """
        async with self._write_lock:
            try:
                for statement in ("PRAGMA wal_checkpoint(TRUNCATE)", "VACUUM"):
                    async with self.writer.execute(statement):
                        pass  # closed at once: VACUUM refuses to run beside an open statement
                busy = True
                for _ in range(50):
                    async with self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
                        row = await cur.fetchone()
                    busy = bool(row and row[0])
                    if not busy:
                        break
                    await asyncio.sleep(0.1)
            except sqlite3.Error as exc:
                raise StoreError(f"store compaction failed: {exc}") from exc
        return not busy

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Every row, in one thread hand-off (execute + fetch + close together)."""
        try:
            return list(await self.reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row (the statement should select one), in one thread hand-off."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None
