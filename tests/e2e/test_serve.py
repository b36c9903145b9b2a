"""`gateway serve`: embedded defaults, config errors, graceful stop, store failures."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import (
    STRONG_PASSWORD,
    GatewayProcess,
    Sink,
    free_port,
    gateway_cli,
    message,
    wait_until,
    write_config,
)
from rawsmtp import RawSmtp


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_newcomer_runs_serve_with_no_config_at_all(tmp_path: Path):
    if not (_port_free(2525) and _port_free(8025)):
        pytest.fail("ports 2525/8025 are taken on this machine: the default-run check needs them")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("GATEWAY_")}
    add = subprocess.run([sys.executable, "-m", "gateway", "accounts", "add", "demo",
                          "--from-domain", "example.com", "--password-stdin"],
                         input=STRONG_PASSWORD + "\n", text=True, capture_output=True,
                         cwd=tmp_path, env=env, timeout=60)
    assert add.returncode == 0, add.stderr
    sample = Path(__file__).resolve().parents[2] / "config" / "contacts.example.csv"
    imported = subprocess.run([sys.executable, "-m", "gateway", "contacts", "import",
                               str(sample)], text=True, capture_output=True, cwd=tmp_path,
                              env=env, timeout=60)
    assert imported.returncode == 0, imported.stderr
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: not _port_free(8025) and not _port_free(2525), what="default ports")
        assert httpx.get("http://127.0.0.1:8025/healthz").text == "ok\n"
        s = RawSmtp(2525)
        s.cmd("EHLO c")
        s.starttls()
        s.cmd("EHLO c")
        import base64

        auth = base64.b64encode(f"\0demo\0{STRONG_PASSWORD}".encode()).decode()
        assert s.cmd("AUTH PLAIN " + auth)[0] == 235
        assert s.cmd("MAIL FROM:<me@example.com>")[0] == 250
        assert s.cmd("RCPT TO:<jeanne.martin@example.fr>") == (
            550, "5.7.1 R3 source type broker is forbidden by policy (Annuaire Pro)")
        assert s.cmd("RCPT TO:<someone@example.net>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        assert s.cmd(message(sender="me@example.com", to="someone@example.net",
                             subject="First light") + b".")[0] == 250
        s.cmd("QUIT")
        new = tmp_path / "var" / "outbox" / "new"
        files = wait_until(lambda: list(new.glob("*")), what="a file in the Maildir")
        assert b"Subject: First light" in files[0].read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    # what it printed tells where mail goes and how to send a test message
    assert "var/outbox" in out and "127.0.0.1:2525" in out
    # a command swaks takes as it is (--tls-verify takes no value: "--tls-verify 0" failed)
    assert "swaks --server 127.0.0.1 --port 2525 --tls --auth-user demo \\\n" in out
    assert "Session.login_data" not in out
    assert (tmp_path / "var" / "gateway.db").exists()


def test_the_banners_commands_name_its_config_and_no_auth_it_cannot_offer(make_gateway):
    """Started with --config, the banner printed `gateway accounts add demo ...`: the account
    went to ./var/gateway.db and the swaks test got 535. With no TLS (and no clear-text AUTH
    on loopback) it printed an AUTH test the server cannot offer (docs review)."""
    gw = make_gateway(smtp_extra="tls_self_signed = false")
    config = shlex.quote(str(gw.config.absolute()))
    for command in ("accounts add demo", "contacts import", "check --account demo"):
        assert f"gateway --config {config} {command}" in gw.output, gw.output
    assert "--auth-user" not in gw.output
    assert "trusted_clients" in gw.output
    assert f"swaks --server 127.0.0.1 --port {gw.smtp_port} \\\n" in gw.output


def test_the_banners_test_command_fits_a_gateway_without_tls(make_gateway):
    """With tls_self_signed = false the banner still said swaks --tls, which aborts against
    a server without STARTTLS (ops review)."""
    gw = make_gateway(smtp_extra="tls_self_signed = false\nallow_plain_auth_on_loopback = true")
    assert f"swaks --server 127.0.0.1 --port {gw.smtp_port} --auth-user demo" in gw.output
    # what it serves is in the log too, with its time (stdout has no timestamps)
    assert re.search(rf"\d\d:\d\d:\d\d.*ready: SMTP 127\.0\.0\.1:{gw.smtp_port}, no TLS .*; "
                     rf"HTTP 127\.0\.0\.1:{gw.http_port}; copies go to the upstream relay",
                     gw.output), gw.output
    assert "passwords go in clear text over loopback" in gw.output
    from gateway.cli.serve import _reachable
    assert [_reachable(h) for h in ("0.0.0.0", "[::]", "[::1]", "", "mx.example")] == [
        "127.0.0.1", "::1", "::1", "127.0.0.1", "mx.example"]


@pytest.mark.parametrize("body, key", [
    ("[smtp]\nlisten = \"127.0.0.1:2525\"\nbogus_key = 1\n", "smtp.bogus_key"),
    ("[smtp]\nmax_recipients = \"many\"\n", "smtp.max_recipients"),
    ("[nonsense]\nx = 1\n", "[nonsense]"),
    ("[delivery]\nmode = \"carrier-pigeon\"\n", "delivery.mode"),
])
def test_config_errors_name_the_key_and_exit_2(tmp_path: Path, body: str, key: str):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    result = gateway_cli(config, "serve")
    assert result.returncode == 2
    assert key in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["dkim key missing", "tls cert missing", "smtp port taken",
                                  "http port taken", "no notice in the default language",
                                  "upstream CA file missing", "maildir not writable",
                                  "weak webhook secret"])
def test_a_start_that_fails_exits_at_once_saying_why(tmp_path: Path, case: str):
    # each fails after the store, the ledger reader and the delivery workers have started:
    # those must not keep the process alive (it hung, deaf to SIGTERM)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    smtp_port = busy if case == "smtp port taken" else free_port()
    http_port = busy if case == "http port taken" else free_port()
    missing = tmp_path / "nowhere" / "missing.pem"
    config = write_config(
        tmp_path / "gateway.toml", smtp_port=smtp_port, http_port=http_port,
        sink_port=free_port(),
        smtp_extra=f'tls_cert = "{missing}"\ntls_key = "{missing}"'
        if case == "tls cert missing" else "",
        delivery_extra=f'starttls = true\ntls_ca_file = "{missing}"'
        if case == "upstream CA file missing" else "",
        extra=f'[[dkim]]\ndomain = "example.com"\nselector = "s1"\nkey_file = "{missing}"'
        if case == "dkim key missing" else
        '[controller]\ndefault_language = "xx"' if case.startswith("no notice") else "")
    if case == "weak webhook secret":
        config.write_text(config.read_text() + '[webhooks]\nopt_out_secret = "secret1"\n')
        # the other commands say it and go on (an upgrade must leave the CLI usable)
        listed = gateway_cli(config, "accounts", "list")
        assert listed.returncode == 0 and "webhooks.opt_out_secret: too weak" in listed.stderr
        assert "secret1" not in listed.stderr
    if case == "maildir not writable":  # every copy was deferred, then bounced
        (tmp_path / "a-file").write_text("")
        config.write_text(config.read_text().replace(
            'mode = "smtp"', f'mode = "maildir"\nmaildir = "{tmp_path / "a-file" / "outbox"}"'))
    try:
        started = time.monotonic()
        result = gateway_cli(config, "serve")
        assert time.monotonic() - started < 30
    finally:
        taken.close()
    assert "Traceback" not in result.stderr
    if case.startswith("no notice"):
        assert result.returncode == 2, result.stderr
        assert "controller.default_language" in result.stderr and "'xx'" in result.stderr
    elif case == "weak webhook secret":
        assert result.returncode == 2, result.stderr
        assert "webhooks.opt_out_secret: too weak a secret" in result.stderr
    elif case == "maildir not writable":
        assert result.returncode == 2, result.stderr
        assert "delivery.maildir: cannot deliver into" in result.stderr
        assert "Not a directory" in result.stderr
    elif case in ("dkim key missing", "tls cert missing", "upstream CA file missing"):
        assert result.returncode == 2, result.stderr
        assert str(missing) in result.stderr
        assert {"dkim key missing": "dkim[0]", "tls cert missing": "smtp.tls_cert",
                "upstream CA file missing": "delivery.tls_ca_file"}[case] in result.stderr
    else:
        assert result.returncode == 1, result.stderr
        assert "cannot start" in result.stderr and str(busy) in result.stderr
        assert ("smtp.listen" if case == "smtp port taken" else "http.listen") in result.stderr


def test_sigterm_drains_open_sessions_then_exits_0(make_gateway, sink: Sink):
    gw = make_gateway()
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    [reader] = _children(gw.proc.pid)  # the ledger reader process (store/ledger_reader.py)
    assert b"gateway.store.ledger_reader" in Path(f"/proc/{reader}/cmdline").read_bytes()
    gw.proc.send_signal(signal.SIGTERM)
    __import__("os").kill(reader, signal.SIGTERM)  # as a service manager stops the group

    def no_new_session() -> bool:  # no new sessions while draining...
        try:
            late = RawSmtp(gw.smtp_port, timeout=2)
        except OSError:
            return True
        greeted = late.greeting[0] == 220
        late.close()
        return not greeted
    wait_until(no_new_session, timeout=10, interval=0.2, what="no new session")
    # ...but the open one finishes its message
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    # ...and no new one starts: a MAIL pipelined after the dot got 250 (a client sending
    # back to back had dozens more accepted before the drain's next round closed it)
    s.send(message(subject="Drained") + b".\r\nMAIL FROM:<news@example.com>\r\n")
    assert s.reply()[0] == 250
    assert s.reply()[0] == 421 and s.closed()
    assert gw.proc.wait(30) == 0
    assert any(b"Drained" in r.content for r in sink.wait_for(1))
    wait_until(lambda: not Path(f"/proc/{reader}").exists(), what="the reader's exit")


def test_one_deadline_drains_sessions_and_deliveries_together(make_gateway):
    """A session in a transaction and an upstream that never answers: the sessions had 30 s,
    then the deliveries 30 s more (61.8 s to exit, past a supervisor's 30 s grace, whose
    SIGKILL then struck in mid-delivery). One deadline now; what is still being delivered
    is named in the log."""
    upstream = socket.create_server(("127.0.0.1", 0))  # accepts, never greets
    try:
        gw = make_gateway(sink_port=upstream.getsockname()[1],
                          delivery_extra="timeout_seconds = 300.0")
        s = RawSmtp(gw.smtp_port)
        s.cmd("EHLO c")
        assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
        assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        assert s.cmd(message(subject="Stuck upstream") + b".")[0] == 250
        stuck = RawSmtp(gw.smtp_port)  # a transaction that never ends
        stuck.cmd("EHLO c")
        assert stuck.cmd("MAIL FROM:<news@example.com>")[0] == 250
        time.sleep(1)  # the copy is with a worker, waiting for the greeting
        began = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(50) == 0
        assert time.monotonic() - began < 40  # 30 s in all, not 30 + 30
        wait_until(lambda: "still being delivered" in gw.output, what="the hand-back line")
    finally:
        upstream.close()


def test_locked_store_answers_451_never_250(make_gateway, sink: Sink, tmp_path: Path):
    gw = make_gateway()
    holder = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        s = RawSmtp(gw.smtp_port, timeout=30)
        s.cmd("EHLO c")
        s.cmd("MAIL FROM:<news@example.com>")
        s.cmd("RCPT TO:<jane@example.net>")
        s.cmd("DATA")
        code, text = s.cmd(message(subject="Locked") + b".")
        assert code == 451 and text.startswith("4.3.0")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # the client keeps the message and retries: now it goes through
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    s.cmd("RCPT TO:<jane@example.net>")
    s.cmd("DATA")
    assert s.cmd(message(subject="Retried") + b".")[0] == 250
    subjects = [r.content for r in sink.wait_for(1)]
    assert any(b"Retried" in c for c in subjects) and not any(b"Locked" in c for c in subjects)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _send_one(port: int, subject: str) -> None:
    s = RawSmtp(port)
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(message(subject=subject) + b".")[0] == 250
    s.cmd("QUIT")
    s.close()


def test_processes_share_the_port_a_dead_one_is_replaced_and_sigterm_stops_all(
        make_gateway, sink: Sink):
    gw = make_gateway(smtp_extra="processes = 2")
    workers = wait_until(lambda: len(_children(gw.proc.pid)) == 2 and _children(gw.proc.pid),
                         what="two gateway processes")
    sessions = [RawSmtp(gw.smtp_port) for _ in range(6)]  # held open: spread over both
    for i in range(10):
        _send_one(gw.smtp_port, f"multi {i}")
    sink.wait_for(10)
    for s in sessions:
        s.close()
    victim = workers[-1]
    __import__("os").kill(victim, signal.SIGKILL)
    replaced = wait_until(lambda: (lambda c: len(c) == 2 and victim not in c and c)(
        _children(gw.proc.pid)), what="a replacement process")
    _send_one(gw.smtp_port, "after the crash")
    assert any(b"after the crash" in r.content for r in sink.wait_for(11))
    assert gw.terminate(30) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in replaced)
    assert "exited with -9" in gw.output


def test_while_the_processes_drain_new_connections_are_refused(make_gateway, sink: Sink):
    """The supervisor kept its copy of the listening socket until it exited: connections
    made during the drain were taken, never greeted, and reset at the end."""
    gw = make_gateway(smtp_extra="processes = 2")
    wait_until(lambda: len(_children(gw.proc.pid)) == 2, what="two gateway processes")
    s = RawSmtp(gw.smtp_port)  # a message in progress: the drain waits for it
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    os.kill(gw.proc.pid, signal.SIGTERM)

    def refused() -> bool:  # once the workers (and the supervisor) closed their listeners
        try:
            socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=3).close()
        except ConnectionRefusedError:
            return True
        return False
    wait_until(refused, timeout=10, interval=0.2, what="new connections refused")
    assert s.cmd(message(subject="Finished in the drain") + b".")[0] == 250
    s.close()
    assert gw.terminate(30) == 0
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:  # kept (sent, or at restart)
        assert db.execute("SELECT count(*) FROM deliveries d JOIN messages m"
                          " ON m.id = d.message_id WHERE m.subject = 'Finished in the drain'"
                          ).fetchone() == (1,)


def test_a_replacement_failing_at_once_is_retried_beside_the_workers_still_serving(
        make_gateway, sink: Sink, tmp_path: Path):
    """A replacement that failed within 5 s (the disk full, here a notice template broken
    since the start) made the supervisor stop every process, the one still answering too."""
    import shutil

    import gateway
    notices = tmp_path / "notices"
    notices.mkdir()
    template = notices / "en.toml"
    shutil.copy(Path(gateway.__file__).parent / "notices" / "en.toml", template)
    good = template.read_text()
    gw = make_gateway(smtp_extra="processes = 2",
                      extra=f'[controller]\nnotices_dir = "{notices}"\n')
    workers = wait_until(lambda: len(_children(gw.proc.pid)) == 2 and _children(gw.proc.pid),
                         what="two gateway processes")
    time.sleep(5.5)  # the workers have been serving past the supervisor's 5 s
    template.write_text("version = [broken")
    os.kill(workers[-1], signal.SIGKILL)
    wait_until(lambda: "tried again in" in gw.output, what="the replacement's failure")
    _send_one(gw.smtp_port, "served meanwhile")  # by the worker still up
    assert any(b"served meanwhile" in r.content for r in sink.wait_for(1))
    assert gw.proc.poll() is None
    template.write_text(good)

    def settled() -> bool:  # two workers, the same for 3 s: the replacement has started
        before = _children(gw.proc.pid)
        time.sleep(3)
        return len(before) == 2 and _children(gw.proc.pid) == before
    wait_until(settled, timeout=60, what="the replacement running")
    assert gw.terminate(30) == 0


def test_with_no_worker_serving_a_replacement_failing_at_once_stops_the_gateway(
        make_gateway, tmp_path: Path):
    """Retried for ever, the supervisor ran on without workers, taking connections nobody
    answered, and no service manager restarted it."""
    import shutil

    import gateway
    notices = tmp_path / "notices"
    notices.mkdir()
    template = notices / "en.toml"
    shutil.copy(Path(gateway.__file__).parent / "notices" / "en.toml", template)
    gw = make_gateway(smtp_extra="processes = 2",
                      extra=f'[controller]\nnotices_dir = "{notices}"\n')
    workers = wait_until(lambda: len(_children(gw.proc.pid)) == 2 and _children(gw.proc.pid),
                         what="two gateway processes")
    template.write_text("version = [broken")
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert gw.proc.wait(timeout=30) == 1
    assert "stopping every process" in gw.output


# PR_SET_CHILD_SUBREAPER (prctl option 36), kept across execve: the supervisor then adopts the
# orphans of its workers, as PID 1 does in a container
SUBREAPER = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(36, 1, 0, 0, 0); "
             "os.execv(sys.argv[1], sys.argv[1:])")


def test_a_supervisor_that_adopts_a_dead_workers_reader_does_not_take_it_for_a_worker(
        make_gateway, sink: Sink):
    gw = make_gateway(smtp_extra="processes = 2", start=False)
    gw.launcher = (sys.executable, "-c", SUBREAPER)
    gw.start()
    workers = wait_until(lambda: len(_children(gw.proc.pid)) == 2 and _children(gw.proc.pid),
                         what="two gateway processes")
    readers = wait_until(lambda: [r for w in workers for r in _children(w)] if all(
        _children(w) for w in workers) else None, what="a ledger reader in each")
    victim = workers[0]
    [orphan] = _children(victim)
    __import__("os").kill(victim, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{orphan}").exists(), what="the orphan reader's exit")
    replaced = wait_until(lambda: (lambda c: len(c) == 2 and victim not in c and c)(
        _children(gw.proc.pid)), what="a replacement process")
    time.sleep(1.5)  # RESTART_DELAY and more: nothing else gets started
    assert sorted(_children(gw.proc.pid)) == sorted(replaced)
    assert "(worker -1)" not in gw.output and len(readers) == 2
    _send_one(gw.smtp_port, "after the adoption")
    assert any(b"after the adoption" in r.content for r in sink.wait_for(1))
    assert gw.terminate(30) == 0


def test_a_stop_closes_idle_sessions_at_once_and_a_second_signal_stops_now(make_gateway):
    """A marketing tool keeps its connection open between messages: a stop waited the whole
    30 s for it, then dropped it without a word, and a second Ctrl-C did nothing."""
    gw = make_gateway()
    idle = RawSmtp(gw.smtp_port)
    idle.cmd("EHLO c")  # between two messages
    busy = RawSmtp(gw.smtp_port)
    busy.cmd("EHLO c")
    assert busy.cmd("MAIL FROM:<news@example.com>")[0] == 250  # in a transaction
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert idle.reply() == (421, "4.3.2 Service shutting down, try again later")
    assert idle.closed() and time.monotonic() - started < 3
    time.sleep(1.0)
    assert gw.proc.poll() is None  # the transaction may still finish its message
    gw.proc.send_signal(signal.SIGTERM)  # the second signal
    assert gw.proc.wait(10) == 0 and time.monotonic() - started < 10
    assert busy.reply()[0] == 421 and busy.closed()
    assert "second signal: stopping now" in gw.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_ctrl_c_to_the_process_group_drains_every_worker(make_gateway, sink: Sink, sig):
    """Ctrl-C (or `systemctl stop`) signals the whole group: each worker had the signal and
    then its supervisor's SIGTERM, took that for a second signal and stopped at once (421 to
    the messages in DATA). SIGHUP ended the gateway without any drain."""
    gw = make_gateway(smtp_extra="processes = 2", start=False)
    gw.launcher = ("setsid",)  # a group of its own, as a terminal's foreground job
    gw.start()
    wait_until(lambda: len(_children(gw.proc.pid)) == 2, what="two gateway processes")
    sessions = []
    for i in range(6):  # spread over both workers, each in the middle of its DATA
        s = RawSmtp(gw.smtp_port)
        s.cmd("EHLO c")
        assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
        assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        s.send(message(subject=f"drained {i}")[:40])
        sessions.append((i, s))
    os.killpg(gw.proc.pid, sig)
    time.sleep(1.0)
    for i, s in sessions:
        assert s.cmd(message(subject=f"drained {i}")[40:] + b".")[0] == 250, i
        s.close()
    assert gw.proc.wait(30) == 0
    assert len(sink.wait_for(6)) == 6
    assert "second signal: stopping now" not in gw.output


IGNORING_SIGHUP = ("import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


@pytest.mark.parametrize("processes", [2])  # the supervisor and a worker's own runtime
def test_under_nohup_a_hangup_does_not_stop_the_gateway(make_gateway, processes):
    """SIGHUP drains the gateway, unless it was started ignoring it (nohup): a closed
    terminal then stopped a gateway its operator had detached on purpose."""
    gw = make_gateway(smtp_extra=f"processes = {processes}", start=False)
    gw.launcher = (sys.executable, "-c", IGNORING_SIGHUP)
    gw.start()
    gw.proc.send_signal(signal.SIGHUP)
    for pid in _children(gw.proc.pid):
        os.kill(pid, signal.SIGHUP)
    time.sleep(1.5)
    assert gw.proc.poll() is None and "received: draining" not in gw.output
    assert httpx.get(f"http://127.0.0.1:{gw.http_port}/healthz").status_code == 200
    assert gw.terminate(30) == 0


def test_workers_stop_when_their_supervisor_is_killed(make_gateway):
    """kill -9 of the supervisor left both workers running, holding the ports, with nobody
    to replace them; a new `gateway serve` then failed 'Address already in use'."""
    gw = make_gateway(smtp_extra="processes = 2")
    workers = wait_until(lambda: len(_children(gw.proc.pid)) == 2 and _children(gw.proc.pid),
                         what="two gateway processes")
    gw.proc.kill()
    gw.proc.wait(10)
    wait_until(lambda: not any(Path(f"/proc/{pid}/cmdline").exists()
                               and Path(f"/proc/{pid}/cmdline").read_bytes()
                               for pid in workers), timeout=20, what="the workers' exit")
    assert _port_free(gw.smtp_port)


def test_a_slow_commit_is_answered_not_cut_by_the_idle_timeout(make_gateway, sink: Sink,
                                                                tmp_path: Path):
    """With smtp.idle_timeout under the store's busy wait, a commit behind a lock got
    421 4.4.2 "idle", and the message was committed after it: the client's retry sent it
    twice. The end of DATA is the gateway's to answer, not the client idling."""
    import threading

    gw = make_gateway(smtp_extra="idle_timeout = 1.5")
    holder = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None,
                             check_same_thread=False)
    s = RawSmtp(gw.smtp_port, timeout=30)
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<news@example.com>")
    s.cmd("RCPT TO:<jane@example.net>")
    s.cmd("DATA")
    holder.execute("BEGIN EXCLUSIVE")  # another process writing for 2.5 s
    release = threading.Timer(2.5, lambda: (holder.execute("ROLLBACK"), holder.close()))
    release.start()
    try:
        code, _ = s.cmd(message(subject="Slow commit") + b".")
    finally:
        release.join()
    assert code == 250
    assert s.cmd("NOOP")[0] == 250  # and the session goes on
    assert b"Slow commit" in sink.wait_for(1)[0].content


