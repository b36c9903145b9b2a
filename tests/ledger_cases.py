"""The cases of ../shared/COMPLIANCE.md section 2 as ledger rows and expected decisions.

Shared by the `gateway check` test and the SMTP test, so both prove the same table. Dates are
relative to today so the cases keep their meaning as time passes. The sending account is
ACCOUNT_TOPICS / ACCOUNT_PRODUCTS.
"""

from __future__ import annotations

import datetime
import io
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.contacts_csv import ContactRow, read_rows
from gateway.security.keys import AddressHasher
from gateway.store.db import Database
from gateway.store.ledger_import import ContactImporter

from conftest import CSV_HEADER

ACCOUNT_TOPICS = "crm;security"
ACCOUNT_PRODUCTS = "software"


def days_ago(days: int) -> str:
    return (datetime.date.today() - datetime.timedelta(days=days)).isoformat()


def hours_ahead(hours: int) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=hours)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Case:
    name: str
    email: str
    row: dict[str, str]
    decision: str
    rule: str
    reason_part: str  # a piece of the reason the reply must carry


def _row(**cells: str) -> dict[str, str]:
    base = {"kind": "person", "audience": "b2c", "relationship": "prospect", "language": "fr",
            "source_name": "website form", "source_type": "direct",
            "collected_at": days_ago(100)}
    base.update(cells)
    return base


CONSENT = {"consent": "granted", "consent_at": days_ago(100), "consent_method": "web form",
           "consent_proof": "form v2 from 198.51.100.4"}

CASES = (
    Case("R1 consent withdrawn", "withdrawn@b2c.example",
         _row(consent="withdrawn", consent_at=days_ago(10)), "reject", "R1", "objected"),
    Case("R3 NESTOR: data bought from a broker", "bought@b2c.example",
         _row(source_name="Fichiers Express", source_type="broker"), "reject", "R3", "broker"),
    Case("R3 KASPR: social network profile with restricted visibility",
         "scraped@b2b.example",
         _row(audience="b2b", topics="crm", source_name="LinkedIn",
              source_type="social_network", source_visibility="restricted"),
         "reject", "R3", "restricted visibility"),
    Case("R3 no source recorded", "nosource@b2c.example",
         _row(source_name="", source_type="", **CONSENT), "reject", "R3", "no source"),
    Case("R4 KASPR: retention expired", "expired@b2b.example",
         _row(audience="b2b", topics="crm", collected_at=days_ago(4 * 365)), "reject", "R4",
         "retention"),
    Case("R4 renewed by the person's own action", "active@b2c.example",
         _row(collected_at=days_ago(4 * 365), last_interaction_at=days_ago(30),
              **{**CONSENT, "consent_at": days_ago(4 * 365)}), "allow", "R6", "consent"),
    Case("R5 role address", "contact@company.example",
         _row(kind="role", audience="b2b"), "allow", "R5", "role address"),
    Case("R6 prior consent", "consented@b2c.example", _row(**CONSENT), "allow", "R6",
         "consent"),
    Case("R6 refused: a consent dated later today is not prior", "tomorrow@b2c.example",
         _row(**{**CONSENT, "consent_at": hours_ahead(2)}), "reject", "R10",
         "not valid consent"),
    Case("R6 refused: a pre-ticked box is not consent", "preticked@b2c.example",
         _row(**{**CONSENT, "consent_method": "pre-ticked"}), "reject", "R10",
         "not valid consent"),
    Case("R7 customer, analogous product, opt-out offered", "customer@b2c.example",
         _row(relationship="customer", customer_categories="software", opt_out_offered="true"),
         "allow", "R7", "analogous"),
    Case("R10 customer, non-analogous product", "furniture@b2c.example",
         _row(relationship="customer", customer_categories="furniture",
              opt_out_offered="true"), "reject", "R10", "customer"),
    Case("R8 B2B related to the profession", "cto@b2b.example",
         _row(audience="b2b", job_title="CTO", topics="security;cloud"), "allow", "R8",
         "profession"),
    Case("R10 NESTOR: B2B mail unrelated to the profession", "cfo@b2b.example",
         _row(audience="b2b", job_title="CFO", topics="finance"), "reject", "R10",
         "unrelated"),
    Case("R9 B2B relevance unclear", "unclear@b2b.example", _row(audience="b2b"),
         "quarantine", "R9", "relevance"),
    Case("R10 NESTOR: B2C prospect without consent", "prospect@b2c.example", _row(),
         "reject", "R10", "no prior consent"),
)
UNKNOWN = Case("R2 unknown to the ledger", "stranger@nowhere.example", {}, "reject", "R2",
               "unknown")


def write_cases_csv(path: Path, cases: tuple[Case, ...] = CASES) -> Path:
    columns = CSV_HEADER.split(",")
    lines = [CSV_HEADER]
    for case in cases:
        cells = {"email": case.email, **case.row}
        lines.append(",".join(cells.get(column, "") for column in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def import_csv(db: Database, hasher: AddressHasher, text: str,
               dry_run: bool = False) -> ContactImporter:
    """Import CSV `text` into `db` the way `gateway contacts import` does (rows in error are
    left out)."""
    importer = ContactImporter(db.path, hasher, dry_run=dry_run)
    good = [r for r in read_rows(io.StringIO(text), time.time()) if isinstance(r, ContactRow)]
    importer.write(good)
    importer.close()
    return importer
