"""The recipient rules R1-R10 of ../shared/COMPLIANCE.md section 2, one pure function each.

Each rule answers one question about a `Case` and returns a Decision when it decides, None
when it does not apply; gateway.policy.chain evaluates them in the order of the rule book.
No rule does I/O or reads a clock: `Case.now` is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from gateway.model import Campaign, Contact, Decision, PolicyKnobs, RecipientFacts, Verdict

DAY = 86400.0

# Consent obtained this way is not consent (GDPR 4(11), 7; CNIL): the box was ticked for the
# person, or it was bundled with accepting the terms and conditions. consent_method is free
# text, so it is matched word by word, in English and French ("pre-ticked box", "box ticked
# by default", "accepted T&C", "CGV acceptées", "case précochée", "case cochée par défaut"): a
# method that names one of these (plurals too: "T&Cs", "CGUs"; "case cochée d'office",
# "auto-ticked") is not consent, unless it is denied ("not pre-ticked", "case
# non précochée", "unticked by default", "décochée par défaut": the person ticked it).
_INVALID_CONSENT = re.compile(
    r"\b(?:(?P<state>pre ?(?:ticked|checked|selected|filled|tick|check|select)\w*"
    r"|pr[eé] ?(?:coch|s[eé]lectionn|rempli)\w*"
    r"|(?P<auto>auto ?(?:tick|check|select|coch)\w*|already (?:ticked|checked|selected)"
    r"|(?:ticked|checked|selected|coch\w*) (?:d office|automatiquement|automatically|already))"
    r"|(?:ticked|checked|selected|filled|coch[eé]e?s?|s[eé]lectionn[eé]e?s?)"
    r" (?:in advance|beforehand|[aà] l avance|d avance|(?:by|par) (?:d[eé]faut|default)))"
    r"|(?P<default>(?:by |par )?(?:d[eé]faut|default))"
    r"|opt ?out(?! (?:links?|liens?)\b)"
    r"|terms|conditions|ts? ?& ?cs?|ts? ?and ?cs?|tos|cgus?|cgvs?|eulas?|bundled)\b")
# Consent read into conduct is no consent either (GDPR recital 32; CNIL: continuing to
# browse is not consent), nor being opted in automatically or a box ticked for the person.
_TACIT_CONSENT = re.compile(
    r"\b(?:implied|implicit\w*|implicite?s?|tacit\w*"
    r"|continu\w* (?:to |[aà] |de )?(?:brows\w*|navig\w*|us(?:e|ing)|utilis\w*)"
    r"|continued (?:use|browsing)|poursuite de (?:la )?navigation"
    r"|auto ?enrol\w*|auto(?:matic(?:ally)?)? ?opt(?:ed)? ?in"
    r"|opted in (?:automatically|by default)"
    r"|(?:ticked|checked|selected|coch[eé]e?s?) (?:for|pour|on behalf of) (?:the |l |le |la )?"
    r"(?:user|person|customer|client|contact|prospect|subscriber|them|him|her|lui"
    r"|utilisat\w*|personne|abonn\w*)"
    r")\b")
# Silence, inactivity, a presumption or a privacy policy accepted (recital 32) is no consent
# when it is all the method says: beside a positive act of the person ("re-permission after
# 12 months of inactivity, user clicked confirm", "opt-in checkbox and privacy policy
# accepted") it is context, not the consent.
_PASSIVE_CONSENT = re.compile(
    r"\b(?:presumed|pr[eé]sum[eé]\w*|silence|inactivity|inaction|inactivit[eé]"
    r"|(?:accept\w*|agreed to) (?:the |our )?privacy (?:policy|notice)"
    r"|privacy (?:policy|notice) accept\w*"
    r"|politique de confidentialit[eé] accept[eé]\w*"
    r"|accept\w* (?:de )?(?:la )?politique de confidentialit[eé])\b")
# Another legal basis named as the "consent" (a soft opt-in is R7's, a legitimate interest
# R8's, each with conditions of its own), or a method saying there was none (rules review:
# "soft opt-in", "legitimate interest (B2B)", "pas de consentement" all passed R6).
_NO_CONSENT = re.compile(
    r"\b(?:soft ?opt ?in|legitimate interests?|int[eé]r[eê]ts? l[eé]gitimes?"
    r"|(?:no|without|sans|aucun|pas de|never) (?:prior |pr[eé]alable )?consent\w*"
    r"(?! (?:pr[eé]sum|presum|implic|implie|tacit))"
    r"|(?:consent\w* )?(?:refused|declined|withdrawn|revoked|refus[eé]e?s?|retir[eé]e?s?"
    r"|r[eé]voqu[eé]e?s?)|unsubscribed|d[eé]sinscri\w*|d[eé]sabonn\w*)\b")
# A purchase or a customer relationship is the soft opt-in's ground, not consent, when it
# is all the method says ("existing customer", "purchase"); "opt-in box ticked at purchase"
# is a consent given at a purchase.
_CUSTOMER_GROUND = re.compile(
    r"\b(?:existing (?:customer|client)|client existant|customer relationship"
    r"|relation client\w*|purchas\w*|achat\w*|ordered|order|commande\w*)\b")
_POSITIVE_ACT = re.compile(
    r"\b(?:opt ?in|opted ?in|double opt\w*|click\w*|confirm\w*|sign(?:ed)? ?up|signup"
    r"|subscrib\w*|inscri\w*|souscri\w*|(?:ticked|checked|selected|coch[eé]e?s?) (?:by|par)"
    r"|checkbox|case|form|formulaire|consent(?:ed|ement)? (?:given|donn[eé]|explicit\w*)"
    r"|explicit\w*)\b")
_NEGATIONS = frozenset({"not", "non", "no", "never", "pas", "jamais", "sans", "without"})
# a box left empty for the person to tick: "unticked", "décochée", "vide", "empty"
_EMPTY_STATE = re.compile(r"(?:un|d[eé])(?:ticked|checked|selected|coch)\w*|empty|vide|blank")


def _denied(words: str, start: int, reach: int = 2) -> bool:
    """Whether the `reach` words before `start` deny what follows ("not", "non", "pas" ...,
    or an English "n't": "wasn t" once punctuation is gone; "pas de consentement présumé"
    needs three)."""
    before = words[:start].split()[-reach:]
    return any(word in _NEGATIONS for word in before) or " ".join(before).endswith("n t")


@lru_cache(maxsize=4096)  # a ledger has a few methods, each on many contacts
def invalid_consent_method(method: str | None) -> bool:
    """True when the recorded method says the consent was not freely given, specific and
    unambiguous: a box ticked for the person, terms or a privacy policy accepted, or a
    consent read into silence, inactivity or browsing on."""
    if not method:
        return False
    words = re.sub(r"[^\w&]+", " ", method.casefold()).replace("_", " ")
    for found in _INVALID_CONSENT.finditer(words):
        if found["default"] is not None:
            # "unticked by default" is an empty box; "default" alone, or a box ticked by
            # default, is consent nobody gave
            before = words[:found.start()].split()
            if before and _EMPTY_STATE.fullmatch(before[-1]):
                continue
            if len(before) >= 2 and before[-2] in _NEGATIONS:  # "not ticked by default"
                continue
        elif found["state"] is not None and _denied(words, found.start()):
            continue
        elif found["auto"] is not None and _about_the_address(words, found.start(),
                                                               found.end()):
            continue  # "MX checked automatically", "address auto-checked for typos"
        return True
    if any(not _denied(words, found.start(), 3) for found in _TACIT_CONSENT.finditer(words)):
        return True
    if _NO_CONSENT.search(words):
        return True
    return not _POSITIVE_ACT.search(words) and (
        _CUSTOMER_GROUND.search(words) is not None
        or any(not _denied(words, found.start(), 3)
               for found in _PASSIVE_CONSENT.finditer(words)))


# what a check of the address (not a box) is said of, two words either side
_ADDRESS_WORDS = frozenset({"address", "adresse", "email", "mail", "mx", "domain", "dns",
                            "syntax", "syntaxe", "typo", "typos", "spelling", "list"})


def _about_the_address(words: str, start: int, end: int) -> bool:
    near = words[:start].split()[-2:] + words[end:].split()[:2]
    return any(word in _ADDRESS_WORDS for word in near)


@dataclass(frozen=True)
class Case:
    """One recipient decision's inputs."""

    facts: RecipientFacts
    campaign: Campaign
    knobs: PolicyKnobs
    now: float

    @property
    def contact(self) -> Contact:
        assert self.facts.contact is not None  # R2 has run: every later rule has a contact
        return self.facts.contact