def test_start_warns_of_a_missing_trusted_account_and_a_hostname_nobody_can_reach(
        tmp_path: Path):
    """A typo in trusted_clients' account gave silent 530s; smtp.hostname left "localhost"
    on a public listener put unsubscribe+TOKEN@localhost in every copy; /metrics on a public
    listener without a token is said."""
    smtp_port, http_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[smtp]\nlisten = "0.0.0.0:{smtp_port}"\n'
                      'trusted_clients = [{ network = "127.0.0.0/8", account = "nosuch" },\n'
                      '                   { network = "0.0.0.0/0", account = "nosuch" }]\n'
                      f'[http]\nlisten = "0.0.0.0:{http_port}"\n'
                      '[delivery]\nmode = "smtp"\nhost = "192.0.2.10"\n'
                      f'[store]\nurl = "sqlite:///{tmp_path / "gateway.db"}"\n')
    gw = GatewayProcess(config, smtp_port, http_port, tmp_path / "gateway.log").start()
    try:
        assert "GET /metrics is open to whoever reaches http.listen 0.0.0.0:" in gw.output
        assert "smtp.trusted_clients names the account 'nosuch', which does not exist" \
            in gw.output
        assert "smtp.hostname is 'localhost' while SMTP listens on 0.0.0.0:" in gw.output
        # a trust of the whole internet, and personal data to a remote relay in clear text
        assert "smtp.trusted_clients[1] trusts 0.0.0.0/0, which holds public addresses" \
            in gw.output and "trusted_clients[0]" not in gw.output
        assert "copies (personal data) go to 192.0.2.10:25 in clear text" in gw.output
        # log times are UTC and say so, as the CLI's (they were local, without an offset)
        [line] = [x for x in gw.output.splitlines() if "smtp.hostname is" in x]
        stamp = time.strftime("%Y-%m-%dT%H:", time.gmtime())
        assert line.startswith(stamp[:11]) and line[23:35] == "Z WARNING ga", line
        for _ in range(2):
            s = RawSmtp(smtp_port)
            s.cmd("EHLO c")
            assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250  # no account has it
            assert s.cmd("RCPT TO:<jane@example.net>")[0] == 530
            s.cmd("QUIT")
        wait_until(lambda: "whose account 'nosuch' does not exist" in gw.output,
                   what="the refusal's reason in the log")
        assert gw.output.count("whose account 'nosuch' does not exist") == 1  # said once
        assert gw.terminate() == 0
        assert "SIGTERM received: draining" in gw.output  # which signal: HUP stops too
    finally:
        gw.stop()
