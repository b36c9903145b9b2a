"""Support code shared by the benchmark scripts in bench/.

ledger_bench.py, unsubscribe_bench.py and relay_bench.py (and transform_bench.py for one
helper) each used to carry their own copy of this: the signal handling that turns SIGTERM and
SIGHUP into an exception, the child processes (each in its own process group, stopped with
SIGTERM then SIGKILL of the whole group), readiness probes, CPU accounting from /proc, the event
loop runner, the PASS/MISS summary table and a raw asyncio SMTP client. One copy here keeps
them from drifting apart.

The scripts run as `python bench/NAME.py`, so bench/ is sys.path[0] and they `import benchlib`.
Standard library only: the module must import before anything is installed besides Python.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
HELO = "bench.example.com"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

T = TypeVar("T")


# --- signals -------------------------------------------------------------------------------

class Interrupted(Exception):
    """SIGTERM/SIGHUP: unwind through the finally blocks like Ctrl-C does."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def catch_signals() -> None:
    """SIGTERM/SIGHUP raise Interrupted, SIGINT raises KeyboardInterrupt (even if the script
    was started ignoring it)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def ignore_signals() -> None:
    """While cleaning up: ignore further Ctrl-C, SIGTERM and SIGHUP."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


# --- ports and probes ----------------------------------------------------------------------

def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def smtp_ready(port: int, host: str = HOST) -> bool:
    """The server greets with 220. A whole session (greeting, QUIT) rather than a bare
    connect-and-close: under uvloop the gateway kept counting a connection closed before its
    greeting until smtp.idle_timeout, which held its drain on stop for 30 s."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            greeting = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
            sock.recv(512)
            return greeting.startswith(b"220")
    except OSError:
        return False


def wait_until(ready: Callable[[], bool], timeout: float,
               proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll `ready` every 0.1 s for up to `timeout` seconds; False at once if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- child processes -----------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """This checkout's gateway first on the path, whatever is installed."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))


def gateway_cli(config: Path, *args: str, stdin: str | None = None,
                timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """`python -m gateway --config CONFIG ARGS...` from this checkout, output captured."""
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), *args],
                          input=stdin, capture_output=True, text=True, cwd=REPO,
                          env=child_env(), timeout=timeout, check=False)


class Processes:
    """Every process we start, each in its own process group; all killed on the way out.

    With `in_checkout` (the default), children run in the repository root with child_env();
    without it they inherit this process's working directory and environment unless the
    caller passes `cwd` / `env`."""

    def __init__(self, in_checkout: bool = True) -> None:
        self.in_checkout = in_checkout
        self.procs: list[subprocess.Popen[bytes]] = []
        self.groups: set[int] = set()  # asyncio subprocesses: process group ids (= their pid)

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        if self.in_checkout:
            kwargs.setdefault("cwd", REPO)
            kwargs.setdefault("env", child_env())
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen[bytes]) -> tuple[int, int]:
        """Wait for `proc`: (exit code, its peak RSS in KB), from wait4() for this child."""
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.procs.remove(proc)
        return proc.returncode, usage.ru_maxrss

    @staticmethod
    def group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM to the process group, up to `grace` seconds for the leader to exit, then
        SIGKILL to whatever is left of the group."""
        # the group, not only poll(): poll() reports 0 for a child it cannot wait for (ECHILD)
        if proc.poll() is None or self.group_alive(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # the group may outlive its leader
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None or self.group_alive(proc.pid):
            print(f"warning: process group {proc.pid} did not exit", file=sys.stderr)
        if proc in self.procs:
            self.procs.remove(proc)

    def kill_group(self, pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.groups.discard(pgid)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, grace=2.0)
        for pgid in list(self.groups):
            self.kill_group(pgid)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of `pid` and of every process under it (threads included): with
    smtp.processes > 1 the gateway's workers are children of its supervisor, and each
    gateway process has its ledger reader process (store/ledger_reader.py)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child = int(stat.parent.name)
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            parent[child] = int(fields[1])  # fields[1]: ppid
            ticks[child] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    if pid not in ticks:
        return None
    total = 0
    for child in ticks:
        node = child
        while node and node != pid and node in parent:
            node = parent[node]
        if node == pid:
            total += ticks[child]
    return total / os.sysconf("SC_CLK_TCK")


# --- the event loop ------------------------------------------------------------------------

def run_loop(factory: Callable[[], Coroutine[Any, Any, T]], guard: bool = True) -> tuple[T, str]:
    """Run a coroutine on uvloop when importable (as the gateway does), else asyncio.

    With `guard`, SIGTERM/SIGHUP cancel the coroutine and raise Interrupted once the loop has
    unwound: an exception raised by a plain signal handler inside uvloop's signal processing
    is only logged ("Exception in callback"), and the run goes on. Afterwards they raise
    Interrupted again (catch_signals)."""
    received: list[int] = []

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            received.append(signum)
            task.cancel()

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await factory()
        except asyncio.CancelledError:
            if received:
                raise Interrupted(signal.Signals(received[0]).name) from None
            raise
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    main = guarded if guard else factory
    try:
        import uvloop
    except ImportError:
        result, name = asyncio.run(main()), "asyncio"
    else:
        result, name = uvloop.run(main()), f"uvloop {getattr(uvloop, '__version__', '?')}"
    finally:
        if guard:  # remove_signal_handler leaves SIG_DFL behind: ours again
            for signum in STOP_SIGNALS:
                signal.signal(signum, _on_signal)
    return result, name


# --- figures -------------------------------------------------------------------------------

def pct(values_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in ms."""
    ordered = sorted(values_ns)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered))) - 1))
    return ordered[rank] / 1e6