Rule = Callable[[Case], Decision | None]


@lru_cache(maxsize=1024)
def _decision(verdict: Verdict, rule: str, reason: str, basis: str) -> Decision:
    """One shared Decision per distinct outcome (it is frozen). A transaction keeps the
    decision of each of its recipients until it ends: shared, they are no new objects for
    the cyclic garbage collector to walk again and again."""
    return Decision(verdict, rule, reason, basis)


def _allow(rule: str, reason: str, basis: str) -> Decision:
    return _decision(Verdict.ALLOW, rule, reason, basis)


def _reject(rule: str, reason: str, basis: str) -> Decision:
    return _decision(Verdict.REJECT, rule, reason, basis)


def r1_suppressed(case: Case) -> Decision | None:
    """R1: objection is absolute (GDPR 21(3)). A withdrawn consent is an objection too: it
    puts the address on the suppression list (contacts import), and R1 reads the list alone,
    so that `gateway suppress remove` (the person's own new request) lifts it; the consent
    stays withdrawn, so R6 does not allow until a file grants it again. The person's own
    objection (one-click, link, mailto, webhook) withdraws the consent on record the same way
    (store/ledger._WITHDRAW_SQL)."""
    if case.facts.suppressed:
        return _reject("R1", "recipient objected to prospecting (suppression list)",
                       "CPCE L.34-5; GDPR 21(2)-(3): objection to direct marketing is absolute")
    return None


