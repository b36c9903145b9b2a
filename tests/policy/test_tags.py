"""Topics and product categories compare as NFC lower case, however they were written: a CSV
from a macOS export (decomposed: e + U+0301), an account's --topics, an X-Gateway-* header
encoded as RFC 2047 words (rules review: each was R10 "campaign topics unrelated")."""

from __future__ import annotations

import io
import unicodedata

from gateway.contacts_csv import ContactRow, read_rows
from gateway.flow import campaign_of, steering_of
from gateway.model import Contact, PolicyKnobs, RecipientFacts, Source, Verdict
from gateway.policy import chain
from gateway.store.accounts import Account
from gateway.transform.headers import tag_list

NOW = 1_800_000_000.0
COMPOSED = "études de marché"
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


def test_a_decomposed_topic_in_the_csv_is_held_composed():
    assert DECOMPOSED != COMPOSED
    [row] = read_rows(io.StringIO(
        f'email,audience,topics,customer_categories\na@example.fr,b2b,"{DECOMPOSED.upper()};'
        f'CRM",{unicodedata.normalize("NFD", "Électroménager")}\n'), NOW)
    assert isinstance(row, ContactRow), row
    assert row.topics == (COMPOSED, "crm")
    assert row.customer_categories == ("électroménager",)


def test_an_encoded_word_header_names_the_same_topic():
    encoded = "=?utf-8?b?w4l0dWRlcyBkZSBtYXJjaMOp?="  # "Études de marché", email.header's
    assert tag_list(encoded) == {COMPOSED}
    assert tag_list(f"{DECOMPOSED}; CRM ") == {COMPOSED, "crm"}
    assert steering_of([("x-gateway-campaign-topics", encoded)]) == (COMPOSED, None)
    assert tag_list("=?bogus?q?x?=; crm") == {"=?bogus?q?x?=", "crm"}  # undecodable: as is
    assert tag_list("=?utf-8?q?crm=0D=0A=1B;hr?=") == {"crm", "hr"}  # no control character


def test_an_accounts_decomposed_topic_meets_the_contacts_composed_one():
    account = Account(1, "etudes", ("example.fr",), topics=(DECOMPOSED.title(),),
                      product_categories=(unicodedata.normalize("NFD", "Électroménager"),))
    campaign = campaign_of(account)
    assert campaign.topics == {COMPOSED} and campaign.product_categories == {"électroménager"}
    contact = Contact(address="p@example.fr", audience="b2b", topics=frozenset({COMPOSED}),
                      sources=(Source("annuaire", "public_directory", "public",
                                      NOW - 10 * 86400),), collected_at=NOW - 10 * 86400)
    decision = chain.decide(RecipientFacts("p@example.fr", False, contact), campaign,
                            PolicyKnobs(), NOW)
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "R8"), decision
