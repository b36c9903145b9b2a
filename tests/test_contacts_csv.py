"""The contact CSV reader: every bad row named by its line and reason; good rows go on."""

from __future__ import annotations

import io

import pytest

from gateway.contacts_csv import ContactRow, HeaderError, RowError, read_rows

from conftest import CSV_HEADER

NOW = 1_800_000_000.0


def rows(text: str) -> list[ContactRow | RowError]:
    return list(read_rows(io.StringIO(text), NOW))


def errors(text: str) -> dict[int, str]:
    return {r.line: r.reason for r in rows(text) if isinstance(r, RowError)}


def test_good_rows_are_parsed_and_normalised():
    [row] = rows("email,kind,audience,topics,consent,consent_at,source_name,source_type,"
                 "collected_at,opt_out_offered,language\n"
                 "Jane.Doe@EXAMPLE.Fr,Person,B2B, CRM ; security;crm ,granted,"
                 "2026-01-05T10:00:00+01:00,Form,direct,2026-01-05,TRUE,FR-ca\n")
    assert isinstance(row, ContactRow)
    assert row.address == "Jane.Doe@example.fr"  # domain lower-cased, local part as given
    assert (row.kind, row.audience, row.topics) == ("person", "b2b", ("crm", "security"))
    assert row.consent_at == 1767603600.0 and row.opt_out_offered is True
    assert row.language == "fr-ca" and row.line == 2


def test_each_bad_row_is_reported_with_its_line_and_the_rest_import():
    text = ("email,audience,collected_at,consent,consent_at\n"
            "ok1@example.com,b2b,2026-01-01,,\n"                      # 2
            "bad-date@example.com,b2b,01/02/2026,,\n"                 # 3
            "bad-enum@example.com,b2x,,,\n"                           # 4
            '"evil@example.com\r\nBcc: x@example.com",b2b,,,\n'       # 5-6
            "ok1@EXAMPLE.com,b2b,,,\n"                                 # 7 duplicate of 2
            "future@example.com,b2b,2999-01-01,,\n"                   # 8
            "noproof@example.com,b2c,,granted,\n"                     # 9
            "not-an-address,b2c,,,\n"                                 # 10
            "ok2@example.com,b2c,,,\n"                                 # 11
            "short@example.com\n")                                    # 12
    result = rows(text)
    assert [r.address for r in result if isinstance(r, ContactRow)] == [
        "ok1@example.com", "ok2@example.com"]
    found = errors(text)
    assert set(found) == {3, 4, 5, 7, 8, 9, 10, 12}
    assert "collected_at: not an ISO 8601 date" in found[3]
    assert "audience: unknown value 'b2x'" in found[4]
    assert "email: control characters" in found[5]
    assert "duplicate" in found[7] and "line 2" in found[7]
    assert "in the future" in found[8]
    assert "consent_at: required" in found[9]
    assert "email:" in found[10]
    assert "1 fields, the header has 5" in found[12]


def test_an_over_long_quoted_field_is_skipped_whole_and_its_text_is_never_a_row():
    """The csv module gives up inside such a field and would go on at its next line: a line
    of the field's text (here "smuggled@...") must not become a contact. The rows after the
    field are read (the file stopped there: a valid file lost its rest)."""
    text = ("email,job_title,source_name,source_type\n"
            "a@example.org,p,web form,direct\n"                       # 2
            'b@example.org,"' + "x" * 70_000 + "\n"                    # 3: opens, too long
            "smuggled@example.org,note,web form,direct\n"              # 4: inside the field
            'end of proof",web form,direct\n'                          # 5: it closes
            "c@example.org,p,web form,direct\n")                       # 6
    result = rows(text)
    assert [(r.line, r.address) for r in result if isinstance(r, ContactRow)] == [
        (2, "a@example.org"), (6, "c@example.org")]
    [error] = [r for r in result if isinstance(r, RowError)]
    assert error.line == 3 and "longer than 64 KiB (lines 3-5)" in error.reason
    never = text.replace('end of proof",web form,direct\n', "")  # the quote never closes
    assert [r.address for r in rows(never) if isinstance(r, ContactRow)] == ["a@example.org"]
    [error] = [r for r in rows(never) if isinstance(r, RowError)]
    assert "never closed" in error.reason and "nothing after line 3" in error.reason


@pytest.mark.parametrize("long_field", ["x" * 70_000, '"' + "x" * 70_000 + '"'],
                         ids=["unquoted", "quoted"])
def test_an_over_long_field_that_ends_on_its_line_is_its_row_s_error_only(long_field: str):
    """No quote left open: the rows after it are read and imported as usual."""
    text = ("email,job_title,source_name,source_type\n"
            "a@example.org,p,web form,direct\n"                       # 2
            f"b@example.org,{long_field},web form,direct\n"           # 3: too long, ends here
            "c@example.org,p,web form,direct\n")                      # 4
    result = rows(text)
    assert [r.address for r in result if isinstance(r, ContactRow)] == [
        "a@example.org", "c@example.org"]
    [error] = [r for r in result if isinstance(r, RowError)]
    assert error.line == 3 and "longer than 64 KiB" in error.reason
    assert "not read past" not in error.reason


