"""The access-request letter (GDPR 15) in every language it is written in: each language has
every word of the English one with the same placeholders, the contact's language picks it
(de-AT is German), and a letter in German, Spanish or Italian has no English left in it."""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import pytest

from gateway.model import Contact, PolicyKnobs, Source
from gateway.settings import ControllerSettings
from gateway.store.ledger import ContactEvent
from gateway.store.subject import Decision, HeldCopy, SubjectRecord, SubjectRequest
from gateway.subject_letter import (
    _ALLOWED,
    _CHANNELS,
    _EVENTS,
    _OUTCOMES,
    _SOURCE_TYPES,
    _WHY,
    _WORDS,
    LANGUAGES,
    language_for,
    render_text,
)

from conftest import CSV_HEADER, GatewayProcess
from ledger_cases import days_ago

TABLES = {"_WORDS": _WORDS, "_SOURCE_TYPES": _SOURCE_TYPES, "_EVENTS": _EVENTS,
          "_CHANNELS": _CHANNELS, "_OUTCOMES": _OUTCOMES, "_WHY": _WHY,
          "_ALLOWED": _ALLOWED}
TRANSLATED = ("de", "es", "it")
DAY = 86400.0
NOW = 1_790_000_000.0  # 2026-09-21
CONTROLLER = ControllerSettings(name="Exemple SAS", address="1 rue de la Paix, 75002 Paris",
                                privacy_url="https://exemple.fr/confidentialite",
                                dpo_email="dpo@exemple.fr", default_language="fr")
ANNA = "anna.huber@firma.example"


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def english_phrases() -> set[str]:
    """Every run of three words or more that an English letter says in its own words."""
    phrases = set()
    for table in TABLES.values():
        for text in table["en"].values():
            for literal, *_ in string.Formatter().parse(text):
                words = literal.split()
                if len(words) >= 3:
                    phrases.add(" ".join(words))
    return phrases


def as_read(letter: str) -> str:
    return " ".join(letter.split())


def contact(language: str | None, first_name: str | None = "Anna") -> Contact:
    return Contact(address=ANNA, kind="person", audience="b2b", relationship="prospect",
                   language=language, first_name=first_name, last_name="Huber",
                   job_title="Leiterin IT", topics=frozenset({"security"}),
                   customer_categories=frozenset({"software"}),
                   sources=(Source("Firmenbuch", "public_directory", "public", NOW - 200 * DAY),
                            Source("LinkedIn", "social_network", "restricted",
                                   NOW - 150 * DAY)),
                   collected_at=NOW - 200 * DAY, last_interaction_at=NOW - 30 * DAY,
                   informed_at=NOW - 199 * DAY, id=1)


def record(language: str | None) -> SubjectRecord:
    """As SubjectStore.gather builds it: a contact with its events, an objection, a message
    delivered, one held (no subject, M3) and one refused (R1), two requests, an erasure."""
    events = [
        ContactEvent("information", NOW - 199 * DAY, "notice", None, None, None, None,
                     NOW - 199 * DAY),
        ContactEvent("consent", NOW - 120 * DAY, "import", "web form", "I agree",
                     "form v2", None, NOW - 120 * DAY),
        ContactEvent("objection", NOW - 10 * DAY, "one-click", None, None, None,
                     "198.51.100.7", NOW - 10 * DAY),
    ]
    decisions = [
        Decision(NOW - 100 * DAY, "crm", "R8", "allow", "m1", "Sicherheitsangebot", "sent",
                 NOW - 100 * DAY, "de-2026.11"),
        Decision(NOW - 50 * DAY, "crm", "M3", "quarantine", "m2", None, None, None),
        Decision(NOW - 5 * DAY, "crm", "R1", "reject", None, None, None, None),
    ]
    held = [HeldCopy("m2", NOW - 50 * DAY, "crm", "", "M3", "no subject", "held", None)]
    requests = [SubjectRequest(1, "access", NOW - 2 * DAY, NOW + 88 * DAY, None,
                               "extended to 2026-12-18: Anfrage zu 40 Mailings"),
                SubjectRequest(2, "objection", NOW - 20 * DAY, NOW + 10 * DAY,
                               NOW - 10 * DAY)]
    return SubjectRecord(ANNA, [(contact(language), events)], NOW - 10 * DAY, "one-click",
                         decisions, held, requests, [NOW - 400 * DAY])


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", TABLES)
def test_every_language_has_the_english_keys_and_placeholders(name: str, lang: str):
    table = TABLES[name]
    assert table[lang].keys() == table["en"].keys(), name
    for key, english in table["en"].items():
        assert placeholders(table[lang][key]) == placeholders(english), (name, lang, key)


def test_the_languages_are_those_of_the_notices():
    notices = Path(__file__).parent.parent / "gateway" / "notices"
    assert LANGUAGES == ("de", "en", "es", "fr", "it")
    assert set(LANGUAGES) == {p.stem for p in notices.glob("*.toml")}
    assert all(set(table) == set(LANGUAGES) for table in TABLES.values())


