#!/usr/bin/env python3
"""One-click unsubscribe under mail load: POST /u/TOKEN while 20 SMTP sessions send.

The issue's benchmark: 1,000 one-click POSTs (RFC 8058, `List-Unsubscribe=One-Click`) from 50
concurrent clients while 20 SMTP sessions send through `python -m gateway serve`:

  - none lost: 1,000 answers 200 and 1,000 rows in the suppression table afterwards
    (and a RCPT to each unsubscribed address now gets 550 5.7.1 R1);
  - p99 POST latency < 100 ms;
  - SMTP throughput (messages accepted per second, 250 after DATA) during the POSTs not below
    80% of what it is without them (measured before and after, the mean taken).

A control window follows (figures only, no target): the same POST client, paced to the rate
the gateway answered at, POSTs to a stand-in HTTP server in a process of its own while the
SMTP sessions send. Its SMTP ratio is what the POST clients alone cost the sessions on the
shared cores; the ratio over it is the gateway's own part (its HTTP work and the objections'
writes).

The 1,000 tokens are real: one message is sent to each u* address first and the URL read from
the List-Unsubscribe of each delivered copy (Maildir). The SMTP sessions mail other contacts
(s*), so their RCPTs keep being accepted while the u* addresses get suppressed. The POST
client runs in its own process (httpx, one AsyncClient per worker; `--client raw` for a
minimal HTTP/1.1 client), the SMTP client in this one.
Figures only: exit 0 whatever PASS/MISS says, 1 when something failed to run.

    python bench/unsubscribe_bench.py             # 1,000 POSTs, 10 s SMTP windows (~1 minute)
    python bench/unsubscribe_bench.py --quick     # 200 POSTs, 5 s windows
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from benchlib import (
    HOST,
    REPO,
    Interrupted,
    Processes,
    Session,
    SmtpError,
    Summary,
    catch_signals,
    child_env,
    cpu_seconds,
    free_port,
    gateway_cli,
    ignore_signals,
    load_average,
    pct,
    run_loop,
    smtp_ready,
    tail,
    wait_until,
)

ACCOUNT = "bench"
ACCOUNT_PASSWORD = "Correct-Horse-Battery-Staple-42!"  # noqa: S105 - a throwaway bench account
SENDER = "news@example.com"
SENDER_DOMAIN = "example.com"
SENDER_CONTACTS = 1000  # s0..s999@example.net: what the SMTP sessions mail
RCPTS_PER_WARMUP_MESSAGE = 100  # the token-collection messages: one transaction per 100 RCPTs
CSV_HEADER = "email,kind,consent,consent_at,consent_method,source_name,source_type"
BODY = ("Hello,\r\n\r\nThis is the weekly news from Example. " * 3 + "\r\n") * 8  # ~1.2 KB

TARGET_POST_P99_MS = 100.0
TARGET_SMTP_RATIO = 0.80


WEBHOOK_SECRET = "bench-webhook-secret-0123456789abcdef"  # noqa: S105 - the bench's own


def webhooker(i: int) -> str:
    """The addresses of the webhook batch (in the ledger, not mailed)."""
    return f"w{i}@example.net"


def unsubscriber(i: int) -> str:
    return f"u{i}@example.net"


def sendee(i: int) -> str:
    return f"s{i}@example.net"


def message(to: str, n: int) -> bytes:
    """A small text message, CRLF, ending with the DATA terminator."""
    return (f"From: News <{SENDER}>\r\nTo: <{to}>\r\nSubject: Weekly news {n}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{BODY}.\r\n").encode()


def http_ready(port: int) -> bool:
    """The gateway's HTTP side answers GET /healthz with 200 (its SMTP side: smtp_ready)."""
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


# --- the SMTP client (benchlib.Session) ----------------------------------------------------

async def send_batches(port: int, batches: list[list[str]], sessions: int) -> None:
    """One message per batch of recipients (each RCPT must get 250), over `sessions` sessions."""
    work = iter(enumerate(batches))

    async def run() -> None:
        session = Session(port)
        await session.open()
        try:
            for n, rcpts in work:
                await session.command(f"MAIL FROM:<{SENDER}>")
                for to in rcpts:
                    await session.command(f"RCPT TO:<{to}>")
                await session.command("DATA", 354)
                code, line = await session.send(message(rcpts[0], n))
                if code != 250:
                    raise SmtpError(f"end of DATA -> {line!r}")
            await session.close()
        finally:
            session.abort()

    await asyncio.gather(*(run() for _ in range(sessions)))


