"""A byte-exact SMTP client for tests that must send what smtplib never would."""

from __future__ import annotations

import socket
import ssl


class RawSmtp:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 source: str | None = None) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout, source_address=(source, 0) if source else None)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        raw = line.encode() if isinstance(line, str) else line
        self.send(raw + b"\r\n")
        return self.reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by server; pending {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self._line().decode()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    def starttls(self) -> None:
        code, _ = self.cmd("STARTTLS")
        assert code == 220
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock)

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server has closed the connection (EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()