@pytest.mark.parametrize(("tag", "lang"), [("de-AT", "de"), ("de", "de"), ("ES-mx", "es"),
                                           ("it-CH", "it"), ("fr-CA", "fr"), ("en-GB", "en")])
def test_the_contacts_language_picks_the_letters(tag: str, lang: str):
    assert language_for(record(tag), "en") == lang
    assert language_for(record(tag), "fr") == lang


def test_without_a_known_language_the_controllers_default_is_used():
    assert language_for(record(None), "de-CH") == "de"
    assert language_for(record("nl"), "it") == "it"
    assert language_for(record("nl"), "pt-BR") == "en"
    nobody = SubjectRecord("nobody@firma.example", [], None, None, [], [], [])
    assert language_for(nobody, "es-ES") == "es"


@pytest.mark.parametrize("lang", TRANSLATED)
def test_a_letter_in_german_spanish_or_italian_has_no_english_left(lang: str):
    letter = render_text(record("de-AT"), CONTROLLER, PolicyKnobs(), lang, NOW)
    lines = letter.splitlines()
    assert lines[0] == _WORDS[lang]["title"].format(controller=CONTROLLER.name)
    assert max(len(line) for line in lines) <= 78
    read = as_read(letter)
    for section in ("facts", "sources", "choices", "mail", "why", "requests", "rights"):
        assert _WORDS[lang][section] in lines, section
    english_intro = _WORDS["en"]["intro"].format(address=ANNA, today="2026-09-21")
    assert english_intro not in read
    leftovers = [phrase for phrase in english_phrases() if phrase in read]
    assert leftovers == []
    # The words the person reads about their rights and the authority, in their language.
    assert "CNIL: www.cnil.fr" in read and "dpo@exemple.fr" in read
    quoted = _WORDS[lang]["quoted"].format(subject="Sicherheitsangebot")
    assert (f"{quoted} \u2014 {_OUTCOMES[lang]['sent']} ({_ALLOWED[lang]['R8']}) [R8]"
            in read)  # and why it could go, in plain words
    assert f"({_WHY[lang]['R1']}) [R1]" in read


@pytest.mark.parametrize("lang", TRANSLATED)
def test_an_empty_record_is_answered_in_the_language_too(lang: str):
    nobody = SubjectRecord("nobody@firma.example", [], None, None, [], [], [])
    letter = as_read(render_text(nobody, CONTROLLER, PolicyKnobs(), lang, NOW))
    assert _WORDS[lang]["nothing"] in letter
    assert _WORDS[lang]["sir"] in letter  # the whole greeting when there is no name
    assert {"de": "21.09.2026", "es": "21/09/2026", "it": "21/09/2026"}[lang] in letter
    assert [phrase for phrase in english_phrases() if phrase in letter] == []


def anna_csv(path: Path) -> Path:
    columns = CSV_HEADER.split(",")
    row = {"email": ANNA, "kind": "person", "audience": "b2b", "language": "de-AT",
           "first_name": "Anna", "last_name": "Huber", "job_title": "Leiterin IT",
           "topics": "security", "source_name": "Firmenbuch",
           "source_type": "public_directory", "source_visibility": "public",
           "collected_at": days_ago(200), "informed_at": days_ago(199)}
    path.write_text(f"{CSV_HEADER}\n" + ",".join(row.get(c, "") for c in columns) + "\n")
    return path


def test_subject_export_writes_to_a_de_at_contact_in_german(make_gateway, tmp_path: Path):
    gw: GatewayProcess = make_gateway(contacts=anna_csv(tmp_path / "contacts.csv"),
                                      start=False)
    german = gw.cli("subject", "export", ANNA, "--format", "text")
    assert german.returncode == 0, german.stderr
    before, _, after = _WORDS["de"]["title"].partition("{controller}")
    first = german.stdout.splitlines()[0]
    assert first.startswith(before) and first.endswith(after)
    read = as_read(german.stdout)
    assert "Guten Tag Anna," in read and "Sprache: de-AT" in read
    assert "Firmenbuch (ein öffentliches Verzeichnis)" in read
    assert [phrase for phrase in english_phrases() if phrase in read] == []
    for lang in ("es", "it"):
        chosen = gw.cli("subject", "export", ANNA, "--format", "text", "--language", lang)
        assert chosen.returncode == 0, chosen.stderr
        read = as_read(chosen.stdout)
        assert _WORDS[lang]["rights"] in chosen.stdout.splitlines()
        assert [phrase for phrase in english_phrases() if phrase in read] == []


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_recipient_accepted_in_a_transaction_given_up_is_told_nothing_was_sent(lang: str):
    """A RCPT accepted, then the client gone before DATA: the audit keeps the decision with
    no message, and the letter said "accepted for sending" of mail that never existed."""
    from gateway.subject_letter import _OUTCOMES
    given_up = dataclasses.replace(record(lang), decisions=[
        Decision(NOW - 3 * DAY, "crm", "R8", "allow", None, None, None, None)])
    letter = as_read(render_text(given_up, CONTROLLER, PolicyKnobs(), lang, NOW))
    assert _OUTCOMES[lang]["no_message"] in letter
    assert _OUTCOMES[lang]["allow"] not in letter