@dataclass
class LoadResult:
    accepted: list[float] = field(default_factory=list)  # time.monotonic() of each 250
    data_ns: list[int] = field(default_factory=list)  # end of DATA -> its 250, same order
    codes: Counter[str] = field(default_factory=Counter)  # non-250 replies, by first words
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def rate(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return float("nan")
        return sum(1 for t in self.accepted if t0 <= t < t1) / (t1 - t0)

    def data_latency(self, t0: float, t1: float) -> str:
        """p50 / p99 of the end-of-DATA reply of the messages accepted between t0 and t1."""
        ns = [n for t, n in zip(self.accepted, self.data_ns, strict=True) if t0 <= t < t1]
        return f"{pct(ns, 50):.1f} / {pct(ns, 99):.1f} ms"


async def smtp_load(port: int, sessions: int, stop: asyncio.Event, first: int) -> LoadResult:
    """`sessions` sessions send one message after another (one RCPT each, s* recipients,
    connection reused) until `stop` is set; every 250 after DATA is time-stamped."""
    result = LoadResult()
    ready = 0
    go = asyncio.Event()

    async def run(k: int) -> None:
        nonlocal ready
        session = Session(port)
        n = first + k
        try:
            try:
                await session.open()
            finally:
                ready += 1
            await go.wait()
            while not stop.is_set():
                to = sendee(n % SENDER_CONTACTS)
                n += sessions
                await session.command(f"MAIL FROM:<{SENDER}>")
                code, line = await session.send(f"RCPT TO:<{to}>\r\n".encode())
                if code != 250:
                    result.codes[" ".join(line.split()[:3])] += 1
                    await session.command("RSET")
                    continue
                await session.command("DATA", 354)
                data = message(to, n)
                t = time.perf_counter_ns()
                code, line = await session.send(data)
                if code == 250:
                    result.data_ns.append(time.perf_counter_ns() - t)
                    result.accepted.append(time.monotonic())
                else:
                    result.codes[" ".join(line.split()[:3])] += 1
            await session.close()
        except (OSError, SmtpError, ValueError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            session.abort()

    tasks = [asyncio.create_task(run(k)) for k in range(sessions)]
    while ready < sessions:
        await asyncio.sleep(0.01)
    result.started = time.monotonic()
    go.set()
    await asyncio.gather(*tasks)
    result.ended = time.monotonic()
    return result


# --- the POST client (its own process: `--post-worker FILE`) -------------------------------

ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client (one connection): the `--client raw` cross-check,
    ~10x less client CPU per request than httpx."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, url: str) -> int:
        parts = urlsplit(url)
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(parts.hostname, parts.port)
        assert self.reader is not None
        self.writer.write(
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(ONE_CLICK_BODY)}\r\n\r\n".encode() + ONE_CLICK_BODY)
        status = await self.reader.readline()
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed by the server")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and b"close" in value.lower():
                close = True
        await self.reader.readexactly(length)
        if close:
            await self.aclose()
        return int(status.split()[1])

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


async def post_worker(spec_path: str) -> None:
    """Read {"urls", "concurrency", "client", "timeout", "rate"}; open one client per worker;
    say "ready"; on a line on stdin, POST every URL from `concurrency` workers (each takes the
    next URL; with a `rate`, the n-th is not sent before n / rate seconds); print one JSON line
    with the results.

    httpx: one AsyncClient per worker (50 clients, one connection each). One AsyncClient shared
    by 50 workers is the client's own bottleneck (~3 ms of client CPU per request with 50
    connections in its pool, against ~0.6 ms), and creating an AsyncClient builds an SSL
    context (tens of ms of CPU), so they are all created before the clock starts."""
    import httpx

    spec = json.loads(Path(spec_path).read_text())
    urls: list[str] = spec["urls"]
    conc: int = spec["concurrency"]
    rate: float = spec.get("rate") or 0.0  # requests/s at most (the control window), 0: free
    results: list[tuple[float, int, str]] = []  # (start, latency ns, status or error)
    work = iter(enumerate(urls))
    started = 0.0
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    timeout = spec["timeout"]
    if spec["client"] == "httpx":
        clients: list[Any] = [httpx.AsyncClient(timeout=timeout) for _ in range(conc)]
    else:
        clients = [RawHttp() for _ in range(conc)]

    async def worker(client: Any) -> None:
        for n, url in work:
            if rate:  # request n no earlier than n / rate seconds after the start
                await asyncio.sleep(started + n / rate - time.monotonic())
            start = time.monotonic()
            t = time.perf_counter_ns()
            try:
                if isinstance(client, RawHttp):
                    outcome = str(await asyncio.wait_for(client.post(url), timeout))
                else:
                    answer = await client.post(url, data={"List-Unsubscribe": "One-Click"})
                    await answer.aread()
                    outcome = str(answer.status_code)
            except (httpx.HTTPError, OSError, ValueError, IndexError,
                    asyncio.IncompleteReadError) as exc:
                outcome = f"{type(exc).__name__}: {exc}"[:200]
                if isinstance(client, RawHttp):
                    await client.aclose()
            results.append((start, time.perf_counter_ns() - t, outcome))

    try:
        print("ready", flush=True)
        await reader.readline()
        cpu0 = time.process_time()
        t0 = started = time.monotonic()
        await asyncio.gather(*(worker(client) for client in clients))
        t1 = time.monotonic()
        cpu = time.process_time() - cpu0
    finally:
        for client in clients:
            await client.aclose()
    print(json.dumps({"t0": t0, "t1": t1, "cpu": cpu, "results": results}), flush=True)


async def stand_in(port: int, page_path: str) -> None:
    """`--stand-in PORT PAGE`: an HTTP/1.1 server that answers every request at once with 200
    and PAGE (the gateway's own "done" page), keep-alive, no parsing beyond finding each
    request's end: the control window's server, so that its POST client costs the machine what
    it costs in the gateway's window while the gateway does no HTTP work at all."""
    page = Path(page_path).read_bytes()
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n"
              b"content-length: %d\r\n\r\n" % len(page)) + page

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while True:  # a request: its head, then Content-Length bytes of body
                head_end = self.buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    return
                length = re.search(rb"(?im)^content-length: *(\d+)", self.buffer[:head_end])
                end = head_end + 4 + (int(length[1]) if length else 0)
                if len(self.buffer) < end:
                    return
                self.buffer = self.buffer[end:]
                self.transport.write(answer)

    server = await asyncio.get_running_loop().create_server(Answer, HOST, port)
    async with server:
        await server.serve_forever()


@dataclass
class PostResult:
    t0: float
    t1: float
    cpu: float
    latencies: list[int]
    outcomes: Counter[str]
    errors: list[str]


class PostClient:
    """The `--post-worker` child: started ahead (httpx imported, connections not yet open),
    released with go(), its results read with result()."""

    def __init__(self, procs: Processes, spec: Path, log: Path) -> None:
        self.procs = procs
        self.spec = spec
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as errors:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), "--post-worker", str(self.spec),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors,
                start_new_session=True, cwd=REPO, env=child_env(), limit=64 * 1024 * 1024)
        self.procs.groups.add(self.proc.pid)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the POST client did not start: {line!r}\n{tail(self.log)}")

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def result(self, timeout: float) -> PostResult:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        await self.proc.wait()
        self.procs.groups.discard(self.proc.pid)
        if not line:
            raise RuntimeError(f"the POST client died (exit {self.proc.returncode}):\n"
                               f"{tail(self.log)}")
        data = json.loads(line)
        outcomes: Counter[str] = Counter()
        errors = []
        for _start, _ns, outcome in data["results"]:
            if outcome.isdigit():
                outcomes[outcome] += 1
            else:
                outcomes["error"] += 1
                errors.append(outcome)
        return PostResult(data["t0"], data["t1"], data["cpu"],
                          [ns for _s, ns, _o in data["results"]], outcomes, errors)


