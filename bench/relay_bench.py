#!/usr/bin/env python3
"""End-to-end relay benchmark: smtp-source -> {nothing | stock Postfix | the gateway} -> smtp-sink.

Counts a message when smtp-sink has received it (its `-c` running counter), so the figure is
messages per second *end to end*: N / (first send -> N-th message at the sink). Three paths are
measured side by side in one run, interleaved, on 127.0.0.1 only:

  direct   smtp-source -> smtp-sink (the loopback limit)
  postfix  smtp-source -> a private, stock Postfix instance (temp config dir) -> smtp-sink
  gateway  smtp-source -> `python -m gateway serve` (trusted_clients, durable queue) -> smtp-sink

for 4 KB messages with a connection per message, 4 KB with connections reused (`-d`) and 20 KB
with a connection per message, 20 concurrent sessions. Needs Postfix's smtp-source / smtp-sink
(Debian package `postfix`, see bench/README.md); the Postfix path needs root.

    python bench/relay_bench.py            # 3 runs each, medians
    python bench/relay_bench.py --quick    # 1 run each, smaller N
    python bench/relay_bench.py --only gateway
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    HELO,
    HOST,
    REPO,
    Interrupted,
    Processes,
    catch_signals,
    child_env,
    cpu_seconds,
    free_port,
    gateway_cli,
    ignore_signals,
    tail,
    wait_until,
)

SENDER = "bench@example.com"
SENDER_DOMAIN = "example.com"
RECIPIENT = "rcpt@example.net"
# every path gets a Subject: without one the gateway quarantines the copy (M3: no place for
# the notice), and smtp-source sends none by default
SUBJECT = "bench"
ACCOUNT = "bench"
ACCOUNT_PASSWORD = "Correct-Horse-Battery-Staple-42!"  # noqa: S105 - a throwaway bench account
PATHS = ("direct", "postfix", "gateway")


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    size: int  # smtp-source -l: payload bytes, headers not included
    reuse: bool  # smtp-source -d: keep the connection for the next message


CASES = (
    Case("4k_new", "4 KB, conn/msg", 4096, False),
    Case("4k_reuse", "4 KB, reused conn", 4096, True),
    Case("20k", "20 KB, conn/msg", 20480, False),
)

# Messages per measurement, chosen for ~5-20 s each on a 2-core machine (loopback 3,500-7,500 /
# 8,000-18,000 / 2,300-5,200 msg/s; stock Postfix 300-900 msg/s). --quick divides by QUICK_DIVISOR.
COUNTS = {
    "direct": {"4k_new": 40000, "4k_reuse": 100000, "20k": 30000},
    "postfix": {"4k_new": 5000, "4k_reuse": 5000, "20k": 5000},
    "gateway": {"4k_new": 5000, "4k_reuse": 5000, "20k": 5000},
}
QUICK_DIVISOR = 3


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float,
                  proc: subprocess.Popen[bytes] | None = None) -> bool:
    return wait_until(lambda: port_open(port), timeout, proc=proc)


def tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/lib/postfix/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


class Sink:
    """smtp-sink on a fresh port; a reader thread follows its `-c` counter (`... mesg=N\\r`)."""

    MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self, procs: Processes, binary: str) -> None:
        self.port = free_port()
        argv = [binary, "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # required when run as root
        argv += [f"{HOST}:{self.port}", "1024"]
        self.proc = procs.start(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.count = 0
        self.changed_at = time.monotonic()
        self.target: int | None = None
        self.reached_at: float | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not wait_for_port(self.port, 10, proc=self.proc):
            raise RuntimeError(f"smtp-sink did not listen on {HOST}:{self.port}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            pending += chunk
            end = pending.rfind(b"\r")
            if end < 0:
                continue
            complete, pending = pending[:end], pending[end + 1:]
            start = complete.rfind(b"mesg=")
            if start < 0:
                continue
            match = self.MESG.match(complete, start)
            if match is None:
                continue
            value = int(match.group(1))
            with self._cond:
                if value != self.count:
                    self.count = value
                    self.changed_at = now
                    if self.target is not None and self.reached_at is None \
                            and value >= self.target:
                        self.reached_at = now
                    self._cond.notify_all()

    def arm(self, expected: int) -> int:
        """Start a measurement of `expected` messages; returns the baseline count."""
        with self._cond:
            baseline = self.count
            self.target = baseline + expected
            self.reached_at = None
            return baseline

    def wait(self, deadline: float) -> tuple[int, float | None, float]:
        """Wait for the target or the deadline: (count, time target reached, last change)."""
        with self._cond:
            while self.reached_at is None and self.proc.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            return self.count, self.reached_at, self.changed_at

    def settle(self, quiet: float = 0.5, limit: float = 10.0) -> None:
        """Wait (bounded) until the counter has been still for `quiet` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self._cond:
                still = time.monotonic() - self.changed_at
            if still >= quiet:
                return
            time.sleep(quiet - still)


