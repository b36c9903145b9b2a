"""The contact CSV of ../shared/INTERFACE.md: read row by row, each row checked on its own.

A bad row becomes a `RowError` with its line number and the reason; good rows become
`ContactRow` values for the store. Nothing here touches the store, so `--dry-run` and the real
import share every check.
"""

from __future__ import annotations

import csv
import datetime
import functools
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, TextIO

from gateway.addresses import normalize_address, person_form
from gateway.model import (
    AUDIENCES,
    CONSENTS,
    KINDS,
    RELATIONSHIPS,
    SOURCE_TYPES,
    VISIBILITIES,
    tag_key,
)

COLUMNS = (
    "email", "kind", "audience", "relationship", "language", "first_name", "last_name",
    "job_title", "topics", "customer_categories", "consent", "consent_at", "consent_method",
    "consent_proof", "source_name", "source_type", "source_visibility", "collected_at",
    "last_interaction_at", "informed_at", "opt_out_offered",
)
DATE_COLUMNS = ("consent_at", "collected_at", "last_interaction_at", "informed_at")
MAX_TEXT = 200
MAX_PROOF = 2000
MAX_TAG = 100
FUTURE_SLACK_SECONDS = 86400.0  # clocks and time zones: a day ahead is a typo, not fraud
# before it a date is a placeholder ("0001-01-01T00:00:00" is .NET's and SQL Server's "no
# date"), not a fact: R4 and R6 would read it as one (a consent of year 1 allowed mail)
EARLIEST_DATE = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC).timestamp()
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
FIELD_LIMIT = 64 * 1024
csv.field_size_limit(FIELD_LIMIT)  # a sane cap: no ledger field is anywhere near this


class ContactRow(NamedTuple):
    """One valid row. None means "not given": the store keeps what it had."""

    line: int
    address: str
    kind: str | None = None
    audience: str | None = None
    relationship: str | None = None
    language: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    job_title: str | None = None
    topics: tuple[str, ...] | None = None
    customer_categories: tuple[str, ...] | None = None
    consent: str | None = None
    consent_at: float | None = None
    consent_method: str | None = None
    consent_proof: str | None = None
    source_name: str | None = None
    source_type: str | None = None
    source_visibility: str | None = None
    collected_at: float | None = None
    last_interaction_at: float | None = None
    informed_at: float | None = None
    opt_out_offered: bool | None = None


_FIELDS = {name: i for i, name in enumerate(ContactRow._fields)}
_CONSENT, _CONSENT_AT = _FIELDS["consent"], _FIELDS["consent_at"]
_SOURCE_NAME, _SOURCE_TYPE = _FIELDS["source_name"], _FIELDS["source_type"]
_SOURCE_VISIBILITY = _FIELDS["source_visibility"]
# INTERFACE.md lists "granted|withdrawn|empty", "public|restricted|empty": the word itself is
# taken for a blank cell too
_MAY_SAY_EMPTY = frozenset({"consent", "source_visibility"})
_CONSENT_DETAILS = tuple((_FIELDS[name], name)
                         for name in ("consent_at", "consent_method", "consent_proof"))


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str


class HeaderError(ValueError):
    """The header row itself is unusable: nothing of the file is imported."""


@functools.lru_cache(maxsize=16384)  # a file holds few distinct days
def _timestamp(text: str) -> float | None:
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def parse_date(text: str, column: str, now: float) -> float:
    """ISO 8601 date or date-time -> unix seconds; a date alone is midnight UTC, and a time
    without an offset is UTC."""
    stamp = _timestamp(text)
    if stamp is None:
        raise ValueError(f"{column}: not an ISO 8601 date: {text!r}")
    if stamp > now + FUTURE_SLACK_SECONDS:
        raise ValueError(f"{column}: date in the future: {text!r}")
    if stamp < EARLIEST_DATE:
        raise ValueError(f"{column}: date before 1970, a placeholder rather than a date: "
                         f"{text!r} (leave the cell empty when it is not known)")
    return stamp


def _enum(text: str, column: str, allowed: tuple[str, ...]) -> str:
    value = text.lower()
    if value not in allowed:
        raise ValueError(f"{column}: unknown value {text!r} (expected {'|'.join(allowed)})")
    return value


