"""The ordered rule table: the first rule that decides, decides (Mailman's chain, as data).

The order is the rule book's (../shared/COMPLIANCE.md section 2), with T1 (transactional
accounts) right after R1. Changing the order changes the law we apply: tests pin it.
"""

from __future__ import annotations

from gateway.model import Campaign, Decision, PolicyKnobs, RecipientFacts, Verdict
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


def decide(facts: RecipientFacts, campaign: Campaign, knobs: PolicyKnobs, now: float,
           override: str | None = None) -> Decision:
    """The decision for one recipient of one campaign at time `now`. Pure: no I/O.

    `override`: the rule an operator overrides when releasing a held copy. Every rule before
    it still decides (an objection since, R1, or expired retention, R4, is never released);
    when the chain reaches it, the operator's judgement allows the copy.
    """
    case = Case(facts, campaign, knobs, now)
    for rule_id, rule in CHAIN:
        decision = rule(case)
        if decision is None:
            continue
        if rule_id == override and decision.verdict is not Verdict.ALLOW:
            return Decision(Verdict.ALLOW, rule_id, f"released by an operator over {rule_id} "
                            f"({decision.reason})", decision.basis)
        return decision
    raise AssertionError("R10 always decides")  # pragma: no cover
