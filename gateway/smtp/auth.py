"""SMTP AUTH decisions: argon2id off the event loop, throttling, lockout per account and per IP.

The same answer for an unknown user and a wrong password, in the same time (an unknown user is
checked against a dummy hash). Every failure is logged with the client IP, for fail2ban-style
tooling and for the operator who must show what happened (GDPR 32, NESTOR).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from dataclasses import dataclass

from gateway.security.passwords import dummy_hash, verify_password_async
from gateway.settings import SmtpSettings
from gateway.store.accounts import Account, AccountStore

log = logging.getLogger("gateway.auth")

MAX_LOGIN_LENGTH = 256
MAX_TRACKED_IPS = 100_000  # bound the per-IP table: an address flood must not grow it forever
MAX_TRACKED_NAMES = 100_000  # the same for unknown login names (a few MB at most)


class AuthOutcome(enum.Enum):
    OK = "ok"
    BAD = "bad"  # unknown user or wrong password: one answer for both
    LOCKED = "locked"  # the account, or the client IP, is temporarily refused


@dataclass(frozen=True)
class AuthVerdict:
    outcome: AuthOutcome
    account: Account | None = None


class Authenticator:
    """One per server. Account lockout is in the store (shared by processes); IP windows in RAM."""

    def __init__(self, accounts: AccountStore, settings: SmtpSettings) -> None:
        self.accounts = accounts
        self.settings = settings
        self.window_seconds = settings.auth_lockout_minutes * 60
        self._ip_failures: dict[str, deque[float]] = {}
        # unknown login name -> (failures in a row, locked until), as an account's are
        self._phantom_failures: dict[str, tuple[int, float | None]] = {}

    async def authenticate(self, login: str, password: str, client_ip: str) -> AuthVerdict:
        now = time.time()
        if self._ip_blocked(client_ip, now):
            log.warning("AUTH from %s refused: %d failures from this IP in %.0f min",
                        client_ip, self.settings.auth_ip_max_failures,
                        self.window_seconds / 60)
            await self._throttle()
            return AuthVerdict(AuthOutcome.LOCKED)
        found = await self.accounts.get_with_hash(login) \
            if login and len(login) <= MAX_LOGIN_LENGTH else None
        if found is None:
            await verify_password_async(dummy_hash(), password)  # same cost as a real check
            if self._phantom_locked(login, now):
                # an unknown name "locks" as an account does, so that the lockout's 454 does
                # not tell which names exist
                await self._throttle()
                return AuthVerdict(AuthOutcome.LOCKED)
            self._phantom_failure(login, now)
            return await self._failed(client_ip, now, f"unknown user {login[:64]!r}")
        account, stored_hash = found
        if account.locked(now):
            await verify_password_async(stored_hash, password)  # the same time as the others
            log.warning("AUTH from %s for %s refused: account locked until %s", client_ip,
                        account.name, time.strftime("%H:%M:%SZ", time.gmtime(
                            account.locked_until)))
            await self._throttle()
            return AuthVerdict(AuthOutcome.LOCKED)
        if not await verify_password_async(stored_hash, password):
            after = await self.accounts.record_failure(
                account.name, self.settings.auth_max_failures, self.window_seconds)
            if after is not None and after.locked(now):
                log.warning("account %s locked for %.0f min after %d failed AUTH (last from %s)",
                            account.name, self.window_seconds / 60, after.failed_logins,
                            client_ip)
            return await self._failed(client_ip, now, f"wrong password for {account.name}")
        if account.failed_logins:
            await self.accounts.record_success(account.name)
        return AuthVerdict(AuthOutcome.OK, account)

    async def _failed(self, client_ip: str, now: float, why: str) -> AuthVerdict:
        failures = self._ip_failures.get(client_ip)
        if failures is None:
            if len(self._ip_failures) >= MAX_TRACKED_IPS:
                self._forget_old(now)
            failures = self._ip_failures.setdefault(client_ip, deque())
        failures.append(now)
        log.warning("AUTH failed from %s: %s", client_ip, why)
        await self._throttle()
        return AuthVerdict(AuthOutcome.BAD)

    def _phantom_failure(self, login: str, now: float) -> None:
        """Count a failure for an unknown name as AccountStore.record_failure counts one for
        an account: in a row, a lock at auth_max_failures, a fresh count once it runs out."""
        key = login[:MAX_LOGIN_LENGTH]
        count, locked_until = self._phantom_failures.get(key, (0, None))
        if locked_until is not None and locked_until <= now:
            count, locked_until = 0, None
        count += 1
        if count >= self.settings.auth_max_failures:
            locked_until = now + self.window_seconds
        if key not in self._phantom_failures and \
                len(self._phantom_failures) >= MAX_TRACKED_NAMES:
            self._phantom_failures.clear()  # a flood of names: forget, do not grow
        self._phantom_failures[key] = (count, locked_until)

    def _phantom_locked(self, login: str, now: float) -> bool:
        _, locked_until = self._phantom_failures.get(login[:MAX_LOGIN_LENGTH], (0, None))
        return locked_until is not None and locked_until > now

    def _ip_blocked(self, client_ip: str, now: float) -> bool:
        failures = self._ip_failures.get(client_ip)
        if not failures:
            return False
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        if not failures:
            del self._ip_failures[client_ip]
            return False
        return len(failures) >= self.settings.auth_ip_max_failures

    def _forget_old(self, now: float) -> None:
        for ip in list(self._ip_failures):
            self._ip_blocked(ip, now)

    async def _throttle(self) -> None:
        """Slow every refused attempt down: a guesser gets one try per delay per session."""
        if self.settings.auth_failure_delay > 0:
            await asyncio.sleep(self.settings.auth_failure_delay)