def _text(text: str, column: str, limit: int = MAX_TEXT) -> str:
    if _CONTROL.search(text):
        raise ValueError(f"{column}: control characters (CR, LF, escape ...) are not allowed")
    if len(text) > limit:
        raise ValueError(f"{column}: longer than {limit} characters")
    return text


def _tags(text: str, column: str) -> tuple[str, ...]:
    tags: list[str] = []
    for item in text.split(";"):
        tag = _text(tag_key(item), column, MAX_TAG)
        if tag and tag not in tags:
            tags.append(tag)
    return tuple(tags)


def _language(text: str, column: str) -> str:
    if not _LANGUAGE.match(text):
        raise ValueError(f"{column}: not a BCP 47 tag: {text!r} (e.g. fr, en-GB)")
    primary, dash, rest = text.partition("-")
    return primary.lower() + dash + rest


def _choice(allowed: tuple[str, ...]) -> Callable[[str, str], str]:
    return lambda text, column: _enum(text, column, allowed)


# column -> parser(text, column); dates are handled apart (they need `now`)
_PARSERS: dict[str, Callable[[str, str], object]] = {
    "kind": _choice(KINDS), "audience": _choice(AUDIENCES),
    "relationship": _choice(RELATIONSHIPS), "consent": _choice(CONSENTS),
    "source_type": _choice(SOURCE_TYPES), "source_visibility": _choice(VISIBILITIES),
    "opt_out_offered": lambda text, column: _enum(text, column, ("true", "false")) == "true",
    "language": _language, "topics": _tags, "customer_categories": _tags,
    "consent_proof": lambda text, column: _text(text, column, MAX_PROOF),
}


Plan = list[tuple[int, str, "Callable[[str, str], object] | None"]]


def row_plan(names: list[str], now: float) -> Plan:
    """For each column of the header `names`: its ContactRow field, its name and its parser
    (None for the email, parsed apart). Made once per file, so that each cell costs one call."""
    def date(text: str, column: str) -> float:
        return parse_date(text, column, now)
    return [(_FIELDS["address"], name, None) if name == "email" else
            (_FIELDS[name], name, date if name in DATE_COLUMNS else _PARSERS.get(name, _text))
            for name in names]


def parse_row(line: int, email: int, plan: Plan, cells: list[str]) -> ContactRow:
    """A ContactRow from a row's cells (the email's at index `email`) under `row_plan`'s
    plan, or ValueError naming the column and the problem."""
    raw = cells[email]
    if not raw.strip():
        raise ValueError("email: missing")
    if _CONTROL.search(raw):
        raise ValueError("email: control characters (CR, LF, NUL ...) are not allowed")
    try:
        address = normalize_address(raw)
    except ValueError as exc:
        raise ValueError(f"email: {exc}") from None
    values: list[object] = [None] * len(_FIELDS)
    values[0], values[1] = line, address
    for (field, column, parse), text in zip(plan, cells, strict=True):
        if not text or parse is None:
            continue
        text = text.strip()
        if text and not (column in _MAY_SAY_EMPTY and text.lower() == "empty"):
            values[field] = parse(text, column)
    if values[_CONSENT] == "granted" and values[_CONSENT_AT] is None:
        raise ValueError("consent_at: required when consent is granted (GDPR 7(1): consent "
                         "must be provable)")
    if (values[_SOURCE_TYPE] is None) != (values[_SOURCE_NAME] is None):
        raise ValueError("source_name and source_type: give both or neither (GDPR 15(1)(g): "
                         "the source must be nameable)")
    if values[_SOURCE_VISIBILITY] is not None and values[_SOURCE_TYPE] is None:
        raise ValueError("source_visibility: given without a source")
    if values[_CONSENT] is None:
        for field, column in _CONSENT_DETAILS:
            if values[field] is not None:  # an update keeps the stored consent whole: the
                # cell would be dropped without a word (a new contact kept it)
                raise ValueError(f"{column}: given without consent (granted|withdrawn)")
    return ContactRow._make(values)