def test_a_quote_never_closed_names_the_lines_it_swallowed():
    text = ("email,source_name,source_type\n"
            "a@example.org,form,direct\n"               # 2
            'b@example.org,"form,direct\n'              # 3: opens, never closes
            "c@example.org,form,direct\n"               # 4
            "d@example.org,form,direct\n")              # 5
    result = rows(text)
    assert [r.address for r in result if isinstance(r, ContactRow)] == ["a@example.org"]
    [error] = [r for r in result if isinstance(r, RowError)]
    assert error.line == 3 and "never closed" in error.reason and "lines 3-5" in error.reason


@pytest.mark.parametrize("header, message", [
    ("email,kind,favourite_colour\n", "unknown column 'favourite_colour'"),
    ("email\tkind\tlanguage\n", "separated by tabs"),  # (the whole line echoed before)
    ("email,kind,kind\n", "appears twice"),
    ("kind,audience\n", "no 'email' column"),
    ("email,kind\r", "end with CR alone"),  # classic Mac: the csv module's words were cryptic
])
def test_a_bad_header_stops_everything(header, message):
    with pytest.raises(HeaderError, match=message):
        rows(header + "a@example.com,person,person\n")
    with pytest.raises(HeaderError, match="empty"):
        rows("")


def test_control_characters_and_escapes_in_text_fields_are_refused():
    found = errors("email,first_name,source_name,source_type\n"
                   "a@example.com,\x1b[31mRed,Form,direct\n"
                   'b@example.com,Bob,"Form\nBcc: x",direct\n')
    assert "first_name: control characters" in found[2]
    assert "source_name: control characters" in found[3]


def test_source_name_and_type_go_together():
    found = errors("email,source_name,source_type,source_visibility\n"
                   "a@example.com,LinkedIn,,\nb@example.com,,broker,\n"
                   "c@example.com,,,restricted\n")
    assert set(found) == {2, 3, 4}


def test_semicolon_separated_files_from_spreadsheets_and_a_bom():
    [row] = rows("\ufeffemail;kind;topics\njane@example.com;role;\"crm;hr\"\n")
    assert isinstance(row, ContactRow) and row.kind == "role" and row.topics == ("crm", "hr")


def test_the_full_interface_header_is_accepted():
    [row] = rows(CSV_HEADER + "\n" + "a@example.com" + "," * CSV_HEADER.count(",") + "\n")
    assert isinstance(row, ContactRow)


def test_placeholder_dates_and_consent_details_without_consent_are_row_errors():
    """Year 1 (.NET's "no date") was a consent R6 allowed on, and crashed `contacts show`;
    consent_method or consent_proof without consent were kept for a new contact and dropped
    without a word for an existing one."""
    text = ("email,consent,consent_at,consent_method,consent_proof\n"
            "a@example.org,granted,0001-01-01T00:00:00,form,\n"          # 2
            "b@example.org,granted,1969-12-31,form,\n"                   # 3
            "c@example.org,,,double opt-in form,\n"                      # 4
            "d@example.org,,,,form v3\n"                                 # 5
            "e@example.org,granted,1970-01-02,form,v3\n")                # 6
    result = rows(text)
    errors = {r.line: r.reason for r in result if isinstance(r, RowError)}
    assert "consent_at: date before 1970" in errors[2] and "before 1970" in errors[3]
    assert errors[4] == "consent_method: given without consent (granted|withdrawn)"
    assert errors[5] == "consent_proof: given without consent (granted|withdrawn)"
    assert [r.address for r in result if isinstance(r, ContactRow)] == ["e@example.org"]


def test_the_word_empty_is_a_blank_cell_where_the_contract_lists_it():
    """INTERFACE.md: consent (granted|withdrawn|empty), source_visibility (...|empty)."""
    result = rows("email,consent,source_name,source_type,source_visibility\n"
                  "a@example.org,empty,web,direct,Empty\n")
    [row] = result
    assert isinstance(row, ContactRow) and row.consent is None and row.source_visibility is None


def test_a_carriage_return_alone_inside_a_line_is_explained():
    """Python's "new-line character seen in unquoted field - do you need to open the file in
    universal-newline mode?" reached the operator as it was."""
    found = errors("email,source_name,source_type\nm1@x.example,f,direct\rm2@x.example,f,"
                   "direct\nm3@x.example,f,direct\n")
    assert list(found) == [2] and "carriage return (CR) alone" in found[2]
    assert "universal-newline" not in found[2]
    assert [r.address for r in rows("email\nm1@x.example\rm2@x.example\nm3@x.example\n")
            if isinstance(r, ContactRow)] == ["m3@x.example"]
