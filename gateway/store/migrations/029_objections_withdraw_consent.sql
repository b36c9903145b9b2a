-- The person's own objection withdraws the consent on record (store/ledger._WITHDRAW_SQL,
-- from this version on). Contacts that objected before it kept consent 'granted', and a
-- `suppress remove` brought R6 back on the consent given before the objection: withdrawn
-- now, as if recorded so (an objection by any channel but an operator's manual entry, or a
-- GDPR 21 request, made after the consent was given).
UPDATE contacts SET consent = 'withdrawn'
WHERE consent = 'granted' AND EXISTS (
    SELECT 1 FROM contact_events e WHERE e.contact_id = contacts.id AND e.kind = 'objection'
    AND (e.channel != 'manual' OR e.wording = 'objection request')
    AND e.occurred_at >= coalesce(contacts.consent_at, 0));
