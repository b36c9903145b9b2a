"""A session ends even when its client reads nothing: over a real socket, on a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections import Counter

from gateway.settings import SmtpSettings
from gateway.smtp.server import start_smtp_server


class NoHooks:
    """aiosmtpd's defaults for every hook: only the session's end is under test."""


async def test_a_client_that_reads_no_reply_loses_its_session_after_the_idle_timeout():
    """Its replies fill the socket buffers, so the close after the idle timeout waited for
    ever for the write buffer to drain, the session counted in the per-IP table (and in a
    stop's drain) the whole time."""
    settings = dataclasses.replace(SmtpSettings(), idle_timeout=1.0, hostname="gw.test")
    sessions: Counter[str] = Counter()
    accepting = asyncio.Event()
    accepting.set()
    server = await start_smtp_server(NoHooks(), settings, "127.0.0.1", 0, None, accepting,
                                     sessions)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        client.connect(server.sockets[0].getsockname())
        client.setblocking(False)
        payload = b"EHLO x\r\n" * 300_000  # EHLO: no per-session cap, a long reply
        sent, started = 0, time.monotonic()
        while sent < len(payload) and time.monotonic() - started < 5:
            try:
                sent += client.send(payload[sent:sent + 65536])
            except BlockingIOError:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the server reads what it can, its replies pile up
        assert sum(sessions.values()) == 1
        deadline = time.monotonic() + 8
        while sum(sessions.values()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert sum(sessions.values()) == 0, "the session outlived its idle timeout"
    finally:
        client.close()
        server.close()


async def test_an_ipv4_client_of_a_dual_stack_socket_is_counted_as_ipv4():
    """smtp.processes > 1 on "[::]" shares a dual-stack socket: IPv4 clients came as
    ::ffff:127.0.0.1, which no IPv4 smtp.trusted_clients network (nor the loopback rule, nor
    the per-IP table) matched."""
    if not socket.has_ipv6:
        return  # nothing to check on a host without IPv6 (a plain IPv4 socket is used)
    from gateway.supervisor import bind_smtp_socket

    sock = bind_smtp_socket("[::]:0")
    settings = dataclasses.replace(SmtpSettings(), hostname="gw.test")
    sessions: Counter[str] = Counter()
    accepting = asyncio.Event()
    accepting.set()
    server = await start_smtp_server(NoHooks(), settings, "", 0, None, accepting, sessions,
                                     sock=sock)
    port = sock.getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()  # the greeting: the session is counted by now
        assert list(sessions) == ["127.0.0.1"]
        writer.close()
    finally:
        server.close()


async def test_an_ipv6_client_is_counted_by_its_64():
    """smtp.max_connections_per_ip counted each IPv6 address on its own: one host holds a /64
    of them, so it could open the cap's number of sessions from every one (the HTTP side
    already counted by /64)."""
    if not socket.has_ipv6:
        return  # nothing to check on a host without IPv6
    settings = dataclasses.replace(SmtpSettings(), hostname="gw.test")
    sessions: Counter[str] = Counter()
    accepting = asyncio.Event()
    accepting.set()
    from gateway.settings import TrustedClient

    trusted = dataclasses.replace(settings, trusted_clients=(TrustedClient("::1/128", "crm"),))
    for given, counted in ((settings, "::/64"), (trusted, "::1")):  # the operator's own tools
        # (in trusted_clients) may share a subnet: each is counted by its address
        server = await start_smtp_server(NoHooks(), given, "::1", 0, None, accepting, sessions)
        try:
            reader, writer = await asyncio.open_connection("::1",
                                                           server.sockets[0].getsockname()[1])
            await reader.readline()  # the greeting: the session is counted by now
            assert list(sessions) == [counted]
            writer.close()
            await writer.wait_closed()
            for _ in range(50):
                if not sessions:
                    break
                await asyncio.sleep(0.05)
        finally:
            server.close()


async def test_a_data_hook_that_fails_ends_the_transaction_with_451():
    """An unexpected failure at the end of DATA was answered 451 but left the envelope: the
    client's next MAIL got 503 nested MAIL, and the session was stuck."""

    class Failing:
        calls = 0

        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
            Failing.calls += 1
            if Failing.calls == 1:
                raise RuntimeError("a bug, say")
            return "250 OK"

    settings = dataclasses.replace(SmtpSettings(), hostname="gw.test")
    sessions: Counter[str] = Counter()
    accepting = asyncio.Event()
    accepting.set()
    server = await start_smtp_server(Failing(), settings, "127.0.0.1", 0, None, accepting,
                                     sessions)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])

        async def cmd(line: bytes) -> bytes:
            writer.write(line + b"\r\n")
            reply = await reader.readline()
            while reply[3:4] == b"-":
                reply = await reader.readline()
            return reply

        await reader.readline()
        assert (await cmd(b"EHLO c")).startswith(b"250")
        for expected in (b"451", b"250"):
            assert (await cmd(b"MAIL FROM:<a@example.com>")).startswith(b"250")
            assert (await cmd(b"RCPT TO:<b@example.com>")).startswith(b"250")
            assert (await cmd(b"DATA")).startswith(b"354")
            assert (await cmd(b"Subject: x\r\n\r\nhi\r\n.")).startswith(expected)
        writer.close()
    finally:
        server.close()