def check_header(header: list[str]) -> list[str]:
    """Column names, lower-cased; HeaderError for unknown, duplicate or missing columns."""
    names = [name.strip().lower().lstrip("\ufeff") for name in header]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        if "\t" in unknown[0]:
            raise HeaderError("the header is separated by tabs: save the file as CSV with "
                              "commas (or semicolons) between the columns")
        raise HeaderError(f"unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise HeaderError(f"column {duplicates[0]!r} appears twice")
    if "email" not in names:
        raise HeaderError("no 'email' column")
    return names


def sniff_delimiter(first_line: str) -> str:
    """',' as INTERFACE.md says; ';' when the header uses it (spreadsheets in French locales)."""
    return ";" if first_line.count(";") > first_line.count(",") else ","


@dataclass(frozen=True)
class LateWithdrawal:
    """A withdrawal of consent on a refused row (a duplicate in a chronological export: the
    grant, then its withdrawal; a row with another bad cell): refused as a row, but the
    withdrawal itself is applied after the file's other rows, never dropped. `row` holds the
    address, the consent and its date only."""

    row: ContactRow


def read_rows(lines: TextIO | Iterable[str],
              now: float) -> Iterator[ContactRow | RowError | LateWithdrawal]:
    """Every data row of a CSV file as a ContactRow or a RowError, streaming, then the
    withdrawals found on refused rows (duplicates, or a bad cell beside a readable
    withdrawal) as LateWithdrawal (each address once).

    Line numbers are physical lines of the file (a quoted field may span lines). A duplicate
    address is reported at its second occurrence. Raises HeaderError before any row when the
    header is unusable.
    """
    late: dict[int, ContactRow] = {}
    consents: dict[int, float] = {}
    yield from _read_rows(lines, now, late, consents)
    for key, row in late.items():
        # a refused row's withdrawal read before any valid row of its address: a later row's
        # consent newer than it prevails, as it does over a duplicate's (diff review: the
        # order of the rows decided it)
        first = consents.get(key)
        if first is None or first == -math.inf or first <= (
                now if row.consent_at is None else row.consent_at):
            yield LateWithdrawal(row)


def _read_rows(lines: TextIO | Iterable[str], now: float, late: dict[int, ContactRow],
               consents: dict[int, float]) -> Iterator[ContactRow | RowError]:
    iterator = iter(lines)
    first = next(iterator, None)
    if first is None:
        raise HeaderError("the file is empty")
    if "\r" in first.rstrip("\r\n"):
        raise HeaderError("the lines end with CR alone (classic Mac OS, some spreadsheet "
                          "exports): save the file with LF or CRLF line ends")
    delimiter = sniff_delimiter(first)
    quotes = 0  # '"' in the lines the reader has taken so far

    def counted(texts: Iterable[str]) -> Iterator[str]:
        nonlocal quotes
        for text in texts:
            quotes += text.count('"')
            yield text

    reader = csv.reader(counted(itertools.chain((first,), iterator)), delimiter=delimiter,
                        strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise HeaderError(f"line 1: {exc}") from None
    names = check_header(header)
    plan, email = row_plan(names, now), names.index("email")
    seen: dict[int, int] = {}  # 64-bit hash of the address -> first line (bounded memory)
    # (consents: the first valid row's consent, when it has one: a grant's date, or -inf for
    # a withdrawal)
    skipped = 0  # lines taken past the reader (the rest of an over-long quoted field)
    line = reader.line_num
    while True:
        start = line + 1
        quotes_before = quotes
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num + skipped
            if "field limit" in str(exc) and (quotes - quotes_before) % 2 == 0:
                # no quote left open in the lines read: the long field ended on them, and
                # the reader starts afresh on the next line
                yield RowError(start, f"not valid CSV: a field longer than "
                               f"{FIELD_LIMIT // 1024} KiB")
                continue
            if "field limit" in str(exc):
                # the csv module gives up inside the quoted field and would start again on
                # the next line, which is still that field's text: the rest of the field is
                # taken here, up to the line where its quotes balance, and the reader goes on
                # after it
                for text in iterator:
                    quotes += text.count('"')
                    skipped += 1
                    line += 1
                    if (quotes - quotes_before) % 2 == 0:
                        break
                else:
                    yield RowError(start, f"not valid CSV: a field longer than "
                                   f"{FIELD_LIMIT // 1024} KiB whose quote is never closed: "
                                   f"lines {start}-{line} are one field; nothing after line "
                                   f"{start} is imported")
                    return
                yield RowError(start, f"not valid CSV: a field longer than "
                               f"{FIELD_LIMIT // 1024} KiB (lines {start}-{line})")
                continue
            if "unexpected end of data" in str(exc) and line > start:
                yield RowError(start, f"not valid CSV: a quote opened on this line is never "
                               f"closed, so lines {start}-{line} were read as one field; none "
                               "of them is imported")
                continue
            if "new-line character seen in unquoted field" in str(exc):
                # (Python's own words suggest "universal-newline mode", which means nothing
                # to an operator)
                yield RowError(start, "not valid CSV: a carriage return (CR) alone inside "
                               "the line, outside quotes: two rows run together, or a "
                               "spreadsheet's line break in a cell; neither is imported. "
                               "Save the file with LF or CRLF line ends")
                continue
            yield RowError(start, f"not valid CSV: {exc}")
            continue
        line = reader.line_num + skipped
        if not cells or (not cells[0].strip() and all(not c.strip() for c in cells)):
            continue  # blank line
        if len(cells) != len(names):
            yield RowError(start, f"{len(cells)} fields, the header has {len(names)}")
            continue
        joined = "".join(cells)
        if not joined.isascii() and _UNDECODABLE.search(joined):
            yield RowError(start, "not valid UTF-8 (a spreadsheet's Latin-1 or Windows-1252 "
                           "export? save it as 'CSV UTF-8', or convert it: iconv -f cp1252 "
                           "-t utf-8)")
            continue
        try:
            row = parse_row(start, email, plan, cells)
        except ValueError as exc:
            withdrawal = _withdrawal_of(start, email, plan, cells)
            if withdrawal is None:
                yield RowError(start, str(exc))
                continue
            key = hash(person_form(withdrawal.address))
            yield RowError(start, str(exc) + _late_withdrawal(
                withdrawal, consents.get(key), late, key, now))
            continue
        key = hash(person_form(row.address))  # Jane@ and jane@: one person, one row
        if key in seen:
            reason = f"duplicate: {row.address} already appears on line {seen[key]}"
            if row.consent == "withdrawn":
                reason += _late_withdrawal(row, consents.get(key), late, key, now)
            yield RowError(start, reason)
            continue
        seen[key] = start
        if row.consent == "withdrawn":
            consents[key] = -math.inf
        elif row.consent is not None:
            consents[key] = now if row.consent_at is None else row.consent_at
        yield row


def _withdrawal_of(line: int, email: int, plan: Plan, cells: list[str]) -> ContactRow | None:
    """The withdrawal of consent a refused row states, when its address and its consent cell
    can be read: another bad cell (a date in a local format, a source without its type) lost
    the person's objection with the row (ops review; an objection is never dropped). Its
    date when that can be read, else the time of the import."""
    try:
        address = normalize_address(cells[email])
    except ValueError:
        return None
    values: dict[int, object] = {}
    for (field, column, parse), text in zip(plan, cells, strict=True):
        if field in (_CONSENT, _CONSENT_AT) and parse is not None and text.strip():
            try:
                values[field] = parse(text.strip(), column)
            except ValueError:
                continue
    if values.get(_CONSENT) != "withdrawn":
        return None
    when = values.get(_CONSENT_AT)
    return ContactRow(line, address, consent="withdrawn",
                      consent_at=when if isinstance(when, float) else None)


def _late_withdrawal(row: ContactRow, first: float | None,
                     late: dict[int, ContactRow], key: int, now: float) -> str:
    """Keep the withdrawal of a duplicate row in `late`, unless the first row's consent
    (a grant's date, -inf for a withdrawal) supersedes it; the words the refusal adds."""
    when = now if row.consent_at is None else row.consent_at
    if first == -math.inf:
        return ""  # the first row withdrew already
    if first is not None and first > when:
        return "; its withdrawal is older than the consent on that line and is not applied"
    unless = "" if first is not None else (
        ", unless a later row of this address gives a newer consent")
    kept = late.get(key)
    if kept is None or (now if kept.consent_at is None else kept.consent_at) < when:
        late[key] = ContactRow(row.line, row.address, consent="withdrawn",
                               consent_at=row.consent_at)
    return ("; its withdrawal of consent is applied all the same (an objection is never "
            f"dropped){unless}")

