"""The figures of `gateway report`, each counted by SQLite (GROUP BY), never row by row in
Python: the audit log grows by one row per recipient decision and can hold millions.

The report answers the accountability question (GDPR 5-2, 24): what the gateway decided, by
which rule and for which account, what became of the accepted copies, how people objected,
and which data-subject requests are still open against their legal due date (GDPR 12(3)).

`Report.as_json()` gives one object with these keys:

- `since`: the "YYYY-MM-DD" lower bound (UTC midnight) or null for everything;
  `generated_at`: unix seconds.
- `decisions`: [{account, rule, decision, count}] from the audit log, one row per recipient
  decision (decision is allow, reject or quarantine; the rule of an allow is its basis).
- `sent`: [{account, rule, count}] of copies the upstream took, by the rule that allowed them,
  from the audit log's 'sent' rows (sent in the period; kept after retention deletes the
  copies, unlike `deliveries`).
- `deliveries`: [{account, state, count}] of accepted copies by their creation time; state is
  queued, deferred, sent (taken by upstream), failed, or refused (failed because the policy
  refused the copy after DATA, `550 5.7.1 <rule>`).
- `quarantine`: [{account, rule, state, count}], state held, released or rejected.
- `objections`: [{channel, count}] of suppression entries (one-click, webhook, mailto,
  manual, import, erasure, ...).
- `open_requests`: [{id, kind, address, received_at, due_at, overdue}], most urgent first,
  whatever `since` says: an open request is late or not regardless of the period looked at.
- `daily`: [{day, allow, reject, quarantine}], days (UTC) that have decisions, oldest first.

A null `account` is a decision or copy of no sending account (DSNs, objection mail).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from gateway.store.db import Database

DECISIONS = ("allow", "reject", "quarantine")
DELIVERY_STATES = ("queued", "deferred", "sent", "failed", "refused")
QUARANTINE_STATES = ("held", "released", "rejected")


@dataclass(frozen=True)
class DecisionCount:
    account: str | None
    rule: str
    decision: str
    count: int


@dataclass(frozen=True)
class SentCount:
    account: str | None
    rule: str
    count: int


@dataclass(frozen=True)
class DeliveryCount:
    account: str | None
    state: str
    count: int


@dataclass(frozen=True)
class QuarantineCount:
    account: str | None
    rule: str
    state: str
    count: int


@dataclass(frozen=True)
class ObjectionCount:
    channel: str
    count: int


@dataclass(frozen=True)
class OpenRequest:
    id: int
    kind: str
    address: str
    received_at: float
    due_at: float
    overdue: bool


@dataclass(frozen=True)
class DayCount:
    day: str  # YYYY-MM-DD, UTC
    allow: int
    reject: int
    quarantine: int


@dataclass(frozen=True)
class Report:
    since: str | None
    generated_at: float
    decisions: list[DecisionCount]
    deliveries: list[DeliveryCount]
    quarantine: list[QuarantineCount]
    objections: list[ObjectionCount]
    open_requests: list[OpenRequest]
    daily: list[DayCount]
    sent: list[SentCount] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# an audit row of a decision at RCPT: reviews are written with client "operator NAME" (the
# quarantine purge as "operator purge"), refusals at delivery with "delivery" (compose.py)
_AT_RCPT = "client_ip NOT GLOB 'operator *' AND client_ip != 'delivery'"


class ReportStore:
    """All report SQL. `since` is unix seconds (None: everything)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def report(self, since: float | None = None, since_label: str | None = None,
                     now: float | None = None) -> Report:
        """Every figure of the report; `since_label` is how the caller named `since`."""
        now = time.time() if now is None else now
        return Report(since_label, now, await self.decisions(since),
                      await self.deliveries(since), await self.quarantine(since),
                      await self.objections(since), await self.open_requests(now),
                      await self.daily(since), await self.sent(since))

    async def decisions(self, since: float | None) -> list[DecisionCount]:
        """The recipients decided at RCPT: not the operators' reviews of held copies (their
        own rows, counted in `quarantine`), nor a copy refused at delivery (in `deliveries`,
        as refused): counted here too, 8 held copies rejected after review read as 8 more
        recipients refused."""
        rows = await self.db.fetchall(
            "SELECT account, rule, decision, count(*) FROM audit"  # noqa: S608 - constants
            " WHERE (? IS NULL OR at >= ?) AND " + _AT_RCPT +
            " GROUP BY account, rule, decision ORDER BY account, rule, decision",
            (since, since))
        return [DecisionCount(*tuple(row)) for row in rows]

    async def sent(self, since: float | None) -> list[SentCount]:
        """Copies the upstream took in the period, by account and the rule that allowed them
        (the audit's 'sent' rows: COMPLIANCE 4.5)."""
        rows = await self.db.fetchall(
            "SELECT account, rule, count(*) FROM audit WHERE decision = 'sent'"
            " AND (? IS NULL OR at >= ?) GROUP BY account, rule ORDER BY account, rule",
            (since, since))
        return [SentCount(*tuple(row)) for row in rows]

    async def deliveries(self, since: float | None) -> list[DeliveryCount]:
        # A copy refused by the policy after DATA is stored as failed with "550 5.7.1 <rule> "
        # (queue.is_policy_refusal); counting it as an upstream failure would hide a decision,
        # and an upstream's own "550 5.7.1 Message rejected as spam" is no decision of ours.
        rows = await self.db.fetchall(
            "SELECT m.account, CASE WHEN d.state = 'failed'"
            "   AND (d.last_error GLOB '550 5.7.1 [RMT][0-9] *'"
            "        OR d.last_error GLOB '550 5.7.1 R[0-9][0-9] *')"
            "   THEN 'refused' ELSE d.state END"
            "   AS state, count(*)"
            " FROM deliveries d JOIN messages m ON m.id = d.message_id"
            " WHERE (? IS NULL OR d.created_at >= ?) GROUP BY m.account, 2"
            " ORDER BY m.account, 2", (since, since))
        return [DeliveryCount(*tuple(row)) for row in rows]

    async def quarantine(self, since: float | None) -> list[QuarantineCount]:
        rows = await self.db.fetchall(
            "SELECT account, rule, state, count(*) FROM quarantine"
            " WHERE (? IS NULL OR created_at >= ?) GROUP BY account, rule, state"
            " ORDER BY account, rule, state", (since, since))
        return [QuarantineCount(*tuple(row)) for row in rows]

    async def objections(self, since: float | None) -> list[ObjectionCount]:
        rows = await self.db.fetchall(
            "SELECT coalesce(objected_by, channel) AS how, count(*) FROM suppression"
            " WHERE (? IS NULL OR created_at >= ?)"
            " GROUP BY how ORDER BY count(*) DESC, how", (since, since))
        return [ObjectionCount(*tuple(row)) for row in rows]

    async def open_requests(self, now: float) -> list[OpenRequest]:
        rows = await self.db.fetchall(
            "SELECT id, kind, address, received_at, due_at, due_at < ? FROM requests"
            " WHERE closed_at IS NULL ORDER BY due_at, id", (now,))
        return [OpenRequest(row[0], row[1], row[2], row[3], row[4], bool(row[5]))
                for row in rows]

    async def daily(self, since: float | None) -> list[DayCount]:
        rows = await self.db.fetchall(
            "SELECT date(at, 'unixepoch') AS day, sum(decision = 'allow'),"  # noqa: S608
            " sum(decision = 'reject'), sum(decision = 'quarantine') FROM audit"
            " WHERE (? IS NULL OR at >= ?) AND " + _AT_RCPT +
            " GROUP BY day ORDER BY day", (since, since))
        return [DayCount(*tuple(row)) for row in rows]