# --- the bench -----------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Processes) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.config = tmp / "gateway.toml"
        self.db = tmp / "gateway.db"
        self.csv = tmp / "contacts.csv"
        self.log = tmp / "gateway.log"
        self.action_result: Any = None  # what smtp_window's `action` returned
        self.outbox = tmp / "outbox"
        self.summary = Summary("one run on a noisy 2-core VM; the clients share the cores with "
                               "the gateway")
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.gateway: subprocess.Popen[bytes] | None = None
        self.urls: dict[str, str] = {}  # u* address -> its List-Unsubscribe https URL
        self.delivered = 0  # copies the Maildir should hold once the queue is empty

    def write_config(self) -> None:
        self.config.write_text(f"""\
[smtp]
listen = "{HOST}:{self.smtp_port}"
hostname = "bench.local"
tls_self_signed = false
max_recipients = 1000
max_connections_per_ip = 1000
processes = {self.args.processes}
trusted_clients = [{{ network = "127.0.0.1/32", account = "{ACCOUNT}" }}]

[http]
listen = "{HOST}:{self.http_port}"
public_url = "http://{HOST}:{self.http_port}"

[store]
url = "sqlite:///{self.db}"

[webhooks]
opt_out_secret = "{WEBHOOK_SECRET}"

[controller]
name = "Bench Controller SAS"
address = "1 rue du Banc, 75001 Paris"
privacy_url = "https://bench.example/privacy"
dpo_email = "dpo@bench.example"

[secrets]
token_key_file = "{self.tmp / 'secrets' / 'token.key'}"

[delivery]
mode = "maildir"
maildir = "{self.outbox}"

[log]
level = "WARNING"
""")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return gateway_cli(self.config, *args, stdin=stdin)

    def setup(self) -> None:
        n = self.args.posts
        print(f"\n[1/6] set-up: ledger of {n:,} u* + {SENDER_CONTACTS:,} s* contacts with "
              "consent, account `bench` ...", flush=True)
        rows = ([unsubscriber(i) for i in range(n)] + [sendee(i) for i in range(SENDER_CONTACTS)]
                + [webhooker(i) for i in range(self.args.webhook_events)])
        self.csv.write_text(CSV_HEADER + "\n" + "".join(
            f"{a},person,granted,2026-01-05,web form,signup form,direct\n" for a in rows))
        imported = self.cli("contacts", "import", str(self.csv))
        if imported.returncode != 0:
            raise RuntimeError(f"`gateway contacts import` failed (exit {imported.returncode}):"
                               f" {(imported.stderr or imported.stdout).strip()}")
        print(f"  contacts import: {imported.stdout.strip() or '(nothing said)'}")
        added = self.cli("accounts", "add", ACCOUNT, "--from-domain", SENDER_DOMAIN,
                         "--password-stdin", stdin=ACCOUNT_PASSWORD + "\n")
        if added.returncode != 0:
            raise RuntimeError("`gateway accounts add` failed (exit "
                               f"{added.returncode}): {(added.stderr or added.stdout).strip()}")

    def start_gateway(self) -> None:
        with self.log.open("wb") as log:
            self.gateway = self.procs.start(
                [sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if wait_until(lambda: smtp_ready(self.smtp_port) and http_ready(self.http_port), 60,
                      proc=self.gateway):
            return
        raise RuntimeError(f"`gateway serve` did not listen on {HOST}:{self.smtp_port} and "
                           f"{HOST}:{self.http_port} (exit {self.gateway.poll()}):\n"
                           f"{tail(self.log)}")

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.procs.stop(self.gateway, grace=35.0)  # SIGTERM drains for up to 30 s
            self.gateway = None

    def copies(self) -> list[Path]:
        try:
            return [Path(e.path) for e in os.scandir(self.outbox / "new")]
        except FileNotFoundError:
            return []

    def wait_delivered(self, timeout: float = 180.0) -> float:
        """Wait until the Maildir holds every copy accepted so far; the seconds it took."""
        t0 = time.monotonic()
        while True:
            have = len(self.copies())
            if have >= self.delivered:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"delivery did not catch up: {have:,} copies in the Maildir, "
                                   f"{self.delivered:,} expected after {timeout:.0f} s")
            if self.gateway is not None and self.gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited ({self.gateway.returncode}):\n"
                                   f"{tail(self.log)}")
            time.sleep(0.2)

    # 2. tokens --------------------------------------------------------------------------

    def collect_tokens(self) -> None:
        n = self.args.posts
        print(f"\n[2/6] tokens: one message to each of the {n:,} u* addresses (and one to each "
              f"s* address, so first-message work is out of the measured windows), "
              f"{RCPTS_PER_WARMUP_MESSAGE} RCPTs per message ...", flush=True)
        self.start_gateway()
        rcpts = [unsubscriber(i) for i in range(n)] + [sendee(i) for i in range(SENDER_CONTACTS)]
        batches = [rcpts[i:i + RCPTS_PER_WARMUP_MESSAGE]
                   for i in range(0, len(rcpts), RCPTS_PER_WARMUP_MESSAGE)]
        t0 = time.monotonic()
        try:
            run_loop(lambda: send_batches(self.smtp_port, batches, min(4, len(batches))))
        except (OSError, SmtpError) as exc:
            raise RuntimeError(f"token-collection messages: {type(exc).__name__}: {exc}") from exc
        self.delivered += len(rcpts)
        self.wait_delivered()
        print(f"  {len(batches)} messages, {len(rcpts):,} copies delivered in "
              f"{time.monotonic() - t0:.1f} s")
        one_click = 0
        for path in self.copies():
            head = path.read_bytes().split(b"\r\n\r\n", 1)[0]
            head = re.sub(rb"\r?\n[ \t]+", b" ", head)  # unfold
            to = re.search(rb"^Delivered-To: *(\S+)", head, re.M | re.I)
            url = re.search(rb"^List-Unsubscribe: *<(https?://[^>]+)>", head, re.M | re.I)
            if to is None or not to[1].startswith(b"u"):
                continue
            if url is None:
                raise RuntimeError(f"no List-Unsubscribe URL in {path}")
            self.urls[to[1].decode()] = url[1].decode()
            if re.search(rb"^List-Unsubscribe-Post: *List-Unsubscribe=One-Click", head,
                         re.M | re.I):
                one_click += 1
        missing = n - len(self.urls)
        sample = next(iter(self.urls.values()), "")
        print(f"  List-Unsubscribe URLs read: {len(self.urls):,} distinct u* copies "
              f"({one_click:,} with List-Unsubscribe-Post), e.g. {sample}")
        if missing or len(set(self.urls.values())) != n:
            raise RuntimeError(f"expected {n:,} distinct URLs, got {len(set(self.urls.values())):,}"
                               f" for {len(self.urls):,} addresses")

    # 3-4. SMTP windows ------------------------------------------------------------------

    def cpu_snapshot(self) -> tuple[float, float, float, float, float]:
        """(monotonic time, gateway CPU, its event loop's (main thread's) CPU, this process's
        CPU (the SMTP client), the machine's busy CPU), in seconds."""
        assert self.gateway is not None
        own = os.times()
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
        try:  # the main thread: its id is the process id
            pid = self.gateway.pid
            fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            loop = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            loop = 0.0
        return (time.monotonic(), cpu_seconds(self.gateway.pid) or 0.0, loop,
                own.user + own.system, busy / tick)

    def smtp_window(self, label: str, first: int, posts: PostClient | None = None,
                    action: Callable[[], Awaitable[Any]] | None = None
                    ) -> tuple[LoadResult, PostResult | None, float | None, tuple[float, ...]]:
        """One SMTP window of --duration seconds; with `posts`, the POSTs start --lead seconds
        in and the window lasts at least until they are all answered; `action` is awaited
        --lead seconds in (its result in self.action_result). The last item: the CPU shares
        (gateway, its loop, SMTP client, machine) from --lead seconds in until the POSTs are
        answered (else the window's end)."""
        duration, lead, sessions = self.args.duration, self.args.lead, self.args.sessions
        assert self.gateway is not None
        cpu0 = cpu_seconds(self.gateway.pid)
        marks = []

        async def body() -> tuple[LoadResult, PostResult | None]:
            stop = asyncio.Event()
            if posts is not None:
                await posts.start()
            load = asyncio.create_task(smtp_load(self.smtp_port, sessions, stop, first))
            await asyncio.sleep(lead)
            marks.append(await asyncio.to_thread(self.cpu_snapshot))  # not in the loop
            if action is not None:
                self.action_result = await action()
            posted: PostResult | None = None
            if posts is not None:
                posts.go()
                posted = await posts.result(timeout=600)
            else:
                await asyncio.sleep(duration - lead)
            marks.append(await asyncio.to_thread(self.cpu_snapshot))  # not in the loop
            await asyncio.sleep(max(0.0, duration - lead - (posted.t1 - posted.t0
                                                             if posted else duration - lead)))
            stop.set()
            return await load, posted

        t0 = time.monotonic()
        (load, posted), _loop = run_loop(body)
        wall = time.monotonic() - t0
        cpu1 = cpu_seconds(self.gateway.pid)
        gateway_cpu = (cpu1 - cpu0) / wall if cpu0 is not None and cpu1 is not None else None
        self.delivered += len(load.accepted)
        rejected = sum(load.codes.values())
        print(f"  {label}: {len(load.accepted):,} messages accepted in "
              f"{load.ended - load.started:.1f} s"
              + (f", {rejected} not accepted: {dict(load.codes)}" if rejected else "")
              + (f"; gateway CPU {gateway_cpu:.0%} of a core" if gateway_cpu is not None else ""))
        for text in load.errors[:5]:
            print(f"    session error: {text}")
        if load.errors:
            raise RuntimeError(f"{len(load.errors)} SMTP session(s) failed in {label}")
        if not load.accepted:
            raise RuntimeError(f"no message accepted in {label}")
        (t0, *c0), (t1, *c1) = marks
        return load, posted, gateway_cpu, tuple((b - a) / (t1 - t0) for a, b in zip(c0, c1,
                                                                          strict=True))

    def run_windows(self) -> None:
        a = self.args
        print(f"\n[3/6] SMTP windows: {a.sessions} sessions, one message after another "
              f"(1 RCPT, ~{len(message('s0@example.net', 0)) // 100 / 10:.1f} KB, connection "
              f"reused), {a.duration:g} s each: baseline, with {a.posts:,} POSTs from "
              f"{a.concurrency} {a.client} clients starting {a.lead:g} s in, the control (the "
              f"same POSTs to a stand-in server), baseline again. "
              f"Rates skip the first {a.lead:g} s; delivery catches up between windows ...",
              flush=True)
        before, _, _, cpu_before = self.smtp_window("baseline (before)", 0)
        caught = self.wait_delivered()
        spec = self.tmp / "posts.json"
        urls = [self.urls[unsubscriber(i)] for i in range(a.posts)]
        spec.write_text(json.dumps({"urls": urls, "concurrency": a.concurrency,
                                    "client": a.client, "timeout": 60.0}))
        client = PostClient(self.procs, spec, self.tmp / "post-client.log")
        loaded, posted, _, cpu_posts = self.smtp_window("with POSTs", 7, client)
        assert posted is not None
        caught2 = self.wait_delivered()
        control, controlled, cpu_control = self.control_window(
            urls, len(posted.latencies) / (posted.t1 - posted.t0))
        caught3 = self.wait_delivered()
        after, _, _, cpu_after = self.smtp_window("baseline (after)", 13)
        caught4 = self.wait_delivered()
        print(f"  delivery caught up {caught:.1f} / {caught2:.1f} / {caught3:.1f} / "
              f"{caught4:.1f} s after each window")

        rate_before = before.rate(before.started + a.lead, before.ended)
        rate_after = after.rate(after.started + a.lead, after.ended)
        baseline = (rate_before + rate_after) / 2
        during = loaded.rate(posted.t0, posted.t1)
        rest = loaded.rate(posted.t1, loaded.ended)
        pre = loaded.rate(loaded.started + a.lead / 2, posted.t0)
        whole = loaded.rate(loaded.started + a.lead, loaded.ended)
        ratio = during / baseline if baseline else float("nan")
        control_during = control.rate(controlled.t0, controlled.t1)
        control_ratio = control_during / baseline if baseline else float("nan")
        control_seconds = controlled.t1 - controlled.t0
        post_seconds = posted.t1 - posted.t0
        n_done = len(posted.latencies)
        ok200 = posted.outcomes["200"]
        others = {k: v for k, v in posted.outcomes.items() if k not in ("200", "error")}
        errors = posted.outcomes["error"]
        post_rate = n_done / post_seconds if post_seconds > 0 else float("nan")
        p50, p99, pmax = (pct(posted.latencies, p) for p in (50, 99, 100))

        print(f"\n[4/6] the POSTs: {n_done:,} in {post_seconds:.2f} s = {post_rate:,.0f}/s from "
              f"{a.concurrency} clients; 200 x {ok200:,}"
              + "".join(f", {k} x {v}" for k, v in sorted(others.items()))
              + f", errors x {errors}")
        for text in posted.errors[:5]:
            print(f"    {text}")
        print(f"  latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {pmax:.1f} ms "
              f"(each from the request's start to the end of the response body)")
        print(f"  ({a.concurrency} in flight: mean latency >= {a.concurrency} / rate = "
              f"{a.concurrency * 1e3 / post_rate:.1f} ms, Little's law; POST client CPU "
              f"{posted.cpu / post_seconds:.0%} of a core)")
        print(f"  SMTP msg/s: baseline before {rate_before:,.0f}, after {rate_after:,.0f} "
              f"(mean {baseline:,.0f}); in the POST window: before the POSTs {pre:,.0f}, during "
              f"them {during:,.0f} ({post_seconds:.2f} s), after them {rest:,.0f}, whole window "
              f"{whole:,.0f}")
        print(f"  ratio during POSTs / baseline = {ratio:.2f}")
        print(f"  control: the same client, paced to the same rate, POSTing to a stand-in HTTP "
              f"server in a process of its own (the gateway serves no HTTP): "
              f"{len(controlled.latencies):,} in {control_seconds:.2f} s, SMTP during them "
              f"{control_during:,.0f} msg/s, ratio {control_ratio:.2f}: what the POST clients "
              f"alone cost SMTP on these shared cores; the gateway's HTTP work beyond that: "
              f"{ratio / control_ratio:.2f}")
        cores = os.cpu_count() or 0
        print(f"  CPU, % of a core: the gateway (its event loop), the SMTP client, the POST "
              f"client; the whole machine (of {cores * 100}%):")
        for label, (gateway, loop, smtp, machine), post in (
                ("baseline before", cpu_before, "-"),
                ("during the POSTs", cpu_posts, f"{posted.cpu / post_seconds:.0%}"),
                ("control", cpu_control, f"{controlled.cpu / control_seconds:.0%}"),
                ("baseline after", cpu_after, "-")):
            print(f"    {label:16s}  {gateway:4.0%} ({loop:.0%}), {smtp:.0%}, {post}; "
                  f"{machine:.0%}")
        print(f"  SMTP end-of-DATA -> 250, p50 / p99: baseline before "
              f"{before.data_latency(before.started + a.lead, before.ended)}, during the POSTs "
              f"{loaded.data_latency(posted.t0, posted.t1)}, after them "
              f"{loaded.data_latency(posted.t1, loaded.ended)}")

        s = self.summary
        s.add("POSTs done", f"{n_done:,}", f"{a.posts:,}", n_done == a.posts)
        s.add("POST 200s", f"{ok200:,}", f"{a.posts:,}", ok200 == a.posts)
        s.add("POST errors / other codes", f"{errors} / {sum(others.values())}", "0",
              errors + sum(others.values()) == 0)
        s.add("POST p50", f"{p50:.1f} ms", "", None)
        s.add("POST p99", f"{p99:.1f} ms", f"< {TARGET_POST_P99_MS:g} ms",
              p99 < TARGET_POST_P99_MS)
        s.add("POST max", f"{pmax:.1f} ms", "", None)
        s.add("POST rate", f"{post_rate:,.0f}/s", "", None)
        s.add("SMTP msg/s baseline (before, after)",
              f"{baseline:,.0f} ({rate_before:,.0f}, {rate_after:,.0f})", "", None)
        s.add("SMTP msg/s during the POSTs", f"{during:,.0f}", "", None)
        s.add("SMTP ratio with / without POSTs", f"{ratio:.2f}",
              f">= {TARGET_SMTP_RATIO:.2f}", ratio >= TARGET_SMTP_RATIO)
        s.add("(whole POST window / baseline)", f"{whole / baseline:.2f}", "", None)
        s.add("control: the POST clients alone", f"{control_ratio:.2f}", "", None)
        s.add("(ratio / control: the gateway's part)", f"{ratio / control_ratio:.2f}", "", None)

    def done_page(self, url: str) -> bytes:
        """The page the gateway answers a one-click POST with (for the stand-in)."""
        parts = urlsplit(url)
        with socket.create_connection((HOST, self.http_port), timeout=10.0) as sock:
            sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
                         "Content-Type: application/x-www-form-urlencoded\r\n"
                         f"Content-Length: {len(ONE_CLICK_BODY)}\r\n\r\n".encode()
                         + ONE_CLICK_BODY)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"a one-click POST for the stand-in's page: {head[:80]!r}")
        return body

    def control_window(self, urls: list[str], rate: float
                       ) -> tuple[LoadResult, PostResult, tuple[float, ...]]:
        """The POST window again, with the same client and concurrency, paced to the rate
        the gateway answered at, POSTing to a stand-in server in a process of its own that
        answers the gateway's page at once: what the POST client alone costs SMTP on the shared
        cores, the gateway doing no HTTP work."""
        page = self.tmp / "done-page.html"
        page.write_bytes(self.done_page(urls[0]))
        port = free_port()
        with (self.tmp / "stand-in.log").open("ab") as log:
            server = self.procs.start([sys.executable, str(Path(__file__).resolve()),
                                       "--stand-in", str(port), str(page)],
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT)
        try:
            if not wait_until(lambda: http_ready(port), 30, proc=server):
                raise RuntimeError(f"the stand-in server did not start:\n"
                                   f"{tail(self.tmp / 'stand-in.log')}")
            spec = self.tmp / "posts-control.json"
            spec.write_text(json.dumps({
                "urls": [f"http://{HOST}:{port}{urlsplit(url).path}" for url in urls],
                "concurrency": self.args.concurrency, "client": self.args.client,
                "timeout": 60.0, "rate": rate}))
            client = PostClient(self.procs, spec, self.tmp / "post-client.log")
            load, posted, _, cpu = self.smtp_window("control (stand-in)", 31, client)
        finally:
            self.procs.stop(server)
        assert posted is not None
        if posted.outcomes["200"] != len(urls):
            raise RuntimeError(f"the control's POSTs: {dict(posted.outcomes)} {posted.errors[:3]}")
        return load, posted, cpu

    # 5. a webhook batch -------------------------------------------------------------------

    def webhook_action(self) -> Callable[[], Awaitable[tuple[float, float, int, str]]]:
        """The signed POST /webhooks/opt-out of --webhook-events events, ready to go: httpx
        imported, the body built and signed, the client made (its TLS context takes tens of
        ms), so that none of it stalls the SMTP sessions sharing the client's event loop.
        Awaited: (start, end, status, body)."""
        import httpx

        n = self.args.webhook_events
        body = json.dumps({"events": [{"id": f"bench-{i}", "email": webhooker(i),
                                       "reason": "bench"} for i in range(n)]},
                          separators=(",", ":")).encode()
        stamp = int(time.time())
        mac = hmac.new(WEBHOOK_SECRET.encode(), b"%d." % stamp + body, hashlib.sha256)
        headers = {"X-Gateway-Signature": f"t={stamp},v1={mac.hexdigest()}",
                   "Content-Type": "application/json"}
        client = httpx.AsyncClient(timeout=60.0)
        url = f"http://{HOST}:{self.http_port}/webhooks/opt-out"

        async def post() -> tuple[float, float, int, str]:
            try:
                t0 = time.monotonic()
                answer = await client.post(url, content=body, headers=headers)
                t1 = time.monotonic()
            finally:
                await client.aclose()
            return t0, t1, answer.status_code, answer.text.strip()

        return post

    def run_webhook(self) -> None:
        """A batch of --webhook-events events (an ESP pushing its complaints) in one POST,
        while the SMTP sessions send: how long it takes, and how long the messages whose
        commit waited behind it took."""
        a = self.args
        n = a.webhook_events
        print(f"\n[5/6] a webhook batch: one POST /webhooks/opt-out of {n:,} events, "
              f"{a.lead:g} s into an SMTP window of {a.duration:g} s ...", flush=True)
        loaded, _, _, _ = self.smtp_window("with the webhook", 19, action=self.webhook_action())
        self.wait_delivered()
        t0, t1, status, text = self.action_result
        ms = (t1 - t0) * 1e3
        print(f"  webhook: {status} in {ms:.1f} ms: {text[:80]}")
        waits = [ns for t, ns in zip(loaded.accepted, loaded.data_ns, strict=True)
                 if t0 <= t < t1 + 0.05]
        before = [ns for t, ns in zip(loaded.accepted, loaded.data_ns, strict=True)
                  if t0 - 2.0 <= t < t0]
        print(f"  SMTP end-of-DATA -> 250: {len(waits)} messages answered while it ran (and "
              f"50 ms after), max {pct(waits, 100):.1f} ms; the 2 s before it: p99 "
              f"{pct(before, 99):.1f} ms, max {pct(before, 100):.1f} ms")
        s = self.summary
        s.add(f"webhook batch ({n:,} events)", f"{ms:.1f} ms", "200", status == 200)
        s.add("SMTP end-of-DATA max during it", f"{pct(waits, 100):.1f} ms", "", None)

    # 6. checks ----------------------------------------------------------------------------

    def check(self) -> None:
        n = self.args.posts
        hooked = self.args.webhook_events
        print("\n[6/6] checks: the suppression table, a RCPT to every unsubscribed address, "
              "the gateway log ...", flush=True)

        async def rcpts() -> Counter[str]:
            replies: Counter[str] = Counter()
            session = Session(self.smtp_port)
            await session.open()
            try:
                for i in range(n):
                    if i % 100 == 0:
                        if i:
                            await session.command("RSET")
                        await session.command(f"MAIL FROM:<{SENDER}>")
                    _code, line = await session.send(f"RCPT TO:<{unsubscriber(i)}>\r\n".encode())
                    replies[" ".join(line.split()[:3])] += 1
                    if i == 0:
                        print(f"  RCPT TO:<{unsubscriber(0)}> -> {line}")
                await session.close()
            finally:
                session.abort()
            return replies

        try:
            replies, _loop = run_loop(rcpts)
        except (OSError, SmtpError) as exc:
            raise RuntimeError(f"RCPT check: {type(exc).__name__}: {exc}") from exc
        print(f"  RCPT replies for the {n:,} u* addresses: {dict(replies)}")
        r1 = replies["550 5.7.1 R1"]
        self.stop_gateway()
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            count = conn.execute("SELECT count(*) FROM suppression").fetchone()[0]
            channels = dict(conn.execute(
                "SELECT channel, count(*) FROM suppression GROUP BY channel").fetchall())
            events = conn.execute("SELECT count(*) FROM contact_events WHERE kind = 'objection'"
                                  ).fetchone()[0]
        print(f"  suppression rows: {count:,} {channels}; objection events: {events:,}")
        logged = [line for line in tail(self.log, 100_000).splitlines()
                  if (" WARNING " in line or " ERROR " in line or "Traceback" in line)
                  and "public_url" not in line and "no [[dkim]] key" not in line]
        print(f"  gateway log: {len(logged)} unexpected warning/error line(s)"
              + "".join(f"\n    {line}" for line in logged[-10:]))
        s = self.summary
        s.add("suppression rows", f"{count:,}", f"{n + hooked:,}", count == n + hooked
              and channels.get("one-click", 0) == n and channels.get("webhook", 0) == hooked)
        s.add("RCPT to u* -> 550 5.7.1 R1", f"{r1:,}", f"{n:,}", r1 == n)


