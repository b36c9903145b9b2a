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
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import StoreError
from gateway.peers import client_address, client_key
from gateway.security.passwords import dummy_hash, verify_password_async
from gateway.settings import SmtpSettings
from gateway.store.accounts import Account, AccountStore

log = logging.getLogger("gateway.auth")

MAX_LOGIN_LENGTH = 256
MAX_TRACKED_IPS = 100_000  # bound the per-IP table: an address flood must not grow it forever
MAX_TRACKED_NAMES = 100_000  # the same for the logins remembered (see _remember)
# an AUTH that could pass a limit only with attempts still being checked waits this long at
# most for them to end (each check is ~0.1 s of argon2id), then is refused as locked
ADMISSION_WAIT_SECONDS = 30.0
# a client the account logged in from this recently gets in through its lock (024)
KNOWN_CLIENT_SECONDS = 30 * 86400.0
NET_LIMIT_FACTOR = 4  # an IPv6 /64 may fail this many times auth_ip_max_failures
REMEMBER_EVERY_SECONDS = 3600.0  # a login from a client already known is written this often


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

    def __init__(self, accounts: AccountStore, settings: SmtpSettings,
                 name_digest: Callable[[str], bytes]) -> None:
        """`name_digest`: what the store keeps of an unknown login name (keyed:
        AddressHasher.login_name)."""
        self.accounts = accounts
        self.settings = settings
        self._name_digest = name_digest
        self.window_seconds = settings.auth_lockout_minutes * 60
        self._ip_failures: dict[str, deque[float]] = {}
        # attempts being checked now, by client IP and by login name: failures until known
        self._ip_checking: dict[str, int] = {}
        self._name_checking: dict[str, int] = {}
        self._ended = asyncio.Event()  # set (and replaced) whenever a check ends
        # (account id, password stamp, client) -> when this process last wrote a login from
        # it (a new password forgets the clients in the store: written again at once)
        self._remembered: dict[tuple[int, str, str], float] = {}

    async def authenticate(self, login: str, password: str, client_ip: str) -> AuthVerdict:
        """Attempts being checked count as failures until they are known: the checks take
        ~0.1 s, and 40 AUTHs sent at once were all checked against a count none of them had
        raised yet (39 wrong passwords tried past a lockout of 10, the right one taken while
        the account was locked). One that could pass a limit only with those still being
        checked waits for them: a tool opening 20 connections at once still logs them all
        in, a guesser gets no more tries than the limits."""
        key = login[:MAX_LOGIN_LENGTH]
        known = client_address(client_ip)  # the address itself: its own limit
        # an IPv6 client's /64 has a limit of its own, NET_LIMIT_FACTOR times higher: one host
        # has a /64 of addresses to take turns with (each had the whole limit), but a cloud
        # subnet shares one among many hosts, and a client the account logged in from is not
        # held by its neighbours' failures (diff review)
        net = client_key(client_ip)
        nets = () if net == known else (net,)
        net_limit = self.settings.auth_ip_max_failures * NET_LIMIT_FACTOR
        deadline = time.monotonic() + ADMISSION_WAIT_SECONDS
        while True:
            now = time.time()
            if self._ip_blocked(known, now):
                log.warning("AUTH from %s refused: %d failures from this IP in %.0f min",
                            client_ip, self.settings.auth_ip_max_failures,
                            self.window_seconds / 60)
                await self._throttle()
                return AuthVerdict(AuthOutcome.LOCKED)
            found = await self.accounts.get_with_hash(login) \
                if login and len(login) <= MAX_LOGIN_LENGTH else None
            # asked only where it decides something (an IPv6 /64's limit, the account's
            # lock): one store read less for every other AUTH
            client_known = found is not None and (bool(nets) or found[0].locked(now)) \
                and await self.accounts.known_client(found[0].id, known,
                                                     now - KNOWN_CLIENT_SECONDS)
            held_nets = () if client_known else nets
            if any(self._ip_count(n, now) >= net_limit for n in held_nets):
                log.warning("AUTH from %s refused: %d failures from %s in %.0f min",
                            client_ip, net_limit, net, self.window_seconds / 60)
                await self._throttle()
                return AuthVerdict(AuthOutcome.LOCKED)
            # decided before the check, the same way for a name that exists and one that
            # does not: decided after it, the unknown names' lock showed under a burst and
            # the accounts' did not, which told the names apart
            if found is None:
                count, locked = await self._name_count(key, now)
            else:
                account = found[0]
                locked = account.locked(now)
                # a lock that has run out starts the count afresh (record_failure resets it)
                count = 0 if account.locked_until is not None and not locked \
                    else account.failed_logins
                if locked and client_known:
                    # the lock is against guessers elsewhere: a client this account logged
                    # in from gets in (the per-IP limit still holds it to its own tries);
                    # anyone knowing the name locked the tool out for good from one address
                    locked, count = False, 0
            if locked:
                # the same time as the others
                await verify_password_async(found[1] if found else dummy_hash(), password)
                if found is not None:
                    log.warning("AUTH from %s for %s refused: account locked until %s",
                                client_ip, found[0].name, time.strftime(
                                    "%H:%M:%SZ", time.gmtime(found[0].locked_until)))
                await self._throttle()
                return AuthVerdict(AuthOutcome.LOCKED)
            if (count + self._name_checking.get(key, 0) < self.settings.auth_max_failures
                    and self._ip_count(known, now) + self._ip_checking.get(known, 0)
                    < self.settings.auth_ip_max_failures
                    and all(self._ip_count(n, now) + self._ip_checking.get(n, 0) < net_limit
                            for n in held_nets)):
                break
            if not await self._checked(deadline):
                await self._throttle()
                return AuthVerdict(AuthOutcome.LOCKED)
        for counted in (known, *nets):  # no await since the counts were read
            _take(self._ip_checking, counted)
        _take(self._name_checking, key)
        try:
            return await self._check(found, login, password, client_ip, now)
        finally:
            for counted in (known, *nets):
                _release(self._ip_checking, counted)
            _release(self._name_checking, key)
            self._ended.set()  # those waiting read the counts again
            self._ended = asyncio.Event()

    async def _checked(self, deadline: float) -> bool:
        """Wait for an attempt being checked to end; False past `deadline`."""
        try:
            await asyncio.wait_for(self._ended.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return False
        return True

    async def _check(self, found: tuple[Account, str] | None, login: str, password: str,
                     client_ip: str, now: float) -> AuthVerdict:
        if found is None:
            await verify_password_async(dummy_hash(), password)  # same cost as a real one
            await self.accounts.record_name_failure(
                self._name_digest(login[:MAX_LOGIN_LENGTH]), self.settings.auth_max_failures,
                self.window_seconds)
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
        if (account.failed_logins or account.locked_until is not None) \
                and not account.locked(now):  # a lock runs on for a known client's login
            await self.accounts.record_success(account.name)
        await self._remember(account, client_ip, now)
        return AuthVerdict(AuthOutcome.OK, account)

    async def _remember(self, account: Account, client_ip: str, now: float) -> None:
        """Record the client a login came from (at most once an hour per client, per
        process): through a lock, it still gets in."""
        key = (account.id, account.credential_stamp, client_address(client_ip))
        if self._remembered.get(key, 0.0) > now - REMEMBER_EVERY_SECONDS:
            return
        if len(self._remembered) >= MAX_TRACKED_NAMES:
            self._remembered.clear()
        try:
            await self.accounts.remember_client(key[0], key[2], now)
        except StoreError as exc:  # the login stands; remembered at a later one
            log.warning("login of %s from %s not recorded as a known client: %s",
                        account.name, client_ip, exc)
            return
        self._remembered[key] = now

    async def _failed(self, client_ip: str, now: float, why: str) -> AuthVerdict:
        known = client_address(client_ip)
        for counted in {known, client_key(client_ip)}:  # the address, and an IPv6 one's /64
            failures = self._ip_failures.get(counted)
            if failures is None:
                if len(self._ip_failures) >= MAX_TRACKED_IPS:
                    self._forget_old(now)
                failures = self._ip_failures.setdefault(counted, deque())
            failures.append(now)
        log.warning("AUTH failed from %s: %s", client_ip, why)
        await self._throttle()
        return AuthVerdict(AuthOutcome.BAD)

    async def _name_count(self, login: str, now: float) -> tuple[int, bool]:
        """An unknown name's (failures in a row, locked), as an account's are: from the store,
        shared by every process and kept across a restart, as an account's are."""
        count, locked_until = await self.accounts.name_failures(self._name_digest(login))
        if locked_until is not None and locked_until <= now:
            return 0, False  # ran out: a fresh count, as record_name_failure does
        return count, locked_until is not None

    def _ip_count(self, client_ip: str, now: float) -> int:
        """The failures from `client_ip` within the window."""
        failures = self._ip_failures.get(client_ip)
        if not failures:
            return 0
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        if not failures:
            del self._ip_failures[client_ip]
        return len(failures)

    def _ip_blocked(self, client_ip: str, now: float) -> bool:
        return self._ip_count(client_ip, now) >= self.settings.auth_ip_max_failures

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
