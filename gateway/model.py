"""The domain's values: what the ledger knows about a contact, the campaign, and a Decision.

Values only, no I/O: the policy (gateway.policy) reads these and returns a Decision; the store
builds them; the flow carries them from RCPT to DATA.
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field

KINDS = ("person", "role")
AUDIENCES = ("b2c", "b2b")
RELATIONSHIPS = ("prospect", "customer")
CONSENTS = ("granted", "withdrawn")
SOURCE_TYPES = ("direct", "partner", "broker", "public_directory", "social_network", "import")
VISIBILITIES = ("public", "restricted")
OBJECTION_CHANNELS = ("one-click", "link", "mailto", "webhook", "manual", "import", "erasure")


class Verdict(enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Decision:
    """The outcome for one recipient (or message): what, by which rule, why, on which basis."""

    verdict: Verdict
    rule: str
    reason: str
    basis: str

    @property
    def decision(self) -> str:
        return self.verdict.value

    def as_json(self) -> dict[str, str]:
        return {"decision": self.verdict.value, "rule": self.rule, "reason": self.reason,
                "basis": self.basis}


@dataclass(frozen=True)
class Source:
    """Who supplied an address, how, and when (GDPR 14(2)(f), 15(1)(g): it must be nameable)."""

    name: str
    type: str
    visibility: str | None = None
    recorded_at: float | None = None


@dataclass(frozen=True)
class Contact:
    """Every fact the ledger keeps about one address (../shared/COMPLIANCE.md section 1).

    Times are unix seconds (UTC). Empty facts are None / empty sets, never guessed.
    """

    address: str
    kind: str = "person"
    audience: str = "b2c"
    relationship: str = "prospect"
    language: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    job_title: str | None = None
    topics: frozenset[str] = frozenset()
    customer_categories: frozenset[str] = frozenset()
    consent: str | None = None
    consent_at: float | None = None
    consent_method: str | None = None
    consent_proof: str | None = None
    opt_out_offered: bool | None = None
    sources: tuple[Source, ...] = ()
    collected_at: float | None = None
    last_interaction_at: float | None = None
    informed_at: float | None = None
    informed_version: str | None = None
    retention_expired_at: float | None = None  # when R4 first refused it (marked for purge)
    id: int | None = None


def tag_key(text: str) -> str:
    """A topic or product category as it is compared: trimmed, NFC, lower case. "Études"
    written decomposed (e + U+0301, as a macOS export writes it) is the same topic as the
    composed one (rules review: it was R10, "campaign topics unrelated")."""
    return unicodedata.normalize("NFC", text.strip()).lower()


@dataclass(frozen=True)
class Campaign:
    """What a message is about, from the sending account, narrowed by X-Gateway-* headers."""

    account: str
    category: str = "marketing"  # or "transactional": not prospecting, L.34-5 does not apply
    topics: frozenset[str] = frozenset()
    product_categories: frozenset[str] = frozenset()
    # the message named its topics, none of them the account's: the campaign is about
    # something else, which is not the same as no topics known (R10, not R9)
    topics_unrelated: bool = False

    def narrowed(self, topics: frozenset[str] | None,
                 product_categories: frozenset[str] | None) -> Campaign:
        """Only narrowing: a header can name fewer topics than the account has, never others."""
        kept = self.topics if topics is None else self.topics & topics
        return Campaign(
            self.account, self.category, kept,
            self.product_categories if product_categories is None
            else self.product_categories & product_categories,
            # an account without topics has none a message could be outside of: R9
            topics_unrelated=bool(topics) and bool(self.topics) and not kept)


@dataclass(frozen=True)
class RecipientFacts:
    """Everything one recipient decision reads: one store read gives all of it."""

    address: str
    suppressed: bool
    contact: Contact | None
    address_hash: bytes = b""  # the keyed hash the lookup used, reused by the audit record


@dataclass(frozen=True)
class PolicyKnobs:
    """The [policy] settings the rules read (kept here so the policy needs no settings module)."""

    unknown_recipient: str = "reject"
    b2b_unclear: str = "quarantine"
    prospect_retention_days: int = 1095
    max_retention_days: int = 1825
    forbidden_sources: frozenset[str] = field(default_factory=lambda: frozenset({"broker"}))


@dataclass(frozen=True)
class MessageFacts:
    """What the message rules (M2, M3) read about a message's structure."""

    has_subject: bool
    has_text_body: bool
    signed_or_encrypted: str | None = None  # the content type that forbids rewriting
    malformed: str | None = None  # why the structure cannot be rewritten safely
