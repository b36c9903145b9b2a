"""The message rules M1-M3 of ../shared/COMPLIANCE.md section 3, checked at DATA."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway.model import Decision, MessageFacts, Verdict


def m1_from_domain(from_domains: Iterable[str], problem: str | None = None, *,
                   may_send_from: Callable[[str], bool]) -> Decision | None:
    """M1: the From header must name only domains the account may send for (L.34-5: the
    sender's identity may not be hidden). No From domain at all is refused too, with
    `problem` as the reason when the caller knows why (flow.from_header)."""
    domains = list(from_domains)
    if problem is not None:
        return Decision(Verdict.REJECT, "M1", problem,
                        "CPCE L.34-5: the sender's identity may not be disguised")
    if not domains or not all(may_send_from(d) for d in domains):
        return Decision(Verdict.REJECT, "M1", "From header domain not allowed for this account",
                        "CPCE L.34-5: the sender's identity may not be disguised")
    return None


def m2_unsafe_to_rewrite(facts: MessageFacts) -> Decision | None:
    """M2: a notice would break a signature, or the structure cannot be rewritten safely."""
    if facts.signed_or_encrypted:
        return Decision(Verdict.QUARANTINE, "M2", f"{facts.signed_or_encrypted} message: a "
                        "notice would break it", "GDPR 13/14 and L.34-5 information cannot "
                        "be added; a human decides")
    if facts.malformed:
        return Decision(Verdict.QUARANTINE, "M2", f"malformed message: {facts.malformed}",
                        "cannot add the mandatory information safely")
    return None


def m3_nothing_to_inform_in(facts: MessageFacts) -> Decision | None:
    """M3: without a subject or a text body there is no place for the notice."""
    if not facts.has_subject:
        return Decision(Verdict.QUARANTINE, "M3", "message has no subject",
                        "prospecting mail must identify itself; a human decides")
    if not facts.has_text_body:
        return Decision(Verdict.QUARANTINE, "M3", "message has no text body for the notice",
                        "GDPR 13/14 information has nowhere to go; a human decides")
    return None


def decide_message(facts: MessageFacts) -> Decision | None:
    """M2 then M3 (M1 runs earlier, on the From header alone); None when the message may go."""
    return m2_unsafe_to_rewrite(facts) or m3_nothing_to_inform_in(facts)