def t1_transactional(case: Case) -> Decision | None:
    """T1: an account declared transactional does not prospect; L.34-5 does not apply.

    Checked after R1 on purpose: the suppression list also holds erased subjects and
    complaints, and a gateway that promises "never mailed again" keeps that promise.
    """
    if case.campaign.category == "transactional":
        return _allow("T1", "transactional mail from a transactional account",
                      "not direct marketing: CPCE L.34-5 does not apply (GDPR 6-1-b)")
    return None


def r2_unknown(case: Case) -> Decision | None:
    """R2: no ledger entry means no evidence of a lawful basis and no source to name."""
    if case.facts.contact is not None:
        return None
    verdict = Verdict.QUARANTINE if case.knobs.unknown_recipient == "quarantine" \
        else Verdict.REJECT
    return _decision(verdict, "R2", "recipient unknown to the contact ledger",
                     "no evidence of a lawful basis; no source to give on access (GDPR 15)")


def r3_forbidden_source(case: Case) -> Decision | None:
    """R3: a source we may not use taints the record (KASPR: scraped restricted profiles).
    A social network source without the visibility its owner had chosen cannot be shown to
    have been public (COMPLIANCE 1 asks for it): it is refused as a restricted one."""
    sources = case.contact.sources
    basis = "GDPR 6 and 14; CNIL KASPR 2024 and NESTOR 2020"
    if not sources:
        return _reject("R3", "no source recorded for this address", basis)
    for source in sources:
        if source.type == "social_network" and source.visibility == "restricted":
            return _reject("R3", "collected from a social network profile with restricted "
                           f"visibility ({source.name})", basis)
        if source.type == "social_network" and source.visibility != "public":
            return _reject("R3", "collected from a social network profile whose visibility "
                           f"was not recorded ({source.name})", basis)
        if source.type in case.knobs.forbidden_sources:
            return _reject("R3", f"source type {source.type} is forbidden by policy "
                           f"({source.name})", basis)
    return None


def retention_deadline(contact: Contact, knobs: PolicyKnobs) -> float | None:
    """When the ledger entry must be gone (unix seconds), or None if no clock can start.

    The clock starts at collection and is renewed only by the person's own action
    (last_interaction_at, or a consent they gave: a form is such an action, COMPLIANCE 1):
    enrichment and re-imports never renew it (KASPR). For customers the last purchase is such
    an action, so the same clock runs from the end of the relationship. Without an action by
    the person, max_retention_days from collection is the cap.
    """
    collected = contact.collected_at
    if collected is None:
        dates = [s.recorded_at for s in contact.sources if s.recorded_at is not None]
        collected = min(dates) if dates else None
    if collected is None:
        return None
    acted = contact.last_interaction_at
    given = consent_given_at(contact)
    if given is not None and (acted is None or given > acted):
        acted = given  # a consent of 2025 kept a contact collected in 2021 (it was purged)
    if acted is not None and acted > collected:
        return acted + knobs.prospect_retention_days * DAY
    return collected + min(knobs.prospect_retention_days, knobs.max_retention_days) * DAY


