-- Which notice a sent copy carried (COMPLIANCE.md 4.5: the audit record names the notice
-- version): the template's language and version, written with the sent mark. NULL for copies
-- sent before this migration and for those without a notice (DSNs).
ALTER TABLE deliveries ADD COLUMN notice_version TEXT;
