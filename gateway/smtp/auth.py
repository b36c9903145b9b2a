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
        # attempts being checked now, by client IP and by login name: failures until known
        self._ip_checking: dict[str, int] = {}
        self._name_checking: dict[str, int] = {}

    async def authenticate(self, login: str, password: str, client_ip: str) -> AuthVerdict:
        """The attempts being checked count as failures until they are known: the checks
        take ~0.1 s, and 40 AUTHs sent at once were all checked against a count none of them
        had raised yet (39 wrong passwords tried past a lockout of 10, and the right one
        taken while the account was locked)."""
        now = time.time()
        if self._ip_blocked(client_ip, now):
            log.warning("AUTH from %s refused: %d failures from this IP in %.0f min",
                        client_ip, self.settings.auth_ip_max_failures,
                        self.window_seconds / 60)
            await self._throttle()
            return AuthVerdict(AuthOutcome.LOCKED)
        _take(self._ip_checking, client_ip)  # no await since _ip_blocked read it
        try:
            return await self._authenticate(login, password, client_ip, now)
        finally:
            _release(self._ip_checking, client_ip)

    async def _authenticate(self, login: str, password: str, client_ip: str,
                            now: float) -> AuthVerdict:
        key = login[:MAX_LOGIN_LENGTH]
        found = await self.accounts.get_with_hash(login) \
            if login and len(login) <= MAX_LOGIN_LENGTH else None
        # decided before the check, the same way for a name that exists and one that does
        # not: decided after it, the unknown names' lock showed under a burst and the
        # accounts' did not, which told the names apart
        checking = self._name_checking.get(key, 0)
        if found is None:
            locked = self._phantom_locked(key, now, checking)
        else:
            account = found[0]
            # a lock that has run out starts the count afresh (record_failure resets it)
            failed = 0 if account.locked_until is not None and not account.locked(now) \
                else account.failed_logins
            locked = account.locked(now) or \
                failed + checking >= self.settings.auth_max_failures
        if locked:
            # the same time as the others
            await verify_password_async(found[1] if found else dummy_hash(), password)
            if found is not None:
                log.warning("AUTH from %s for %s refused: account locked%s", client_ip,
                            found[0].name, " until " + time.strftime(
                                "%H:%M:%SZ", time.gmtime(found[0].locked_until))
                            if found[0].locked(now) else " (attempts being checked)")
            await self._throttle()
            return AuthVerdict(AuthOutcome.LOCKED)
        _take(self._name_checking, key)
        try:
            if found is None:
                await verify_password_async(dummy_hash(), password)  # same cost as a real one
                self._phantom_failure(login, time.time())
                return await self._failed(client_ip, now, f"unknown user {login[:64]!r}")
            account, stored_hash = found
            if not await verify_password_async(stored_hash, password):
                after = await self.accounts.record_failure(
                    account.name, self.settings.auth_max_failures, self.window_seconds)
                if after is not None and after.locked(now):
                    log.warning("account %s locked for %.0f min after %d failed AUTH (last "
                                "from %s)", account.name, self.window_seconds / 60,
                                after.failed_logins, client_ip)
                return await self._failed(client_ip, now, f"wrong password for {account.name}")
        finally:
            _release(self._name_checking, key)
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

    def _phantom_locked(self, login: str, now: float, checking: int = 0) -> bool:
        count, locked_until = self._phantom_failures.get(login[:MAX_LOGIN_LENGTH], (0, None))
        if locked_until is not None and locked_until <= now:
            count, locked_until = 0, None  # ran out: a fresh count, as _phantom_failure does
        return locked_until is not None or count + checking >= self.settings.auth_max_failures

    def _ip_blocked(self, client_ip: str, now: float) -> bool:
        failures = self._ip_failures.get(client_ip)
        checking = self._ip_checking.get(client_ip, 0)
        if not failures:
            return checking >= self.settings.auth_ip_max_failures
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        if not failures:
            del self._ip_failures[client_ip]
        return len(failures) + checking >= self.settings.auth_ip_max_failures

    def _forget_old(self, now: float) -> None:
        for ip in list(self._ip_failures):
            self._ip_blocked(ip, now)

    async def _throttle(self) -> None:
        """Slow every refused attempt down: a guesser gets one try per delay per session."""
        if self.settings.auth_failure_delay > 0:
            await asyncio.sleep(self.settings.auth_failure_delay)


def _take(table: dict[str, int], key: str) -> None:
    table[key] = table.get(key, 0) + 1


def _release(table: dict[str, int], key: str) -> None:
    left = table[key] - 1
    if left:
        table[key] = left
    else:
        del table[key]