@dataclass
class Summary:
    """The final table: each figure next to its target with PASS/MISS ("-": no target)."""

    note: str  # printed in brackets after "Summary"
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, name: str, value: str, target: str, ok: bool | None) -> None:
        self.rows.append((name, value, target, "-" if ok is None else "PASS" if ok else "MISS"))

    def print(self) -> None:
        header = ("figure", "value", "target", "")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(4)]
        print(f"\nSummary ({self.note})")
        for row in [header, tuple("-" * w for w in widths), *self.rows]:
            print(f"  {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  "
                  f"{row[3]}")


# --- a raw SMTP client ---------------------------------------------------------------------

class SmtpError(Exception):
    pass


class Session:
    """One SMTP session over asyncio streams, no library in between: open() reads the
    greeting and sends EHLO; the caller writes the rest, one command at a time."""

    reader_class: type[asyncio.StreamReader] = asyncio.StreamReader

    def __init__(self, port: int, host: str = HOST, helo: str = HELO) -> None:
        self.port = port
        self.host = host
        self.helo = helo
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def reply(self) -> tuple[int, str]:
        """The final line of a (possibly multi-line) reply: (code, text)."""
        assert self.reader is not None
        while True:
            line = await self.reader.readline()
            if not line:
                raise SmtpError("connection closed by the server")
            if line[3:4] != b"-":
                return int(line[:3]), line.decode(errors="replace").rstrip("\r\n")

    async def send(self, data: bytes) -> tuple[int, str]:
        assert self.writer is not None
        self.writer.write(data)
        return await self.reply()

    async def command(self, text: str, expect: int = 250) -> tuple[int, str]:
        code, line = await self.send(text.encode() + b"\r\n")
        if code != expect:
            raise SmtpError(f"{text!r} -> {line!r}")
        return code, line

    async def open(self) -> None:
        # asyncio.open_connection, with a reader of `reader_class`
        loop = asyncio.get_running_loop()
        reader = self.reader_class(limit=2 ** 16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, self.host, self.port)
        self.reader = reader
        self.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        code, line = await self.reply()
        if code != 220:
            raise SmtpError(f"greeting {line!r}")
        await self.command(f"EHLO {self.helo}")

    async def close(self) -> None:
        """QUIT (221 expected), then close the connection whatever the reply."""
        if self.writer is None:
            return
        try:
            await self.command("QUIT", 221)
        finally:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = self.reader = None

    def abort(self) -> None:
        """Close the connection without QUIT (after an error)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None
