"""The trimmed dir() (a per-connection speed-up) leaves aiosmtpd's tables exactly as they were."""

from __future__ import annotations

import asyncio
from collections import Counter

from gateway.settings import SmtpSettings
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.server import GatewaySMTP


class FullDirHandler(GatewayHandler):
    def __dir__(self) -> list[str]:
        return object.__dir__(self)


class FullDirSMTP(GatewaySMTP):
    def __dir__(self) -> list[str]:
        return object.__dir__(self)


def tables(server: GatewaySMTP) -> tuple[list[str], list[str], dict[str, bool]]:
    return (sorted(server._smtp_methods), sorted(server._handle_hooks),
            {name: attr.is_builtin for name, attr in server._auth_methods.items()})


async def test_trimmed_dir_gives_the_same_command_hook_and_auth_tables():
    ev = asyncio.Event()
    trimmed = GatewaySMTP(GatewayHandler(None, None), settings=SmtpSettings(),  # type: ignore[arg-type]
                          connections=Counter(), certificate=None, accepting=ev)
    full = FullDirSMTP(FullDirHandler(None, None), settings=SmtpSettings(),  # type: ignore[arg-type]
                       connections=Counter(), certificate=None, accepting=ev)
    assert tables(trimmed) == tables(full)
    commands, hooks, auth = tables(trimmed)
    assert {"EHLO", "MAIL", "RCPT", "DATA", "STARTTLS", "AUTH", "QUIT"} <= set(commands)
    assert hooks == ["DATA", "EHLO", "MAIL", "RCPT"] and set(auth) == {"LOGIN", "PLAIN"}
    # the bound methods belong to this connection, not to another one
    assert trimmed._smtp_methods["DATA"].__self__ is trimmed
