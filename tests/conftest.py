"""Shared fixtures: a real upstream SMTP sink, and the real gateway in a subprocess."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller

STRONG_PASSWORD = "Correct-Horse-Battery-Staple-42!"
CSV_HEADER = ("email,kind,audience,relationship,language,first_name,last_name,job_title,topics,"
              "customer_categories,consent,consent_at,consent_method,consent_proof,source_name,"
              "source_type,source_visibility,collected_at,last_interaction_at,informed_at,"
              "opt_out_offered")
# Recipients the relay tests mail: in the ledger with provable consent (R6), so the policy
# lets them through and those tests see the relay itself.
RELAY_RECIPIENTS = (
    "jane@example.net", "gone@example.net", "a@example.net", "b@example.net", "you@example.net",
    "slow@example.net", "tx@example.net", "rg@example.net", "victim@example.net",
    "elsewhere.example@example.net", "a@x.example", "b@x.example", "c@x.example",
    "jane@folded.example", "john@example.org", "ceo@other.example", "cafe@example.fr",
    "a@one.example", "b@two.example",
)


def consenting_contacts_csv(path: Path, addresses: tuple[str, ...] = RELAY_RECIPIENTS) -> Path:
    """A contact CSV where each address gave provable consent through a web form."""
    rows = [f"{a},person,b2c,prospect,en,,,,,,granted,2026-01-05T10:00:00Z,web form,"
            f"form v1,signup form,direct,,2026-01-05,,," for a in addresses]
    path.write_text("\n".join([CSV_HEADER, *rows]) + "\n")
    return path


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port to listen on, below the kernel's ephemeral range.

    Port 0 hands out an ephemeral port, which the client side of any later connection (the
    tests make thousands) may take before the gateway binds it: "Address already in use" once
    in a few hundred starts. Ports under 32768 are never chosen for outgoing connections.
    """
    low, high = 20000, 32767
    try:
        low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, low_ephemeral - 1)
    except (OSError, ValueError, IndexError):
        pass
    if high - low < 1000:  # an unusual ephemeral range: let the kernel choose
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    # pytest-xdist workers (gw0, gw1, ...) each draw from a slice of their own
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.isdigit() and workers > 1:
        size = (high - low + 1) // workers
        low, high = low + int(worker) * size, low + (int(worker) + 1) * size - 1
    for _ in range(200):
        port = random.randint(low, high)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high}")


def wait_until(predicate: Callable[[], object], timeout: float = 15.0,
               interval: float = 0.05, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str] = field(default_factory=list)


class SinkHandler:
    """An upstream MTA that records what it gets; recipients in `refuse` get that reply."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.refuse: dict[str, str] = {}
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: ANN001
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content,
                                          list(envelope.mail_options)))
        return "250 OK queued"


@dataclass
class Sink:
    port: int
    handler: SinkHandler = field(default_factory=SinkHandler)
    controller: Controller | None = None

    def start(self) -> Sink:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        wait_until(lambda: len(self.messages) >= count, timeout, what=f"{count} messages at sink")
        return self.messages


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(free_port()).start()
    yield s
    s.stop()


def write_config(path: Path, *, smtp_port: int, http_port: int, sink_port: int,
                 extra: str = "", smtp_extra: str = "", trusted: bool = True,
                 store: Path | None = None, retry_base: float = 1.0,
                 delivery_extra: str = "", http_extra: str = "") -> Path:
    store = store or path.parent / "gateway.db"
    trusted_line = ('trusted_clients = [{ network = "127.0.0.0/8", account = "crm" }]'
                    if trusted else "")
    path.write_text(f"""