class PostfixRelay:
    """A private stock Postfix (not the system one) from a temp config dir, relaying to `sink`."""

    SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def __init__(self, root: Path, sink_port: int, postfix: str) -> None:
        self.root = root
        self.postfix = postfix
        self.conf = root / "conf"
        self.queue = root / "queue"
        self.maillog = root / "maillog"
        self.port = free_port()
        self.started = False
        self.conf.mkdir(parents=True)
        self.queue.mkdir()  # `postfix check` fills it in; it creates data_directory itself
        os.chmod(root, 0o755)
        (self.conf / "main.cf").write_text(f"""\
# private benchmark instance: stock settings except where a loopback relay needs them
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {root / "data"}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.bench.local
mydomain = bench.local
mydestination =
alias_maps =
alias_database =
biff = no
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{HOST}]:{sink_port}
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = 20
maillog_file = {self.maillog}
maillog_file_prefixes = {root}
""")
        (self.conf / "master.cf").write_text(
            f"{HOST}:{self.port} inet n - n - - smtpd\n" + self.SERVICES)

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.postfix, "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=timeout, check=False)

    def start(self) -> None:
        check = self._postfix("check")  # creates the queue directories with the right owners
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed: {check.stderr.strip()}\n"
                               f"{tail(self.maillog)}")
        self.started = True  # from here on, stop() must run
        started = self._postfix("start")
        if started.returncode != 0:
            raise RuntimeError(f"postfix start failed: {started.stderr.strip()}\n"
                               f"{tail(self.maillog)}")
        if not wait_for_port(self.port, 20):
            raise RuntimeError(f"postfix smtpd did not listen on {HOST}:{self.port}\n"
                               f"{tail(self.maillog)}")

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        try:
            self._postfix("stop", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid is not None and _alive(pid):
            try:
                self._postfix("abort", timeout=15)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.started = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


class GatewayRelay:
    """`python -m gateway serve` with trusted_clients, delivering in smtp mode to `sink`."""

    def __init__(self, root: Path, sink_port: int, procs: Processes, processes: int) -> None:
        self.root = root
        self.procs = procs
        self.port = free_port()
        self.http_port = free_port()
        self.config = root / "gateway.toml"
        self.log = root / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        # [http] is the only addition to the bench contract: a free port, so that a gateway
        # already running on the default 127.0.0.1:8025 does not make this one fail to start.
        self.config.write_text(f"""\
[smtp]
listen = "{HOST}:{self.port}"
hostname = "bench.local"
tls_self_signed = false
max_recipients = 1000
max_connections_per_ip = 1000
processes = {processes}
trusted_clients = [{{ network = "127.0.0.0/8", account = "{ACCOUNT}" }}]

[http]
listen = "{HOST}:{self.http_port}"

[store]
url = "sqlite:///{root / 'gateway.db'}"

[delivery]
mode = "smtp"
host = "{HOST}"
port = {sink_port}

[log]
level = "WARNING"
""")

    def _cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return gateway_cli(self.config, *args, stdin=stdin, timeout=120)

    def start(self) -> None:
        added = self._cli("accounts", "add", ACCOUNT, "--from-domain", SENDER_DOMAIN,
                          "--password-stdin", stdin=ACCOUNT_PASSWORD + "\n")
        if added.returncode != 0:
            raise RuntimeError("`gateway accounts add` failed (exit "
                               f"{added.returncode}): {(added.stderr or added.stdout).strip()}")
        # the recipient must be in the ledger with a lawful basis, else R2 refuses it at RCPT
        ledger = self.root / "contacts.csv"
        ledger.write_text("email,kind,consent,consent_at,consent_method,source_name,"
                          f"source_type\n{RECIPIENT},person,granted,2026-01-05,web form,"
                          "signup form,direct\n")
        imported = self._cli("contacts", "import", str(ledger))
        if imported.returncode != 0:
            raise RuntimeError(f"`gateway contacts import` failed: {imported.stderr.strip()}")
        with open(self.log, "wb") as log:
            self.proc = self.procs.start(  # in the checkout (the tools are started outside it)
                [sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env=child_env())
        if not wait_for_port(self.port, 60, proc=self.proc):
            raise RuntimeError(f"`gateway serve` did not listen on {HOST}:{self.port} "
                               f"(exit {self.proc.poll()}):\n{tail(self.log)}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the gateway: the process and its worker processes (threads
        included; with smtp.processes > 1 the workers are children of a supervisor)."""
        return None if self.proc is None else cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, grace=35.0)  # SIGTERM drains for up to 30 s
            self.proc = None


@dataclass
class Result:
    path: str
    case: Case
    sent: int
    counted: int = 0
    seconds: float = 0.0  # first send -> last message at the sink
    source_seconds: float = 0.0  # first send -> smtp-source exit (all 250s seen)
    source_rc: int | None = None
    source_errors: list[str] = field(default_factory=list)
    cpu_ms_per_msg: float | None = None

    @property
    def lost(self) -> int:
        return self.sent - self.counted

    @property
    def rate(self) -> float:
        return self.counted / self.seconds if self.seconds > 0 else 0.0


def measure(path: str, case: Case, count: int, target_port: int, sink: Sink, source: str,
            procs: Processes, sessions: int, source_timeout: float, drain_timeout: float,
            cpu: GatewayRelay | None = None) -> Result:
    sink.settle()
    result = Result(path, case, count)
    argv = [source, "-A", "-s", str(sessions), "-m", str(count), "-l", str(case.size),
            "-M", HELO, "-f", SENDER, "-t", RECIPIENT, "-S", SUBJECT]
    if case.reuse:
        argv.append("-d")
    argv.append(f"{HOST}:{target_port}")
    cpu_before = cpu.cpu_seconds() if cpu else None
    baseline = sink.arm(count)
    t0 = time.monotonic()
    proc = procs.start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=source_timeout)
        result.source_rc = proc.returncode
    except subprocess.TimeoutExpired:
        procs.stop(proc, grace=1.0)
        _, err = b"", b""
        result.source_errors.append(f"smtp-source still running after {source_timeout:.0f} s: "
                                    "killed")
    finally:
        if proc in procs.procs:
            procs.procs.remove(proc)
    result.source_seconds = time.monotonic() - t0
    result.source_errors += [line for line in err.decode(errors="replace").splitlines() if line]
    counted, reached_at, changed_at = sink.wait(time.monotonic() + drain_timeout)
    result.counted = counted - baseline
    end = reached_at if reached_at is not None else changed_at
    result.seconds = max(end - t0, 1e-9)
    cpu_after = cpu.cpu_seconds() if cpu else None
    if cpu_before is not None and cpu_after is not None and result.counted:
        result.cpu_ms_per_msg = (cpu_after - cpu_before) * 1000 / result.counted
    return result


def describe(r: Result) -> str:
    line = (f"  {r.path:8} {r.case.title:18} {r.sent:6d} sent  {r.counted:6d} at sink  "
            f"{r.rate:8.0f} msg/s end to end  ({r.sent / r.source_seconds:6.0f} msg/s accepted)")
    if r.cpu_ms_per_msg is not None:
        line += f"  gateway CPU {r.cpu_ms_per_msg:.2f} ms/msg"
    if r.lost:
        line += f"  LOST {r.lost}"
    if r.source_errors or (r.source_rc not in (0, None)):
        line += f"\n           smtp-source exit {r.source_rc}, {len(r.source_errors)} error line(s)"
        for text in r.source_errors[:5]:
            line += f"\n             {text}"
    return line


def median_rate(results: list[Result]) -> float | None:
    rates = [r.rate for r in results]
    return statistics.median(rates) if rates else None


def print_table(results: dict[tuple[str, str], list[Result]], paths: list[str],
                skipped: dict[str, str], runs: int) -> None:
    labels = {"direct": "smtp-source -> smtp-sink (loopback limit)",
              "postfix": "... -> stock Postfix -> smtp-sink",
              "gateway": "... -> gateway -> smtp-sink"}
    width = 44
    print(f"\nEnd-to-end msg/s, median of {runs} run(s), {HOST}, counted at the sink:")
    header = f"{'path':{width}}" + "".join(f"{c.title:>20}" for c in CASES)
    print(header)
    print("-" * len(header))
    med: dict[tuple[str, str], float | None] = {}
    for path in PATHS:
        if path not in paths:
            continue
        row = f"{labels[path]:{width}}"
        for case in CASES:
            rs = results.get((path, case.key), [])
            med[path, case.key] = median_rate(rs)
            lost = sum(r.lost for r in rs)
            cell = "-" if med[path, case.key] is None else f"{med[path, case.key]:,.0f}"
            if lost:
                cell += f" (lost {lost})"
            row += f"{cell:>20}"
        if path in skipped:
            row += f"   skipped: {skipped[path]}"
        print(row)
    for num, den, name in (("gateway", "postfix", "gateway / postfix"),
                           ("gateway", "direct", "gateway / loopback")):
        if num not in paths or den not in paths:
            continue
        row = f"{name:{width}}"
        for case in CASES:
            a, b = med.get((num, case.key)), med.get((den, case.key))
            row += f"{(f'{a / b:.2f}x' if a and b else '-'):>20}"
        print(row)
    total_lost = sum(r.lost for rs in results.values() for r in rs)
    print(f"\nlost messages (sent - counted at the sink), all measurements: {total_lost}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"1 run each, N divided by {QUICK_DIVISOR}")
    parser.add_argument("--only", choices=PATHS, action="append",
                        help="measure only this path (repeatable)")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3, --quick 1)")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="gateway smtp.processes (default: the number of cores, as Postfix "
                             "uses every core)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N by this")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds to wait after smtp-source ends for the sink to count all")
    parser.add_argument("--source-timeout", type=float, default=300.0,
                        help="seconds after which smtp-source is killed")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temp dir (configs, maillog, gateway log and db)")
    args = parser.parse_args(argv)
    paths = [p for p in PATHS if p in (args.only or PATHS)]
    runs = args.runs or (1 if args.quick else 3)
    scale = args.scale / (QUICK_DIVISOR if args.quick else 1)

    source, sink_bin, postfix = tool("smtp-source"), tool("smtp-sink"), tool("postfix")
    if not source or not sink_bin:
        print("smtp-source / smtp-sink not found. Install them (tools only), see bench/README.md:\n"
              "  echo 'postfix postfix/main_mailer_type select No configuration' | "
              "debconf-set-selections\n"
              "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix\n"
              "  postfix stop 2>/dev/null; service postfix stop 2>/dev/null", file=sys.stderr)
        return 2
    if port_open(25):
        print("note: something listens on 127.0.0.1:25 (the system Postfix?); it is not used, "
              "but it competes for CPU if busy. Stop it with `service postfix stop`.")

    catch_signals()
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    os.chmod(tmp, 0o755)  # Postfix daemons run as `postfix` under this tree
    procs = Processes(in_checkout=False)  # the tools run where we were started
    postfix_relay: PostfixRelay | None = None
    gateway_relay: GatewayRelay | None = None
    skipped: dict[str, str] = {}
    results: dict[tuple[str, str], list[Result]] = {}
    try:
        sinks = {path: Sink(procs, sink_bin) for path in paths}
        targets: dict[str, int] = {}
        if "direct" in paths:
            targets["direct"] = sinks["direct"].port
        if "postfix" in paths:
            if postfix is None:
                skipped["postfix"] = "no postfix binary"
            elif os.geteuid() != 0:
                skipped["postfix"] = "a private Postfix instance needs root"
            else:
                postfix_relay = PostfixRelay(tmp / "postfix", sinks["postfix"].port, postfix)
                try:
                    postfix_relay.start()
                    targets["postfix"] = postfix_relay.port
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    skipped["postfix"] = "did not start"
                    print(f"postfix path skipped: {exc}", file=sys.stderr)
        if "gateway" in paths:
            gateway_relay = GatewayRelay(tmp / "gateway", sinks["gateway"].port, procs,
                                         args.processes)
            try:
                gateway_relay.start()
                targets["gateway"] = gateway_relay.port
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                skipped["gateway"] = "did not start"
                print(f"gateway path skipped: {exc}", file=sys.stderr)
        print(f"{len(targets)} path(s) up: " + ", ".join(
            f"{p} on {HOST}:{port}" for p, port in targets.items()) + f"; temp dir {tmp}")
        print(f"{args.sessions} sessions, {runs} run(s) each, interleaved; "
              "rates are N / (first send -> N-th message at the sink)")
        for run in range(1, runs + 1):
            print(f"run {run}/{runs}")
            for case in CASES:
                for path in PATHS:
                    if path not in targets:
                        continue
                    count = max(args.sessions, int(COUNTS[path][case.key] * scale))
                    r = measure(path, case, count, targets[path], sinks[path], source, procs,
                                args.sessions, args.source_timeout, args.drain_timeout,
                                cpu=gateway_relay if path == "gateway" else None)
                    results.setdefault((path, case.key), []).append(r)
                    print(describe(r), flush=True)
        print_table(results, paths, skipped, runs)
        if gateway_relay is not None and "gateway" in targets:
            log = tail(gateway_relay.log, 10)
            if log.strip():
                print(f"\nlast lines of the gateway log ({gateway_relay.log}):\n{log}")
        if skipped:
            print("not measured: " + ", ".join(f"{p} ({why})" for p, why in skipped.items()))
        lost = any(r.lost for rs in results.values() for r in rs)
        return 1 if lost or skipped else 0
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
        if results:
            print_table(results, paths, skipped, runs)
        return 130
    finally:
        # Ignore further Ctrl-C while we clean up: a half-stopped Postfix is worse than a wait.
        ignore_signals()
        if gateway_relay is not None:
            gateway_relay.stop()
        if postfix_relay is not None:
            postfix_relay.stop()
        procs.stop_all()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
