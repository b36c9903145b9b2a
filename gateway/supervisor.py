"""`smtp.processes = N`: a supervisor that forks N gateway processes sharing one SMTP socket.

One event loop caps a Python process at one core (../shared/PERFORMANCE.md: two processes nearly
double a relay on two cores). The supervisor binds the SMTP socket, runs the migrations and makes
the TLS certificate once, then forks the workers before any event loop or thread exists. Each
worker is a whole gateway (SMTP sessions, group commit, delivery workers) on the shared store;
worker 0 also serves HTTP. The kernel hands each new connection to whichever worker accepts it
first, so a busy worker takes fewer. SIGTERM/SIGINT/SIGHUP are passed on and every worker
drains (a second one stops them at once); a worker that dies is replaced (its claimed copies
are taken over, see store/queue.py).

Per-IP limits (connections, AUTH failures) are counted per worker; account lockout is in the
store and shared.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import types
from typing import Any

from gateway.runtime import DRAIN_SIGNAL, Gateway, run_one, stop_signals
from gateway.security.keys import load_store_key
from gateway.security.tokens import load_store_token_keys
from gateway.settings import Settings, parse_listen
from gateway.store.db import Database

log = logging.getLogger("gateway.supervisor")

RESTART_DELAY = 1.0
EARLY_EXIT_SECONDS = 5.0  # one of the first workers failing this soon fails again: give up
RESTART_MAX_DELAY = 30.0  # a replacement failing at once is tried again at most this late
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def bind_smtp_socket(listen: str) -> socket.socket:
    host, port = parse_listen(listen, "smtp.listen")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(f"smtp.listen {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


async def _migrate(settings: Settings) -> None:
    async with Database(settings.store.path):
        pass


class Supervisor:
    def __init__(self, settings: Settings, on_ready: Any) -> None:
        self.settings = settings
        self.on_ready = on_ready
        # pid -> (index, started monotonic, one of the first: not a replacement)
        self.workers: dict[int, tuple[int, float, bool]] = {}
        self.stopping = False
        self.sock: socket.socket | None = None
        self.fast_failures: dict[int, int] = {}  # worker index -> replacements failed at once

    def run(self) -> int:
        Gateway(self.settings).certificate()  # make the self-signed certificate once
        asyncio.run(_migrate(self.settings))  # migrations once, before any worker opens the store
        # one key for all, made (and checked against the store) before the fork
        load_store_key(self.settings.hash_key_path, self.settings.store.path)
        load_store_token_keys(self.settings.token_key_path, self.settings.store.path)
        self.sock = bind_smtp_socket(self.settings.smtp.listen)
        self.signals = stop_signals()  # before any handler: SIGHUP ignored stays ignored
        for sig in self.signals:
            signal.signal(sig, self._on_signal)
        for index in range(self.settings.smtp.processes):
            self._spawn(index, first=True)
        log.info("supervisor %d: %d gateway processes on %s", os.getpid(),
                 self.settings.smtp.processes, self.settings.smtp.listen)
        failed = False
        while self.workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in self.workers:
                # not a worker: the ledger reader of one that died, reparented to us when we
                # are PID 1 (a container) or a subreaper; it ends at EOF, nothing to replace
                continue
            index, started, first = self.workers.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                failed = failed or code != 0
                continue
            log.error("gateway process %d (worker %d) exited with %s", pid, index, code)
            now = time.monotonic()
            early = code > 0 and now - started < EARLY_EXIT_SECONDS
            serving = any(now - since >= EARLY_EXIT_SECONDS
                          for _, since, _ in self.workers.values())
            if early and (first or not serving):
                # one of the first failed by itself (a port taken, a store it cannot open),
                # or a replacement with no worker serving beside it: so would another, and
                # a supervisor left without workers took connections nobody answered
                log.error("it failed right after starting: stopping every process")
                failed = True
                self._on_signal(signal.SIGTERM, None)
                continue
            # a replacement that fails at once (the disk full, the store locked while it
            # registers) beside workers that run: tried again, less and less often; stopping
            # the whole gateway stopped the ones still answering (451) too
            self.fast_failures[index] = self.fast_failures.get(index, 0) + 1 if early else 0
            delay = min(RESTART_MAX_DELAY, RESTART_DELAY * 2 ** self.fast_failures[index])
            if early:
                log.error("it failed right after starting: worker %d tried again in %.0f s",
                          index, delay)
            deadline = time.monotonic() + delay
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.1)  # a stop signal ends the wait (its handler sets stopping)
            if not self.stopping:
                self._spawn(index)
        return 1 if failed else 0

    def _spawn(self, index: int, first: bool = False) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        supervisor = os.getpid()
        pid = os.fork()
        if pid:
            self.workers[pid] = (index, time.monotonic(), first)
            return
        code = 1
        try:  # the worker: default signal dispositions, then a whole gateway on its own loop
            for sig in self.signals:  # SIGHUP stays ignored under nohup
                signal.signal(sig, signal.SIG_DFL)
            _stop_with_parent(supervisor)
            run_one(Gateway(self.settings, listen_socket=self.sock, serve_http=index == 0),
                    self.on_ready if index == 0 else None)
            code = 0
        except BaseException:
            log.exception("gateway process %d (worker %d) failed", os.getpid(), index)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _on_signal(self, signum: int, _frame: types.FrameType | None) -> None:
        """The first stop signal asks the workers to drain (DRAIN_SIGNAL: a worker that had
        the same signal from its process group does not take it for a second one); a second
        one is passed on as SIGTERM, which makes a draining worker stop at once."""
        if not self.stopping:
            log.info("supervisor: %s, draining %d gateway processes",
                     signal.Signals(signum).name, len(self.workers))
            forward = DRAIN_SIGNAL
        else:
            forward = signal.SIGTERM
        self.stopping = True
        if self.sock is not None:
            # the workers close theirs as they drain; with this copy open the port kept
            # taking connections nobody would greet, reset when the supervisor exited
            self.sock.close()
            self.sock = None
        for pid in list(self.workers):
            try:
                os.kill(pid, forward)
            except ProcessLookupError:
                pass


def _stop_with_parent(supervisor: int) -> None:
    """A worker drains and stops (SIGTERM) when its supervisor dies, by a SIGKILL say:
    else it kept the ports, and nobody replaced it when it died in turn (Linux's
    PR_SET_PDEATHSIG; elsewhere the worker outlives it, as before)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(settings: Settings, on_ready: Any = None) -> None:
    code = Supervisor(settings, on_ready).run()
    if code:
        raise SystemExit(code)