[smtp]
listen = "127.0.0.1:{smtp_port}"
hostname = "gateway.test"
auth_failure_delay = 0.0
{trusted_line}
{smtp_extra}
[http]
listen = "127.0.0.1:{http_port}"
# no public_url: its default, http://<http.listen>, is what every unsubscribe link tested
# reaches (the links once pointed at :8025 whatever listen said)
{http_extra}
[store]
url = "sqlite:///{store}"
[delivery]
mode = "smtp"
host = "127.0.0.1"
port = {sink_port}
retry_base_seconds = {retry_base}
retry_max_seconds = {max(2.0, retry_base)}
scan_seconds = 0.2
{"" if "timeout_seconds" in delivery_extra else "timeout_seconds = 5.0"}
{delivery_extra}
[log]
level = "INFO"
{extra}
""")
    return path


def make_store(config: Path) -> Path:
    """Create the (empty, migrated) store `config` names, as `gateway serve` would: other
    commands refuse to create one (a command run from the wrong directory used a new empty
    store)."""
    import asyncio
    import tomllib

    from gateway.store.db import Database

    path = Path(tomllib.loads(config.read_text())["store"]["url"].removeprefix("sqlite:///"))

    async def create() -> None:
        async with Database(path):
            pass
    asyncio.run(create())
    return path


def gateway_cli(config: Path, *args: str, stdin: str | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), *args],
                          input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)


@dataclass
class GatewayProcess:
    config: Path
    smtp_port: int
    http_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    launcher: tuple[str, ...] = ()  # a command that execs the rest (see test_serve.py)

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "gateway", "--config", str(self.config),
             "serve"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.config.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"gateway did not start:\n{self.output}")

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if hasattr(self, "log"):
            self.log.close()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return gateway_cli(self.config, *args, stdin=stdin)


@pytest.fixture
def make_gateway(tmp_path: Path, sink: Sink) -> Iterator[Callable[..., GatewayProcess]]:
    """Build (and stop at the end) gateway processes writing into tmp_path."""
    started: list[GatewayProcess] = []

    def build(*, extra: str = "", smtp_extra: str = "", trusted: bool = True,
              accounts: dict[str, str] | None = None,
              sink_port: int | None = None, start: bool = True,
              retry_base: float = 1.0, delivery_extra: str = "", http_extra: str = "",
              contacts: Path | None = None) -> GatewayProcess:
        """`contacts`: a CSV to import; by default RELAY_RECIPIENTS, all with consent."""
        config = write_config(tmp_path / "gateway.toml", smtp_port=free_port(),
                              http_port=free_port(), sink_port=sink_port or sink.port,
                              extra=extra, smtp_extra=smtp_extra, trusted=trusted,
                              retry_base=retry_base, delivery_extra=delivery_extra,
                              http_extra=http_extra)
        gw = GatewayProcess(config, *_ports(config), tmp_path / f"gateway-{len(started)}.log")
        for name, domain in (accounts if accounts is not None else {"crm": "example.com"}).items():
            result = gw.cli("accounts", "add", name, "--from-domain", domain,
                            "--password-stdin", stdin=STRONG_PASSWORD + "\n")
            assert result.returncode == 0, result.stderr
        csv_path = contacts or consenting_contacts_csv(tmp_path / "relay-contacts.csv")
        result = gw.cli("contacts", "import", str(csv_path))
        assert result.returncode == 0, result.stderr
        started.append(gw)
        return gw.start() if start else gw

    yield build
    for gw in started:
        gw.stop()


def _ports(config: Path) -> tuple[int, int]:
    import tomllib

    raw = tomllib.loads(config.read_text())
    return (int(raw["smtp"]["listen"].rpartition(":")[2]),
            int(raw["http"]["listen"].rpartition(":")[2]))


def message(subject: str = "Hello", sender: str = "news@example.com",
            to: str = "jane@example.net", body: str = "Hello Jane,\r\n\r\nA message.\r\n",
            extra_headers: str = "") -> bytes:
    return (f"From: Example News <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{time.monotonic_ns()}@example.com>\r\n{extra_headers}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
            ).encode()


GATEWAY_FIELDS = (b"list-unsubscribe:", b"list-unsubscribe-post:", b"dkim-signature:",
                  b"received:")


def without_gateway_fields(content: bytes) -> bytes:
    """A delivered single-part text copy minus what the gateway adds to every copy: the
    Received, List-Unsubscribe, List-Unsubscribe-Post and DKIM-Signature fields and the
    notice at the end of the text (checking that the fields and the notice are there)."""
    end = content.find(b"\r\n\r\n")
    head, body = content[:end + 2], content[end + 2:]
    kept, dropping, seen = [], False, set()
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].lower() + b":"
        dropping = name in GATEWAY_FIELDS
        if dropping:
            seen.add(name)
        else:
            kept.append(line)
    assert {b"received:", b"list-unsubscribe:", b"list-unsubscribe-post:"} <= seen, head
    notice = body.rfind(b"\r\n\r\n-- \r\n")  # a single text/plain part: the notice ends it
    assert notice >= 0 and b"Unsubscribe in one click:" in body[notice:], body[-600:]
    assert re.search(rb"http://127\.0\.0\.1:\d+/u/[a-z2-7]{39}\r\n", body[notice:])
    return b"\r\n".join(kept) + b"\r\n" + body[:notice] + b"\r\n"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def db(tmp_path: Path):
    """A migrated store in a real SQLite file (tests/store)."""
    from gateway.store.db import Database

    async with Database(tmp_path / "store.db") as database:
        yield database


@pytest.fixture
def hasher(tmp_path: Path):
    """The address hasher of a store, with a real key file (created 0600)."""
    from gateway.security.keys import AddressHasher, load_or_create_key

    return AddressHasher(load_or_create_key(tmp_path / "secrets" / "hash.key"))
