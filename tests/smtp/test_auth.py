"""AUTH decisions with real argon2id hashes and a real store: one answer for unknown and wrong,
lockout per account, throttling per IP, and every failure logged with the client IP."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pytest

from gateway.security.keys import AddressHasher
from gateway.security.passwords import hash_password
from gateway.settings import SmtpSettings
from gateway.smtp.auth import Authenticator, AuthOutcome
from gateway.store.accounts import AccountStore
from gateway.store.db import Database

from conftest import STRONG_PASSWORD

# the store keeps a keyed digest of an unknown login name (runtime: the address hash key's)
NAME_DIGEST = AddressHasher(b"k" * 32).login_name
SETTINGS = SmtpSettings(auth_max_failures=3, auth_lockout_minutes=1, auth_ip_max_failures=5,
                        auth_failure_delay=0.0)


@pytest.fixture
async def accounts(tmp_path: Path):
    async with Database(tmp_path / "a.db") as db:
        store = AccountStore(db)
        await store.add("crm", hash_password(STRONG_PASSWORD), ["example.com"])
        yield store


async def test_right_password_gives_the_account(accounts: AccountStore):
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)
    verdict = await auth.authenticate("crm", STRONG_PASSWORD, "192.0.2.1")
    assert verdict.outcome is AuthOutcome.OK and verdict.account is not None
    assert verdict.account.name == "crm"


async def test_unknown_user_and_wrong_password_look_the_same(accounts: AccountStore, caplog):
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)
    with caplog.at_level(logging.WARNING, "gateway.auth"):
        t0 = time.perf_counter()
        wrong = await auth.authenticate("crm", "Not-The-Password-42!", "192.0.2.1")
        t1 = time.perf_counter()
        unknown = await auth.authenticate("nobody", "Not-The-Password-42!", "192.0.2.2")
        t2 = time.perf_counter()
    assert wrong == unknown and wrong.outcome is AuthOutcome.BAD and wrong.account is None
    # the unknown user is checked against a dummy hash: same order of cost, no timing oracle
    assert (t2 - t1) > 0.3 * (t1 - t0)
    assert "192.0.2.1" in caplog.text and "192.0.2.2" in caplog.text


async def test_account_locks_after_max_failures_even_for_the_right_password(
        accounts: AccountStore):
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)
    for _ in range(3):
        assert (await auth.authenticate("crm", "wrong", "192.0.2.1")).outcome is AuthOutcome.BAD
    locked = await auth.authenticate("crm", STRONG_PASSWORD, "192.0.2.9")
    assert locked.outcome is AuthOutcome.LOCKED
    await accounts.unlock("crm")
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "192.0.2.9")).outcome \
        is AuthOutcome.OK


async def test_a_client_the_account_logged_in_from_gets_in_through_its_lock(
        accounts: AccountStore):
    """The lock counted failures from anywhere and held for everyone: knowing the name was
    enough to lock the tool out for good from one address (10 tries every 15 minutes). A
    client the account logged in from still gets in; a login of it leaves the lock to run
    (or each one would give the guesser auth_max_failures more tries)."""
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "192.0.2.10")).outcome \
        is AuthOutcome.OK  # the tool, once
    for _ in range(3):  # a guesser elsewhere
        assert (await auth.authenticate("crm", "wrong", "203.0.113.5")).outcome \
            is AuthOutcome.BAD
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "203.0.113.5")).outcome \
        is AuthOutcome.LOCKED  # the guesser, even right
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "192.0.2.99")).outcome \
        is AuthOutcome.LOCKED  # an address never seen
    again = Authenticator(accounts, SETTINGS, NAME_DIGEST)  # another process, or after a restart
    assert (await again.authenticate("crm", STRONG_PASSWORD, "192.0.2.10")).outcome \
        is AuthOutcome.OK
    assert (await accounts.require("crm")).locked()  # the lock runs on for the others
    assert (await again.authenticate("crm", STRONG_PASSWORD, "203.0.113.5")).outcome \
        is AuthOutcome.LOCKED
    # a known client's wrong password is a failure like any (its per-IP limit holds it)
    assert (await again.authenticate("crm", "wrong", "192.0.2.10")).outcome is AuthOutcome.BAD
    # the address itself, not its neighbours (a provider may share a /64 among customers);
    # an IPv4-mapped form of the known address is that address
    assert (await again.authenticate("crm", STRONG_PASSWORD, "::ffff:192.0.2.10")).outcome \
        is AuthOutcome.OK
    assert (await again.authenticate("crm", STRONG_PASSWORD, "192.0.2.11")).outcome \
        is AuthOutcome.LOCKED
    # a new password forgets the clients (whoever had the old one logged in from somewhere)
    await accounts.set_password("crm", hash_password(STRONG_PASSWORD))
    for _ in range(3):
        await again.authenticate("crm", "wrong", "203.0.113.6")
    assert (await again.authenticate("crm", STRONG_PASSWORD, "192.0.2.10")).outcome \
        is AuthOutcome.LOCKED
    # a login with the new password is remembered at once, though the same process wrote
    # that client less than an hour ago
    await accounts.unlock("crm")
    assert (await again.authenticate("crm", STRONG_PASSWORD, "192.0.2.10")).outcome \
        is AuthOutcome.OK
    for _ in range(3):
        await again.authenticate("crm", "wrong", "203.0.113.6")
    assert (await again.authenticate("crm", STRONG_PASSWORD, "192.0.2.10")).outcome \
        is AuthOutcome.OK


async def test_success_resets_the_failure_count(accounts: AccountStore):
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)
    for _ in range(2):
        await auth.authenticate("crm", "wrong", "192.0.2.1")
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "192.0.2.1")).outcome \
        is AuthOutcome.OK
    assert (await accounts.require("crm")).failed_logins == 0
    for _ in range(2):
        await auth.authenticate("crm", "wrong", "192.0.2.1")
    assert not (await accounts.require("crm")).locked()


async def test_one_ip_guessing_many_users_is_throttled(accounts: AccountStore):
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)
    for i in range(5):
        assert (await auth.authenticate(f"user{i}", "x", "198.51.100.7")).outcome \
            is AuthOutcome.BAD
    # the IP is now refused, even with a valid login; other IPs are not affected
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "198.51.100.7")).outcome \
        is AuthOutcome.LOCKED
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "198.51.100.8")).outcome \
        is AuthOutcome.OK


async def test_an_ipv6_guesser_cannot_take_turns_within_its_64(accounts: AccountStore):
    """The per-IP limit counted each IPv6 address alone: a host has a /64 of them, so it had
    auth_ip_max_failures tries from each. The /64 has a limit of its own (4 times the
    address's, as a cloud subnet holds many hosts), which does not hold a client the account
    logged in from (a neighbour guessing locked the tool out: diff review)."""
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "2001:db8:7:7::cafe")).outcome \
        is AuthOutcome.OK  # the tool, once
    for i in range(20):  # 4 addresses x 5 failures, each address at its own limit
        assert (await auth.authenticate(f"user{i}", "x", f"2001:db8:7:7::{i // 5 + 1:x}")
                ).outcome is AuthOutcome.BAD
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "2001:db8:7:7:ffff::9")).outcome \
        is AuthOutcome.LOCKED  # the /64 is at its limit
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "2001:db8:7:7::cafe")).outcome \
        is AuthOutcome.OK  # the tool is not held by its neighbours
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "2001:db8:7:8::1")).outcome \
        is AuthOutcome.OK  # the next /64 is another client


async def test_ip_window_expires(accounts: AccountStore):
    settings = dataclasses.replace(SETTINGS, auth_lockout_minutes=4 / 60)
    auth = Authenticator(accounts, settings, NAME_DIGEST)
    for i in range(5):
        await auth.authenticate(f"user{i}", "x", "198.51.100.7")
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "198.51.100.7")).outcome \
        is AuthOutcome.LOCKED
    time.sleep(4.1)
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "198.51.100.7")).outcome \
        is AuthOutcome.OK


async def test_failures_are_delayed(accounts: AccountStore):
    auth = Authenticator(accounts, dataclasses.replace(SETTINGS, auth_failure_delay=0.3),
                         NAME_DIGEST)
    t0 = time.perf_counter()
    await auth.authenticate("crm", "wrong", "192.0.2.1")
    assert time.perf_counter() - t0 >= 0.3


async def test_an_unknown_name_answers_step_for_step_like_an_account(accounts: AccountStore):
    """The same sequence for "crm" (exists) and "nobody" (does not): failures spread over more
    than the lockout window, the lock, its end, a fresh count. Any difference names the
    accounts that exist."""
    settings = dataclasses.replace(SETTINGS, auth_lockout_minutes=1.5 / 60,
                                   auth_ip_max_failures=1000)
    auth = Authenticator(accounts, settings, NAME_DIGEST)

    async def answers(name: str, ip: str) -> list[AuthOutcome]:
        seen = []
        for pause in (0.0, 1.0, 1.0, 0.0, 1.7, 0.0):  # 2 s between the first and the third
            time.sleep(pause)
            seen.append((await auth.authenticate(name, "Wrong-Password-42!", ip)).outcome)
        return seen

    account, phantom = await answers("crm", "192.0.2.1"), await answers("nobody", "192.0.2.2")
    assert account == phantom == [AuthOutcome.BAD, AuthOutcome.BAD, AuthOutcome.BAD,
                                  AuthOutcome.LOCKED, AuthOutcome.BAD, AuthOutcome.BAD]


async def test_attempts_sent_at_once_count_before_they_are_checked(accounts: AccountStore):
    """40 AUTHs at once were all checked against a count none had raised yet: 39 wrong
    passwords tried past a lockout of 3, and the right one taken while locked."""
    import asyncio
    settings = dataclasses.replace(SETTINGS, auth_ip_max_failures=1000)
    auth = Authenticator(accounts, settings, NAME_DIGEST)
    outcomes = await asyncio.gather(*(
        auth.authenticate("crm", STRONG_PASSWORD if i == 39 else f"Wrong-{i}-Password!",
                          "192.0.2.1") for i in range(40)))
    checked = [o for o in outcomes if o.outcome is not AuthOutcome.LOCKED]
    assert len(checked) == 3  # the lockout's count, no more passwords tried
    assert outcomes[-1].outcome is AuthOutcome.LOCKED  # the right one came too late
    assert (await accounts.require("crm")).locked()


async def test_a_burst_answers_alike_for_an_account_and_an_unknown_name(
        accounts: AccountStore):
    """The lock was read before the check for an account and after it for an unknown name:
    a burst of 18 got 18 x 535 for the account and 10 x 535 + 8 x 454 for the unknown."""
    import asyncio
    settings = dataclasses.replace(SETTINGS, auth_ip_max_failures=1000)

    async def burst(name: str) -> list[AuthOutcome]:
        auth = Authenticator(accounts, settings, NAME_DIGEST)
        return [v.outcome for v in await asyncio.gather(*(
            auth.authenticate(name, f"Wrong-{i}-Password!", "192.0.2.1") for i in range(18)))]

    account, phantom = await burst("crm"), await burst("nobody")
    assert sorted(o.value for o in account) == sorted(o.value for o in phantom)
    assert account.count(AuthOutcome.BAD) == 3


async def test_one_ip_sending_many_auths_at_once_is_held_to_its_limit(accounts: AccountStore):
    import asyncio
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)  # 5 failures per IP
    outcomes = await asyncio.gather(*(auth.authenticate(f"user{i}", "x", "198.51.100.7")
                                      for i in range(12)))
    assert [o.outcome for o in outcomes].count(AuthOutcome.BAD) == 5
    assert (await auth.authenticate("crm", STRONG_PASSWORD, "198.51.100.7")).outcome \
        is AuthOutcome.LOCKED


async def test_a_tool_logging_in_many_connections_at_once_gets_them_all(
        accounts: AccountStore):
    """Attempts being checked count as failures until known, but an attempt that could pass
    a limit only with them waits for them: right passwords end the wait for each other."""
    import asyncio
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)  # 3 per account, 5 per IP
    outcomes = await asyncio.gather(*(auth.authenticate("crm", STRONG_PASSWORD, "192.0.2.1")
                                      for _ in range(12)))
    assert [o.outcome for o in outcomes] == [AuthOutcome.OK] * 12


async def test_an_unknown_names_failures_are_kept_keyed_and_forgotten_after_a_month(
        accounts: AccountStore):
    """An unkeyed digest of a guessed name (often a person's address) was kept for good
    (diff review): keyed, and forgotten once it has not failed for 30 days, unless locked."""
    import hashlib
    auth = Authenticator(accounts, SETTINGS, NAME_DIGEST)
    for name in ("jane@example.net", "typo"):
        await auth.authenticate(name, "Wrong-Password-123456!", "192.0.2.1")
    for _ in range(3):
        await auth.authenticate("locked@example.net", "Wrong-Password-123456!", "192.0.2.2")
    db = accounts.db
    digests = {bytes(row[0]) for row in await db.fetchall(
        "SELECT name_digest FROM auth_name_failures")}
    assert len(digests) == 3
    assert hashlib.sha256(b"jane@example.net").digest()[:16] not in digests
    assert NAME_DIGEST("jane@example.net") in digests
    await db.write_one("UPDATE auth_name_failures SET updated_at = updated_at - 31 * 86400")
    assert await accounts.forget_name_failures(time.time() - 30 * 86400) == 2
    left = await db.fetchall("SELECT name_digest FROM auth_name_failures")
    assert [bytes(row[0]) for row in left] == [NAME_DIGEST("locked@example.net")]  # locked
