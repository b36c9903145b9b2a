"""The ledger reader process: RCPT lookups beside the SMTP event loop, without its GIL.

`gateway serve` reads the recipients' facts here (unless `store.ledger_reads = "inline"` has
it read them on the event loop itself while the pages are cached and the database unlocked:
store/ledger.py), rather than on a thread of its own process. A thread shares the interpreter
lock with the event loop: a batch of lookups waited for it before its SQL could start and again
before its answer could go back, ~0.5 ms each at the median under 20 busy sessions
(bench/README.md), and every RCPT of the batch waited with it.
This process runs its SQL while the loop goes on; the loop pays one pipe write and one read a
batch.

Protocol, one line each way per batch (UTF-8, no other newline in a line):
  request   "SEQ JSON"  where JSON is [[hex of the address hash, ledger address], ...]
  answer    "SEQ [DOC,DOC,...]"  the facts_sql document (a JSON array) of each chunk of
            BATCH_LIMIT keys,
            or "SEQ !message" when the batch could not be read.
SEQ is echoed so that the gateway never takes an answer for the batch it did not ask about
(after a cancelled read, say). The process lives as long as its stdin: it ends at EOF, which
the gateway sends at stop (or the kernel, when the gateway dies). SIGINT, SIGTERM and SIGHUP,
sent to the whole process group by a terminal or a service manager, are ignored: the gateway
still needs its lookups while it drains.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.errors import StoreError

log = logging.getLogger("gateway.ledger")

READ_LIMIT = 1 << 26  # bytes in one answer line: 64 MB, far above any batch's contacts
STOP_SECONDS = 5.0
RESTART_SECONDS = 1.0  # a reader that keeps dying (a store it cannot open) is restarted
# at most this often; meanwhile lookups fail at once (RCPT 451), none waits for a start


class LedgerReader:
    """The gateway's side: one reader process, one batch in flight at a time (the caller,
    a GroupCommitter, never overlaps its writes); restarted when it has died."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._proc: asyncio.subprocess.Process | None = None
        self._seq = 0
        self._lock = asyncio.Lock()
        self._started_at = -RESTART_SECONDS

    async def start(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        self._started_at = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=READ_LIMIT)
        log.debug("ledger reader process %d started", self._proc.pid)

    def command(self) -> list[str]:
        """The reader process's command line: the code this process runs, from where it was
        imported. `python -m` would put the working directory first on sys.path, so a
        `gateway` folder there (a checkout after a `git pull` the install did not follow, or
        a directory others can write to) would be the reader's code; -P leaves it out and
        the package's own root goes first."""
        root = str(Path(__file__).resolve().parents[2])
        start = (f"import sys; sys.path.insert(0, {root!r}); "
                 "from gateway.store.ledger_reader import main; sys.exit(main())")
        return [sys.executable, "-P", "-c", start, self.path]

    async def read(self, keys: Sequence[tuple[bytes, str]]) -> list[list[list[Any]]]:
        """The facts_sql documents of `keys` (one per chunk of BATCH_LIMIT keys), parsed."""
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                if self._proc is not None:
                    log.error("ledger reader process exited (%s): starting another",
                              self._proc.returncode)
                self._proc = None
                if time.monotonic() - self._started_at < RESTART_SECONDS:
                    raise StoreError("ledger read failed: the ledger reader process exited "
                                     "just after it started; starting another shortly")
                try:
                    await self.start()
                except OSError as exc:
                    raise StoreError(f"ledger read failed: cannot start the ledger reader "
                                     f"process: {exc}") from exc
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            self._seq += 1
            seq = str(self._seq).encode()
            request = json.dumps([(digest.hex(), address) for digest, address in keys],
                                 ensure_ascii=True)
            try:
                proc.stdin.write(seq + b" " + request.encode() + b"\n")
                while True:
                    line = await proc.stdout.readline()
                    if not line.endswith(b"\n"):  # EOF: the process has gone
                        raise ConnectionError("the ledger reader process exited")
                    answer_seq, _, answer = line[:-1].partition(b" ")
                    if answer_seq == seq:
                        break  # else the answer to a read that was given up: skip it
            except (ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
                log.error("ledger reader process: %s; the next read starts another", exc)
                self._abandon()
                raise StoreError(f"ledger read failed: {exc}") from exc
            if answer.startswith(b"!"):
                raise StoreError(f"ledger read failed: {answer[1:].decode(errors='replace')}")
            try:
                documents: list[list[list[Any]]] = json.loads(answer)
            except ValueError as exc:
                raise StoreError(f"ledger read failed: unreadable answer: {exc}") from exc
            return documents

    def _abandon(self) -> None:
        """Stop a reader whose stream can no longer be trusted; the next read starts one
        (asyncio reaps the process)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def serve(path: str) -> int:
    """The process: answer each request line on stdin until EOF."""
    from gateway.store.db import BUSY_TIMEOUT_MS
    from gateway.store.ledger import BATCH_LIMIT, facts_sql

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only=ON")
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        seq, _, request = line.rstrip(b"\n").partition(b" ")
        try:
            keys = json.loads(request)
            documents = []
            for start in range(0, len(keys), BATCH_LIMIT):
                chunk = keys[start:start + BATCH_LIMIT]
                params: list[object] = []
                for digest, address in chunk:
                    params.append(bytes.fromhex(digest))
                    params.append(str(address))
                [(document,)] = conn.execute(facts_sql(len(chunk)), params).fetchall()
                documents.append(document)
            answer = "[" + ",".join(documents) + "]"  # each is a JSON array already
        except Exception as exc:  # any failure is this batch's answer, not the process's end
            answer = "!" + " ".join(f"{type(exc).__name__}: {exc}".split())
        out.write(seq + b" " + answer.encode() + b"\n")
        out.flush()
    conn.close()
    return 0


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if len(sys.argv) != 2:
        print("usage: python -m gateway.store.ledger_reader STORE.db (started by gateway serve)",
              file=sys.stderr)
        return 2
    try:
        return serve(sys.argv[1])
    except (sqlite3.Error, OSError) as exc:
        print(f"ledger reader: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