def consent_given_at(contact: Contact) -> float | None:
    """When the person gave the consent on record, if they gave one: a box ticked for them
    or terms accepted (invalid_consent_method) is no action of theirs. (store/retention.py
    writes the same in SQL.)"""
    if (contact.consent == "granted" and contact.consent_at is not None
            and not invalid_consent_method(contact.consent_method)):
        return contact.consent_at
    return None


def r4_retention_expired(case: Case) -> Decision | None:
    """R4: past the retention deadline the data must not be used (GDPR 5-1-e), only purged."""
    deadline = retention_deadline(case.contact, case.knobs)
    if deadline is not None and case.now > deadline:
        days = int((case.now - deadline) // DAY)
        ago = "today" if days == 0 else "1 day ago" if days == 1 else f"{days} days ago"
        return _reject("R4", f"retention period expired {ago}; marked for purge",
                       "GDPR 5-1-e; CNIL prospecting guidance (3 years); KASPR (no renewal)")
    return None


def r5_role_address(case: Case) -> Decision | None:
    """R5: a generic address (contact@, sales@) identifies no natural person (NESTOR)."""
    if case.contact.kind == "role":
        return _allow("R5", "generic role address, not a natural person",
                      "NESTOR 2020: consent rules apply to natural persons only")
    return None


def consent_is_valid(contact: Contact, now: float) -> bool:
    """Granted, provable (it has a date), prior (that date is past: an import takes dates up
    to a day ahead, for clocks that disagree) and not obtained by a pre-ticked box or T&C."""
    return (contact.consent == "granted" and contact.consent_at is not None
            and contact.consent_at <= now
            and not invalid_consent_method(contact.consent_method))


def r6_consent(case: Case) -> Decision | None:
    """R6: prior, provable consent (L.34-5 al. 1; GDPR 7(1))."""
    if consent_is_valid(case.contact, case.now):
        return _allow("R6", "prior consent on record", "CPCE L.34-5 al. 1; GDPR 6-1-a and 7")
    return None


def r7_soft_opt_in(case: Case) -> Decision | None:
    """R7: a customer, collected directly at a sale with an opt-out offered, for analogous
    products (the campaign's category is one the customer bought)."""
    contact = case.contact
    if (contact.relationship == "customer" and contact.opt_out_offered is True
            and any(s.type == "direct" for s in contact.sources)
            and contact.customer_categories & case.campaign.product_categories):
        return _allow("R7", "existing customer, analogous products, opt-out offered at sale",
                      "CPCE L.34-5 al. 4 (soft opt-in)")
    return None


def r8_b2b_relevant(case: Case) -> Decision | None:
    """R8: professional address, message related to the profession. The person is informed
    and can object in every message the gateway lets through (notice and unsubscribe link)."""
    contact = case.contact
    if contact.audience == "b2b" and contact.topics & case.campaign.topics:
        return _allow("R8", "professional recipient, campaign related to their profession",
                      "CNIL B2B tolerance restated in NESTOR 2020: related to the profession, "
                      "informed, able to object")
    return None


def r9_b2b_unclear(case: Case) -> Decision | None:
    """R9: B2B, but no topics on one side: relevance is a human judgement (NESTOR)."""
    contact = case.contact
    campaign = case.campaign
    if contact.audience == "b2b" and (not contact.topics or (
            not campaign.topics and not campaign.topics_unrelated)):
        verdict = Verdict.REJECT if case.knobs.b2b_unclear == "reject" else Verdict.QUARANTINE
        missing = "recipient" if not contact.topics else "campaign"
        return _decision(verdict, "R9", f"B2B relevance cannot be established (no {missing} "
                         "topics)", "NESTOR 2020: the link to the profession must be shown")
    return None


def r10_no_basis(case: Case) -> Decision:
    """R10: anything else has no lawful basis for prospecting."""
    contact = case.contact
    basis = "CPCE L.34-5 al. 1"
    if contact.consent == "granted" and not consent_is_valid(contact, case.now):
        return _reject("R10", "recorded consent is not valid consent (no date, a date still "
                       "to come, or pre-ticked box / terms acceptance)",
                       basis + "; GDPR 4(11) and 7")
    if contact.audience == "b2b":
        return _reject("R10", "campaign topics unrelated to the recipient's profession", basis)
    if contact.relationship == "customer":
        return _reject("R10", "customer without consent, and not analogous products with an "
                       "opt-out offered at sale", basis + " al. 4")
    return _reject("R10", "no prior consent for B2C prospecting", basis)
