"""Accounts on a real SQLite file: create, update, lockout counting, never the hash in listings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.errors import NotFound, Refused
from gateway.store.accounts import AccountStore
from gateway.store.db import Database


@pytest.fixture
async def store(tmp_path: Path):
    async with Database(tmp_path / "a.db") as db:
        yield AccountStore(db)


async def test_add_then_get_round_trips_every_field(store: AccountStore):
    await store.add("crm", "$argon2id$fake", ["example.com", "example.fr"], category="marketing",
                    topics=["saas", "crm"], product_categories=["software"],
                    notify_url="https://crm.example.com/hook")
    account = await store.require("crm")
    assert account.from_domains == ("example.com", "example.fr")
    assert account.topics == ("saas", "crm") and account.product_categories == ("software",)
    assert account.notify_url == "https://crm.example.com/hook"
    assert (await store.get_with_hash("crm"))[1] == "$argon2id$fake"
    assert "password_hash" not in account.as_json()


async def test_duplicate_name_is_refused(store: AccountStore):
    await store.add("crm", "h", ["example.com"])
    with pytest.raises(Refused, match="already exists"):
        await store.add("crm", "h", ["example.org"])


@pytest.mark.parametrize("domain, allowed", [
    ("example.com", True), ("EXAMPLE.com.", True), ("sub.example.com", False),
    ("example.co", False), ("évian.fr", True),
])
async def test_may_send_from_is_an_exact_domain_match(store: AccountStore, domain: str,
                                                      allowed: bool):
    account = await store.add("crm", "h", ["example.com", "xn--vian-9oa.fr"])
    assert account.may_send_from(domain) is allowed


async def test_update_changes_only_what_is_given(store: AccountStore):
    await store.add("crm", "h", ["example.com"], topics=["saas"])
    updated = await store.update("crm", product_categories=["hr"])
    assert updated.from_domains == ("example.com",) and updated.topics == ("saas",)
    assert updated.product_categories == ("hr",)
    cleared = await store.update("crm", topics=[], notify_url="")
    assert cleared.topics == () and cleared.notify_url is None


async def test_failures_lock_at_the_limit_and_success_or_unlock_resets(store: AccountStore):
    await store.add("crm", "h", ["example.com"])
    for _ in range(2):
        account = await store.record_failure("crm", max_failures=3, lockout_seconds=60)
        assert account is not None and not account.locked()
    account = await store.record_failure("crm", max_failures=3, lockout_seconds=60)
    assert account is not None and account.locked() and account.failed_logins == 3
    assert account.locked_until is not None and account.locked_until > time.time() + 50
    await store.unlock("crm")
    account = await store.require("crm")
    assert not account.locked() and account.failed_logins == 0
    await store.record_failure("crm", max_failures=3, lockout_seconds=60)
    await store.record_success("crm")
    assert (await store.require("crm")).failed_logins == 0


async def test_an_expired_lock_starts_the_count_afresh(store: AccountStore):
    await store.add("crm", "h", ["example.com"])
    for _ in range(3):
        await store.record_failure("crm", max_failures=3, lockout_seconds=0.01)
    time.sleep(0.05)
    account = await store.record_failure("crm", max_failures=3, lockout_seconds=60)
    assert account is not None and account.failed_logins == 1 and not account.locked()


async def test_new_password_unlocks(store: AccountStore):
    await store.add("crm", "old", ["example.com"])
    await store.record_failure("crm", max_failures=1, lockout_seconds=60)
    await store.set_password("crm", "new")
    account, password_hash = await store.get_with_hash("crm")
    assert password_hash == "new" and not account.locked()


async def test_unknown_accounts_raise_not_found(store: AccountStore):
    for call in (store.unlock("x"), store.remove("x"), store.set_password("x", "h"),
                 store.require("x"), store.update("x", topics=["a"])):
        with pytest.raises(NotFound, match="'x'"):
            await call
    await store.add("x", "h", ["example.com"])
    await store.remove("x")
    assert await store.get("x") is None and await store.list() == []
