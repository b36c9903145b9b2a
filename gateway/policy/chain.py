"""The ordered rule table: the first rule that decides, decides (Mailman's chain, as data).

The order is the rule book's (../shared/COMPLIANCE.md section 2), with T1 (transactional
accounts) right after R1. Changing the order changes the law we apply: tests pin it.
"""

from __future__ import annotations

from gateway.model import Campaign, Decision, PolicyKnobs, RecipientFacts
from gateway.policy import rules
from gateway.policy.rules import Case, Rule

CHAIN: tuple[tuple[str, Rule], ...] = (
    ("R1", rules.r1_suppressed),
    ("T1", rules.t1_transactional),
    ("R2", rules.r2_unknown),
    ("R3", rules.r3_forbidden_source),
    ("R4", rules.r4_retention_expired),
    ("R5", rules.r5_role_address),
    ("R6", rules.r6_consent),
    ("R7", rules.r7_soft_opt_in),
    ("R8", rules.r8_b2b_relevant),
    ("R9", rules.r9_b2b_unclear),
    ("R10", rules.r10_no_basis),
)


def decide(facts: RecipientFacts, campaign: Campaign, knobs: PolicyKnobs, now: float) -> Decision:
    """The decision for one recipient of one campaign at time `now`. Pure: no I/O."""
    case = Case(facts, campaign, knobs, now)
    for _rule_id, rule in CHAIN:
        decision = rule(case)
        if decision is not None:
            return decision
    raise AssertionError("R10 always decides")  # pragma: no cover
