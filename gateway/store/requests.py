"""Data-subject requests and their legal due date (GDPR 12(3): within one month of receipt)."""

from __future__ import annotations

import calendar
import datetime
import time
from dataclasses import dataclass

from gateway.addresses import normalize_address
from gateway.errors import NotFound, Refused
from gateway.store.db import Database

KINDS = ("access", "erasure", "objection")


def one_month_later(stamp: float, months: int = 1) -> float:
    """The same day `months` months later (that month's last day when it has no such day),
    counted from `stamp` in one step: Jan 31 + 3 months is Apr 30, not Feb 28 + 2 = Apr 28."""
    day = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    year, month = divmod(day.month - 1 + months, 12)
    year, month = day.year + year, month + 1
    last = calendar.monthrange(year, month)[1]
    return day.replace(year=year, month=month, day=min(day.day, last)).timestamp()


def _day(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Request:
    id: int
    address: str
    kind: str
    received_at: float
    due_at: float
    closed_at: float | None
    note: str | None

    def as_json(self, now: float | None = None) -> dict[str, object]:
        """`overdue`: open past its due date (as `gateway report --json` says it)."""
        now = time.time() if now is None else now
        return {"id": self.id, "address": self.address, "kind": self.kind,
                "received_at": self.received_at, "due_at": self.due_at,
                "closed_at": self.closed_at, "note": self.note,
                "overdue": self.closed_at is None and self.due_at < now}


_COLUMNS = "id, address, kind, received_at, due_at, closed_at, note"


class RequestStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self, address: str, kind: str, received_at: float | None = None,
                   answered: str | None = None) -> Request:
        """Record a request; `answered`: it was answered as it was recorded (an objection,
        applied at once), with this note."""
        if kind not in KINDS:
            raise Refused(f"unknown request kind {kind!r} (expected {', '.join(KINDS)})")
        key = normalize_address(address)
        received = received_at or time.time()
        closed = time.time() if answered is not None else None
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO requests (address, kind, received_at, due_at, closed_at, note)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, kind, received, one_month_later(received), closed, answered))
            assert cur.lastrowid is not None
            request_id = cur.lastrowid
        return Request(request_id, key, kind, received, one_month_later(received), closed,
                       answered)

    async def open_requests(self, due_before: float | None = None) -> list[Request]:
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM requests WHERE closed_at IS NULL"  # noqa: S608
            " AND (? IS NULL OR due_at <= ?) ORDER BY due_at", (due_before, due_before))
        return [Request(*tuple(row)) for row in rows]

    async def get(self, request_id: int) -> Request:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,))  # noqa: S608
        if row is None:
            raise NotFound(f"no request {request_id}")
        return Request(*tuple(row))

    async def close(self, request_id: int, note: str | None) -> None:
        """Answered; `note` is added to what the request holds (an extension's reason)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE requests SET closed_at = ?, note = CASE WHEN ? IS NULL THEN note"
                " WHEN note IS NULL THEN ? ELSE note || '; ' || ? END"
                " WHERE id = ? AND closed_at IS NULL",
                (time.time(), note, note, note, request_id))
            if cur.rowcount == 0:
                raise NotFound(f"no open request {request_id}")

    async def extend(self, request_id: int, reason: str, now: float | None = None) -> Request:
        """GDPR 12(3): "extended by two further months where necessary, taking into account
        the complexity and number of the requests", once, and the person told within the
        first month: refused once that month is over, or a second time. The reason is kept
        in the note."""
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            row = await (await conn.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,))  # noqa: S608
            ).fetchone()
            if row is None or row[5] is not None:
                raise NotFound(f"no open request {request_id}")
            request = Request(*tuple(row))
            first_due = one_month_later(request.received_at)
            if request.due_at > first_due + 1:
                raise Refused(f"request {request_id} was extended already (due "
                              f"{_day(request.due_at)}): GDPR 12(3) allows it once")
            if now > first_due:
                raise Refused(f"request {request_id} was due {_day(first_due)}: an extension "
                              "must be decided and told to the person within the first month")
            due = one_month_later(request.received_at, 3)
            # (the access letter says these words in the person's language: subject_letter)
            note = f"extended to {_day(due)}: {reason}"
            await conn.execute(
                "UPDATE requests SET due_at = ?, note = CASE WHEN note IS NULL THEN ?"
                " ELSE note || '; ' || ? END WHERE id = ?", (due, note, note, request_id))
        return Request(request.id, request.address, request.kind, request.received_at, due,
                       None, note if request.note is None else f"{request.note}; {note}")