# --- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="200 POSTs, 5 s SMTP windows (POSTs start 1 s in)")
    parser.add_argument("--posts", type=int, help="one-click POSTs (default 1,000; --quick 200)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrent POST clients (default 50)")
    parser.add_argument("--client", choices=("httpx", "raw"), default="httpx",
                        help="POST client: httpx (one AsyncClient per worker, the default) or "
                        "raw (a minimal HTTP/1.1 client, ~10x less client CPU)")
    parser.add_argument("--sessions", type=int, default=20,
                        help="concurrent SMTP sessions (default 20)")
    parser.add_argument("--duration", type=float,
                        help="seconds per SMTP window (default 10; --quick 5)")
    parser.add_argument("--lead", type=float,
                        help="seconds into the window before the POSTs start, also the warm-up "
                        "left out of the rates (default 2; --quick 1)")
    parser.add_argument("--processes", type=int, default=1,
                        help="gateway smtp.processes (default 1, the gateway's default)")
    parser.add_argument("--webhook-events", type=int,
                        help="events in the webhook batch sent during a window of its own "
                        "(default 1,000; --quick 200; 0: no webhook step)")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temp dir (database, Maildir, config, logs)")
    parser.add_argument("--post-worker", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--stand-in", nargs=2, metavar=("PORT", "PAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stand_in:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        run_loop(lambda: stand_in(int(args.stand_in[0]), args.stand_in[1]), guard=False)
        return 0
    if args.post_worker:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        run_loop(lambda: post_worker(args.post_worker), guard=False)
        return 0
    args.posts = args.posts or (200 if args.quick else 1000)
    if args.webhook_events is None:
        args.webhook_events = 200 if args.quick else 1000
    args.duration = args.duration or (5.0 if args.quick else 10.0)
    args.lead = args.lead if args.lead is not None else (1.0 if args.quick else 2.0)
    if min(args.posts, args.concurrency, args.sessions, args.processes) < 1:
        parser.error("counts must be at least 1")
    if not 0 <= args.webhook_events <= 1000:
        parser.error("--webhook-events: 0 to 1,000 (the gateway's limit per call)")
    if not 0 < args.lead < args.duration:
        parser.error("--lead must be between 0 and --duration")

    catch_signals()
    tmp = Path(tempfile.mkdtemp(prefix="unsubscribe-bench-"))
    procs = Processes()
    bench = Bench(args, tmp, procs)
    print(f"unsubscribe bench: {args.posts:,} one-click POSTs from {args.concurrency} clients "
          f"while {args.sessions} SMTP sessions send; temp dir {tmp}; Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cores, gateway smtp.processes = "
          f"{args.processes}. The POST client, the SMTP client and the gateway share the "
          "machine (a noisy 2-core VM: ~30% between runs). Load average now: "
          + load_average())
    failed = False
    try:
        bench.write_config()
        bench.setup()
        bench.collect_tokens()
        bench.run_windows()
        if args.webhook_events:
            bench.run_webhook()
        bench.check()
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError, sqlite3.Error,
            ValueError) as exc:
        print(f"\nFAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        failed = True
    finally:
        ignore_signals()
        bench.stop_gateway()
        procs.stop_all()
        if bench.summary.rows:
            bench.summary.print()
        print("Load average at the end: " + load_average())
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