def test_a_letter_about_an_address_never_seen_tells_no_purpose_nor_keeping_period():
    """It said "we hold no data", then the purpose of the mail and how long "these data"
    are kept."""
    nobody = SubjectRecord("nobody@firma.example", [], None, None, [], [], [])
    for lang in ("en", "fr", "de", "es", "it"):
        letter = as_read(render_text(nobody, CONTROLLER, PolicyKnobs(), lang, NOW))
        assert _WORDS[lang]["nothing"] in letter
        assert _WORDS[lang]["purpose_none"] not in letter
        assert _WORDS[lang]["kept_rule"].split("{")[0].strip() not in letter


def test_the_letter_names_the_address_with_its_domain_as_its_owner_writes_it():
    """It said "l'adresse José@xn--exmple-cua.fr" (the ledger keeps A-labels)."""
    idn = SubjectRecord("José@xn--exmple-cua.fr", [], None, None, [], [], [])
    letter = as_read(render_text(idn, CONTROLLER, PolicyKnobs(), "fr", NOW))
    assert "José@exämple.fr" in letter and "xn--" not in letter


def test_the_keeping_period_told_is_true_past_its_deadline_and_for_the_suppression_list():
    """Two years past R4's deadline it said the data "are kept until" then; a suppression
    entry alone was said to be kept 1,095 days, though it never expires (COMPLIANCE.md 5)."""
    import dataclasses

    old = dataclasses.replace(contact("fr"), collected_at=NOW - 2000 * DAY,
                              last_interaction_at=None)
    expired = dataclasses.replace(record("fr"), contacts=[(old, [])])
    letter = as_read(render_text(expired, CONTROLLER, PolicyKnobs(), "fr", NOW))
    assert "a pris fin le" in letter and "au plus tard jusqu'au" not in letter
    only_hash = SubjectRecord("gone@firma.example", [], NOW - 3 * DAY, "erasure", [], [], [])
    for lang in ("en", "fr", "de", "es", "it"):
        letter = as_read(render_text(only_hash, CONTROLLER, PolicyKnobs(), lang, NOW))
        assert as_read(_WORDS[lang]["kept_hash"]) in letter
        assert _WORDS[lang]["kept_rule"].split("{")[0].strip() not in letter


def test_a_message_refused_after_its_rcpt_is_told_once_with_the_refusals_reason():
    """Allowed at RCPT (R8), then refused at delivery (R1: she objected meanwhile): the
    letter said "not delivered (related to your profession) [R8]"."""
    base = record("en")
    decisions = [
        Decision(NOW - 9 * DAY, "crm", "R8", "allow", "m9", "Offer", "failed", NOW - 8 * DAY),
        Decision(NOW - 8 * DAY, "crm", "R1", "reject", "m9", "Offer", "failed", NOW - 8 * DAY),
    ]
    letter = as_read(render_text(SubjectRecord(
        base.address, base.contacts, base.suppressed_at, base.suppression_channel, decisions,
        [], []), CONTROLLER, PolicyKnobs(), "en", NOW))
    assert letter.count("“Offer”") == 1, letter
    assert "[R1]" in letter and "[R8]" not in letter


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_letter_gives_the_reason_of_an_extension_and_the_requests_notes(lang: str):
    """GDPR 12(3): the person is told of an extension "together with the reasons for the
    delay"; the operator's note on their request is their data too (GDPR 15). The letter
    left both out. The extension is said in the letter's language, with its date format;
    the operator's own words are given as written."""
    base = record(lang)
    extended = SubjectRequest(1, "access", NOW - 2 * DAY, NOW + 88 * DAY, NOW - DAY,
                              "extended to 2026-12-18: Anfrage zu 40 Mailings; "
                              "refused in part; sent by post")
    letter = as_read(render_text(dataclasses.replace(base, requests=[extended]), CONTROLLER,
                                 PolicyKnobs(), lang, NOW))
    day = {"en": "2026-12-18", "de": "18.12.2026"}.get(lang, "18/12/2026")
    said = _WORDS[lang]["extended"].format(date=day)
    assert f"{said} Anfrage zu 40 Mailings; refused in part; sent by post" in letter, letter
    assert f"{_WORDS[lang]['request_note']}{_WORDS[lang]['colon']} {said}" in letter
    if lang != "en":
        assert "extended to" not in letter
