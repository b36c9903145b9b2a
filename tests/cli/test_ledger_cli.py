"""`gateway contacts | suppress | check | quarantine`, driven as a subprocess on a real store."""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CSV_HEADER, STRONG_PASSWORD, gateway_cli, wait_until
from ledger_cases import ACCOUNT_PRODUCTS, ACCOUNT_TOPICS, CASES, UNKNOWN, write_cases_csv


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "gateway.db"}"\n')
    added = gateway_cli(path, "accounts", "add", "crm", "--from-domain", "example.com",
                        "--topics", ACCOUNT_TOPICS, "--product-categories", ACCOUNT_PRODUCTS,
                        "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    return path


def count(config: Path, table: str) -> int:
    with sqlite3.connect(config.parent / "gateway.db") as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def test_check_gives_every_case_of_the_rule_book(config: Path, tmp_path: Path):
    imported = gateway_cli(config, "contacts", "import", str(write_cases_csv(tmp_path / "c.csv")))
    assert imported.returncode == 0, imported.stderr
    assert f"imported {len(CASES)} rows ({len(CASES)} new, 0 updated), 0 refused" in \
        imported.stdout
    for case in (*CASES, UNKNOWN):
        result = gateway_cli(config, "check", "--account", "crm", "--to", case.email, "--json")
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert (answer["decision"], answer["rule"]) == (case.decision, case.rule), case.name
        assert case.reason_part in answer["reason"], case.name
    text = gateway_cli(config, "check", "--account", "crm", "--to", "prospect@b2c.example")
    assert text.stdout.startswith("reject R10: no prior consent for B2C prospecting")
    m1 = gateway_cli(config, "check", "--account", "crm", "--to", "consented@b2c.example",
                     "--from", "ceo@elsewhere.example", "--json")
    assert json.loads(m1.stdout)["rule"] == "M1"
    # the envelope sender, in MAIL FROM's words (it said "From header"; ops review)
    assert json.loads(m1.stdout)["reason"] == "Sender address not allowed for this account"
    unknown = gateway_cli(config, "check", "--account", "nobody", "--to", "a@example.com")
    assert unknown.returncode == 1 and "nobody" in unknown.stderr


def test_enrichment_reimport_does_not_renew_an_expired_address(config: Path, tmp_path: Path):
    """KASPR: a vendor's fresh data about an old contact is not a new collection."""
    old = tmp_path / "old.csv"
    old.write_text("email,audience,topics,source_name,source_type,collected_at\n"
                   "old@b2b.example,b2b,crm,Trade fair,direct,2021-03-01\n")
    enrich = tmp_path / "enrich.csv"
    enrich.write_text("email,job_title,source_name,source_type,collected_at\n"
                      "old@b2b.example,VP Engineering,Data vendor,import,2026-11-01\n")
    for path in (old, enrich):
        assert gateway_cli(config, "contacts", "import", str(path)).returncode == 0
    answer = json.loads(gateway_cli(config, "check", "--account", "crm", "--to",
                                    "old@b2b.example", "--json").stdout)
    assert answer["rule"] == "R4", answer


def test_a_dry_run_on_a_new_machine_creates_no_store_and_no_key(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "store" / "gateway.db"}"\n')
    csv = tmp_path / "c.csv"
    csv.write_text("email,kind,audience,source_name,source_type\n"
                   "a@example.com,person,b2b,Fair,direct\nb@example.com,person,b2b,Fair,direct\n"
                   "c@example.com,person,b2x,Fair,direct\n")
    before = sorted(tmp_path.rglob("*"))
    dry = gateway_cli(config, "contacts", "import", "--dry-run", str(csv))
    assert dry.returncode == 1 and "would import 2 rows (2 new, 0 updated), 1 refused" in \
        dry.stdout, dry.stdout + dry.stderr
    assert ":4: audience" in dry.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no store, no key, no folder


def test_bad_rows_are_reported_by_line_and_good_rows_import(config: Path, tmp_path: Path):
    csv = tmp_path / "mixed.csv"
    csv.write_bytes(
        b"email,kind,audience,collected_at,source_name,source_type\n"
        b"good1@example.com,person,b2b,2026-01-01,Fair,direct\n"
        b"bad-date@example.com,person,b2b,2026-13-45,Fair,direct\n"
        b"bad-enum@example.com,robot,b2b,2026-01-01,Fair,direct\n"
        b'"crlf@example.com\r\nBcc: victim@example.com",person,b2b,,Fair,direct\n'
        b"good1@example.com,person,b2b,2026-01-01,Fair,direct\n"
        b"bad-utf8-\xff@example.com,person,b2b,,Fair,direct\n"
        b"good2@example.com,role,b2b,,Fair,direct\n")
    dry = gateway_cli(config, "contacts", "import", "--dry-run", str(csv))
    assert dry.returncode == 1 and "would import 2 rows" in dry.stdout
    assert count(config, "contacts") == 0  # --dry-run writes nothing
    result = gateway_cli(config, "contacts", "import", str(csv))
    assert result.returncode == 1  # some rows were refused
    assert "imported 2 rows (2 new, 0 updated), 5 refused" in result.stdout
    lines = result.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{csv}:{n}" for n in (3, 4, 5, 7, 8)]
    assert "collected_at: not an ISO 8601 date" in lines[0]
    assert "kind: unknown value 'robot'" in lines[1]
    assert "email: control characters" in lines[2]
    assert "duplicate" in lines[3] and "line 2" in lines[3]
    assert "not valid UTF-8" in lines[4] and "iconv -f cp1252" in lines[4]
    assert count(config, "contacts") == 2 and count(config, "sources") == 2
    assert "victim" not in (config.parent / "gateway.db").read_bytes().decode("latin-1")


def test_a_withdrawal_on_a_duplicate_row_is_applied_all_the_same(config: Path,
                                                                  tmp_path: Path):
    """A chronological export lists the grant, then its withdrawal: the second row was
    refused as a duplicate and the grant imported, so R6 allowed a person who had objected.
    The withdrawal is applied after the file's rows; a withdrawal older than the grant on the
    first row is not, and a first row that withdrew stays withdrawn."""
    csv = tmp_path / "log.csv"
    csv.write_text(
        "email,consent,consent_at,consent_method,source_name,source_type,collected_at\n"
        "ann@example.net,granted,2026-01-01,web form,form,direct,2026-01-01\n"      # 2
        "bob@example.net,withdrawn,2026-03-01,,form,direct,2026-01-01\n"            # 3
        "cid@example.net,granted,2026-06-01,web form,form,direct,2026-01-01\n"      # 4
        "ann@example.net,withdrawn,2026-06-01,,form,direct,2026-01-01\n"            # 5
        "bob@example.net,granted,2026-01-01,web form,form,direct,2026-01-01\n"      # 6
        "cid@example.net,withdrawn,2026-02-01,,form,direct,2026-01-01\n")           # 7
    summary = ("3 rows (3 new, 0 updated), 3 refused, 1 withdrawal of consent from refused "
               "rows {}applied, 2 newly suppressed")
    dry = gateway_cli(config, "contacts", "import", "--dry-run", str(csv))
    assert "would import " + summary.format("would be ") in dry.stdout, dry.stdout
    result = gateway_cli(config, "contacts", "import", str(csv))
    assert "imported " + summary.format("") in result.stdout, result.stdout
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "line 2; its withdrawal of consent is applied all the same" in lines[0]
    assert lines[1].endswith("already appears on line 3")
    assert "older than the consent on that line and is not applied" in lines[2]
    rules = {who: json.loads(gateway_cli(config, "check", "--account", "crm", "--to",
                                         f"{who}@example.net", "--json").stdout)["rule"]
             for who in ("ann", "bob", "cid")}
    assert rules == {"ann": "R1", "bob": "R1", "cid": "R6"}
    shown = gateway_cli(config, "contacts", "show", "ann@example.net").stdout
    assert "withdrawn" in shown and "2026-06-01" in shown
    # erased since: said once, at its first row, and the erasure's suppression stands
    assert gateway_cli(config, "subject", "erase", "ann@example.net", "--yes").returncode == 0
    again = gateway_cli(config, "contacts", "import", str(csv))
    assert again.stderr.count("ann@example.net was erased") == 1, again.stderr
    assert "imported 2 rows (0 new, 2 updated), 4 refused, 0 newly suppressed" in again.stdout


def test_unknown_column_imports_nothing(config: Path, tmp_path: Path):
    csv = tmp_path / "extra.csv"
    csv.write_text("email,kind,shoe_size\na@example.com,person,44\n")
    result = gateway_cli(config, "contacts", "import", str(csv))
    assert result.returncode == 1
    assert "unknown column 'shoe_size'" in result.stderr and "nothing imported" in \
        result.stderr
    assert count(config, "contacts") == 0


def test_show_prints_facts_sources_and_events(config: Path, tmp_path: Path):
    csv = tmp_path / "one.csv"
    csv.write_text(CSV_HEADER + "\n" + "jane@example.com,person,b2c,prospect,fr,Jane,Doe,"
                   ":thumbs_up: lead,,,"
                   "granted,2026-01-05,web form,form v3 from 203.0.113.9,Newsletter form,"
                   "direct,,2026-01-05,,,\n")
    assert gateway_cli(config, "contacts", "import", str(csv)).returncode == 0
    shown = json.loads(gateway_cli(config, "contacts", "show", "jane@example.com",
                                   "--json").stdout)
    assert shown["facts"]["first_name"] == "Jane" and shown["suppressed"] is None
    assert shown["sources"][0]["name"] == "Newsletter form"
    assert shown["events"][0]["proof"] == "form v3 from 203.0.113.9"
    text = subprocess.run(  # dates in UTC, saying so, whatever the operator's time zone
        [sys.executable, "-m", "gateway", "--config", str(config), "contacts", "show",
         "jane@example.com"], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "TZ": "America/New_York"}).stdout
    assert "2026-01-05 00:00Z" in text and "2026-01-04" not in text
    assert "Newsletter form" in text and "consent" in text
    assert ":thumbs_up: lead" in text  # as imported, not as rich's emoji shortcode
    # a reason given by someone else (a webhook's, an operator's paste) is shown without
    # its escape sequences
    assert gateway_cli(config, "suppress", "add", "jane@example.com", "--reason",
                       "\x1b]0;OWNED\x07\x1b[2Jcalled us").returncode == 0
    text = gateway_cli(config, "contacts", "show", "jane@example.com").stdout
    assert "called us" in text and "\x1b" not in text
    missing = gateway_cli(config, "contacts", "show", "nobody@example.com")
    assert missing.returncode == 1 and "not in the ledger" in missing.stderr


def test_suppress_add_list_remove(config: Path, tmp_path: Path):
    csv = tmp_path / "one.csv"
    csv.write_text("email,kind,source_name,source_type\nrole@example.com,role,Site,direct\n")
    assert gateway_cli(config, "contacts", "import", str(csv)).returncode == 0

    def rule() -> str:
        return json.loads(gateway_cli(config, "check", "--account", "crm", "--to",
                                      "role@example.com", "--json").stdout)["rule"]

    assert rule() == "R5"
    added = gateway_cli(config, "suppress", "add", "role@example.com", "--reason", "phone call")
    assert added.returncode == 0 and "suppressed" in added.stdout
    assert rule() == "R1"
    listed = json.loads(gateway_cli(config, "suppress", "list", "--json").stdout)
    assert [(e["address"], e["channel"]) for e in listed] == [("role@example.com", "manual")]
    assert "1 suppressed address " in gateway_cli(config, "suppress", "list").stdout  # (centred)
    shown = json.loads(gateway_cli(config, "contacts", "show", "role@example.com",
                                   "--json").stdout)
    assert shown["suppressed"]["channel"] == "manual"
    assert shown["events"][-1]["kind"] == "objection"
    assert gateway_cli(config, "suppress", "remove", "role@example.com").returncode == 0
    assert rule() == "R5"
    again = gateway_cli(config, "suppress", "remove", "role@example.com")
    assert again.returncode == 1 and "not on the suppression list" in again.stderr
    bad = gateway_cli(config, "suppress", "add", "not an address")
    assert bad.returncode == 2 and "e-mail address" in bad.stderr  # usage, as check


def test_quarantine_list_is_empty_json_on_a_new_store(config: Path):
    result = gateway_cli(config, "quarantine", "list", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []


def test_retention_run_purges_what_r4_says_has_expired(config: Path, tmp_path: Path):
    csv = tmp_path / "ages.csv"
    csv.write_text(
        "email,consent,consent_at,source_name,source_type,collected_at,last_interaction_at\n"
        "old@example.com,,,Fair,direct,2020-01-01,\n"
        "active@example.com,,,Fair,direct,2020-01-01,2026-06-01\n"
        "new@example.com,,,Fair,direct,2026-06-01,\n"
        "gone@example.com,withdrawn,2020-02-01,Fair,direct,2020-01-01,\n")
    imported = gateway_cli(config, "contacts", "import", str(csv))
    assert imported.returncode == 0
    # the row past its period by its own dates is named (nothing said it: kept to be purged)
    assert (f"{csv}:2: note: old@example.com: its retention period ended on 2022-12-31"
            in imported.stderr)
    assert "note: 1 row is past the retention period" in imported.stderr
    assert "active@" not in imported.stderr and "gone@" not in imported.stderr
    dry = gateway_cli(config, "retention", "run", "--dry-run", "--json")
    assert json.loads(dry.stdout) == {"dry_run": True,
                                      "purged": ["old@example.com", "gone@example.com"]}
    assert count(config, "contacts") == 4
    done = gateway_cli(config, "retention", "run")
    assert done.returncode == 0 and "2 expired ledger entries purged" in done.stdout
    assert ("with 0 sent or failed copies, 0 waiting copies withdrawn, 0 decided quarantine rows, "
            "0 delivered "
            "notifications, 0 raw messages") in done.stdout  # none were sent: tests/store
    assert count(config, "contacts") == 2 and count(config, "suppression") == 1
    # the objection outlives the data: the purged address is still refused, by R1
    answer = json.loads(gateway_cli(config, "check", "--account", "crm", "--to",
                                    "gone@example.com", "--json").stdout)
    assert answer["rule"] == "R1"
    assert gateway_cli(config, "contacts", "show", "old@example.com").returncode == 1


def test_a_purged_address_imported_again_keeps_its_retention_clock(config: Path,
                                                                    tmp_path: Path):
    """KASPR: a data vendor's file bringing back an address R4 purged, with the file's own
    date, does not start its retention over; a later interaction of the person does."""
    old = tmp_path / "old.csv"
    old.write_text("email,audience,topics,source_name,source_type,collected_at,"
                   "last_interaction_at\n"
                   "cto@b2b.example,b2b,crm,Fair,direct,2020-01-01,\n"
                   "cfo@b2b.example,b2b,crm,Fair,direct,2020-01-01,2021-03-01\n"
                   "ceo@b2b.example,b2b,crm,Fair,direct,2020-01-01,\n")
    assert gateway_cli(config, "contacts", "import", str(old)).returncode == 0
    assert "3 expired ledger entries purged" in gateway_cli(config, "retention", "run").stdout
    with sqlite3.connect(config.parent / "gateway.db") as conn:
        tombstones = conn.execute("SELECT * FROM retention_purges").fetchall()
    assert len(tombstones) == 3 and all(len(row) == 3 for row in tombstones)  # no address
    vendor = tmp_path / "vendor.csv"
    vendor.write_text("email,audience,topics,source_name,source_type,collected_at,"
                      "last_interaction_at\n"
                      "cto@b2b.example,b2b,crm,Vendor,import,2026-11-01,\n"
                      "cfo@b2b.example,b2b,crm,Vendor,import,2026-11-01,\n"
                      "ceo@b2b.example,b2b,crm,Vendor,import,2026-11-01,2026-10-15\n"
                      "new@b2b.example,b2b,crm,Vendor,import,2026-11-01,\n")
    imported = gateway_cli(config, "contacts", "import", str(vendor))
    assert imported.returncode == 0 and "3 new contacts were purged" in imported.stdout

    def rule(address: str) -> str:
        return json.loads(gateway_cli(config, "check", "--account", "crm", "--to", address,
                                      "--json").stdout)["rule"]
    assert rule("cto@b2b.example") == "R4"  # from 2020-01-01, not the vendor's date
    assert rule("cfo@b2b.example") == "R4"  # from its last interaction, 2021-03-01
    assert rule("ceo@b2b.example") == "R8"  # the person acted in 2026: a fresh clock
    assert rule("new@b2b.example") == "R8"  # never purged: the file's date


def test_requests_are_tracked_to_their_legal_due_date(config: Path):
    from gateway.store.requests import one_month_later

    def stamp(day: str) -> float:
        return datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC).timestamp()

    assert one_month_later(stamp("2026-01-31")) == stamp("2026-02-28")
    assert one_month_later(stamp("2028-01-31")) == stamp("2028-02-29")
    assert one_month_later(stamp("2026-12-15")) == stamp("2027-01-15")
    today = datetime.date.today()
    old = (today - datetime.timedelta(days=27)).isoformat()
    opened = gateway_cli(config, "requests", "open", "Jane@Example.COM", "--kind", "access",
                         "--received", old)
    assert opened.returncode == 0 and "for Jane@example.com opened" in opened.stdout
    assert gateway_cli(config, "requests", "open", "x@example.com", "--kind",
                       "erasure").returncode == 0
    assert gateway_cli(config, "requests", "open", "bad", "--kind", "access").returncode == 2
    assert gateway_cli(config, "requests", "open", "x@example.com", "--kind",
                       "other").returncode == 2
    future = (today + datetime.timedelta(days=400)).isoformat()  # a typo of the year
    typo = gateway_cli(config, "requests", "open", "y@example.com", "--kind", "access",
                       "--received", future)
    assert typo.returncode == 2 and "in the future" in typo.stderr
    soon = json.loads(gateway_cli(config, "requests", "list", "--due-within", "7",
                                  "--json").stdout)
    assert [(r["address"], r["kind"]) for r in soon] == [("Jane@example.com", "access")]
    everything = json.loads(gateway_cli(config, "requests", "list", "--json").stdout)
    assert len(everything) == 2
    assert gateway_cli(config, "requests", "close", str(soon[0]["id"]), "--note",
                       "export sent by letter").returncode == 0
    assert gateway_cli(config, "requests", "close", str(soon[0]["id"])).returncode == 1
    assert len(json.loads(gateway_cli(config, "requests", "list", "--json").stdout)) == 1


def test_an_objection_request_is_applied_when_recorded(config: Path, tmp_path: Path):
    """GDPR 21(3): an objection to prospecting is honoured at once. It was only tracked to a
    due date a month away, and closing it applied nothing: the person kept being mailed."""
    csv = tmp_path / "c.csv"
    csv.write_text("email,consent,consent_at,source_name,source_type,collected_at\n"
                   "jose@example.es,granted,2026-02-01,form,direct,2026-02-01\n"
                   "ana@example.es,granted,2026-02-01,form,direct,2026-02-01\n")
    assert gateway_cli(config, "contacts", "import", str(csv)).returncode == 0

    def decision(address: str) -> tuple[str, str]:
        found = json.loads(gateway_cli(config, "check", "--account", "crm", "--to", address,
                                       "--json").stdout)
        return found["decision"], found["rule"]

    assert decision("jose@example.es") == ("allow", "R6")
    opened = gateway_cli(config, "requests", "open", "Jose@example.es", "--kind", "objection")
    assert opened.returncode == 0 and "suppressed (R1)" in opened.stdout, opened.stdout
    assert decision("jose@example.es") == ("reject", "R1")
    assert json.loads(gateway_cli(config, "requests", "list", "--json").stdout) == []
    with sqlite3.connect(config.parent / "gateway.db") as conn:
        [(closed, note)] = conn.execute("SELECT closed_at, note FROM requests").fetchall()
        assert closed is not None and note.startswith("applied when recorded")
        # one recorded open, as every objection request was before: closing it applies it
        conn.execute("INSERT INTO requests (address, kind, received_at, due_at)"
                     " VALUES ('ana@example.es', 'objection', 1, 2)")
    [old] = json.loads(gateway_cli(config, "requests", "list", "--json").stdout)
    closed = gateway_cli(config, "requests", "close", str(old["id"]))
    assert closed.returncode == 0 and "ana@example.es suppressed" in closed.stdout
    assert decision("ana@example.es") == ("reject", "R1")


def test_withdrawals_imported_count_as_objections_once(config: Path, tmp_path: Path):
    csv = tmp_path / "w.csv"
    csv.write_text("email,consent,consent_at\nann@example.com,withdrawn,2026-02-01\n"
                   "bob@example.com,granted,2026-02-01\n")
    for _ in range(2):  # the second import finds ann suppressed already
        assert gateway_cli(config, "contacts", "import", str(csv)).returncode == 0
    assert gateway_cli(config, "suppress", "add", "bob@example.com").returncode == 0
    with sqlite3.connect(config.parent / "gateway.db") as conn:
        counts = dict(conn.execute("SELECT channel, total FROM objection_counts"))
    assert counts == {"import": 1, "manual": 1}


def test_lifting_a_withdrawal_leaves_the_contact_without_consent(config: Path, tmp_path: Path):
    csv = tmp_path / "w.csv"
    csv.write_text("email,audience,consent,consent_at,source_name,source_type,collected_at\n"
                   "jane@b2c.example,b2c,withdrawn,2026-02-01,form,direct,2026-01-01\n")
    assert gateway_cli(config, "contacts", "import", str(csv)).returncode == 0

    def rule() -> str:
        return json.loads(gateway_cli(config, "check", "--account", "crm", "--to",
                                      "jane@b2c.example", "--json").stdout)["rule"]
    assert rule() == "R1"
    lifted = gateway_cli(config, "suppress", "remove", "jane@b2c.example")
    assert lifted.returncode == 0 and "still records its consent as withdrawn" in lifted.stdout
    assert rule() == "R10"  # off the list, and still no consent


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited (whoever adopted it may not have reaped it yet)


def test_an_import_killed_half_way_leaves_no_writer_behind(config: Path, tmp_path: Path):
    """The import's writer is a forked child: it must end with its parent (it waited for a
    chunk for ever, holding the store open)."""
    fifo = tmp_path / "contacts.csv"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config),
                             "contacts", "import", str(fifo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with fifo.open("w") as feed:  # the file keeps coming: the import is half-way
            feed.write(CSV_HEADER + "\n")
            feed.flush()

            def writer() -> int | None:
                for stat in Path("/proc").glob("[0-9]*/stat"):
                    try:
                        fields = stat.read_text().rsplit(") ", 1)[1].split()
                    except (OSError, IndexError):
                        continue
                    if int(fields[1]) == proc.pid:
                        return int(stat.parent.name)
                return None
            child = wait_until(writer, what="the import's writer process")
            proc.kill()
            proc.wait(10)
        wait_until(lambda: not _alive(child), timeout=10, what="the writer's exit")
    finally:
        proc.kill()


def test_a_request_is_extended_once_within_its_first_month(config: Path):
    """GDPR 12(3): two further months where necessary, decided and told within the first:
    there was no way to record it (the request stayed OVERDUE, or was closed falsely)."""
    import datetime

    today = datetime.datetime.now(datetime.UTC).date()
    old = (today - datetime.timedelta(days=40)).isoformat()
    assert gateway_cli(config, "requests", "open", "a@example.com", "--kind", "access"
                       ).returncode == 0
    assert gateway_cli(config, "requests", "open", "b@example.com", "--kind", "access",
                       "--received", old).returncode == 0
    extended = gateway_cli(config, "requests", "extend", "1", "--reason", "500 requests")
    assert extended.returncode == 0, extended.stderr
    [first, late] = sorted(json.loads(gateway_cli(config, "requests", "list", "--json"
                                                  ).stdout), key=lambda r: r["id"])
    assert 88 * 86400 <= first["due_at"] - first["received_at"] <= 93 * 86400  # 3 months
    assert "500 requests" in first["note"]
    assert first["overdue"] is False and late["overdue"] is True  # as report --json has it
    again = gateway_cli(config, "requests", "extend", "1", "--reason", "more")
    assert again.returncode == 1 and "once" in again.stderr
    too_late = gateway_cli(config, "requests", "extend", str(late["id"]), "--reason", "x")
    assert too_late.returncode == 1 and "within the first month" in too_late.stderr
    assert gateway_cli(config, "requests", "close", "1", "--note", "answered").returncode == 0


def test_an_import_names_the_languages_that_have_no_notice(config: Path, tmp_path: Path):
    """A Portuguese contact's copies carry the default language's notice; nothing said so
    (the person must be informed in a language they understand: KASPR)."""
    csv = tmp_path / "langs.csv"
    csv.write_text("email,language,consent,consent_at,consent_method,source_name,source_type\n"
                   "a@example.pt,pt,granted,2026-01-05,web form,form,direct\n"
                   "b@example.pt,pt-BR,granted,2026-01-05,web form,form,direct\n"
                   "c@example.fr,fr-CA,granted,2026-01-05,web form,form,direct\n")
    result = gateway_cli(config, "contacts", "import", str(csv))
    assert result.returncode == 0, result.stderr
    assert "note: 2 contacts have a language with no notice template (pt: 1, pt-BR: 1)" in \
        result.stderr and "their notices will be in en (the default" in result.stderr
    assert "fr" not in result.stderr.split("(", 1)[1].split(")", 1)[0]


def test_a_reimport_in_another_letter_case_updates_the_contact_held(config: Path,
                                                                     tmp_path: Path):
    """KASPR: a re-import written jane.doe@ made a second contact beside Jane.Doe@, its
    retention clock started on the import day: the expired person mailable for 3 more
    years. It updates the contact held; a RCPT or check in either case finds it."""
    first = tmp_path / "first.csv"
    first.write_text("email,audience,topics,source_name,source_type,collected_at\n"
                     "Jane.Doe@acme.example,b2b,crm,Trade fair,direct,2021-03-01\n")
    again = tmp_path / "again.csv"
    again.write_text("email,audience,topics,job_title,source_name,source_type\n"
                     "jane.doe@acme.example,b2b,crm,VP Sales,Data vendor,import\n")
    assert gateway_cli(config, "contacts", "import", str(first)).returncode == 0
    result = gateway_cli(config, "contacts", "import", str(again))
    assert result.returncode == 0, result.stderr
    assert "(0 new, 1 updated)" in result.stdout
    assert count(config, "contacts") == 1
    for written in ("jane.doe@acme.example", "Jane.Doe@acme.example", "JANE.DOE@acme.example"):
        answer = json.loads(gateway_cli(config, "check", "--account", "crm", "--to", written,
                                        "--json").stdout)
        assert answer["rule"] == "R4", (written, answer)
    # an objection written in another case is the held contact's (the one-click link of a
    # copy sent to jane.doe@ objects as jane.doe@): its history, and the access export, say it
    assert gateway_cli(config, "suppress", "add", "JANE.DOE@acme.example").returncode == 0
    shown = json.loads(gateway_cli(config, "contacts", "show", "jane.doe@acme.example",
                                   "--json").stdout)
    assert [e["kind"] for e in shown["events"]].count("objection") == 1, shown["events"]
    assert shown["facts"]["job_title"] == "VP Sales"
    assert shown["address"] == "Jane.Doe@acme.example"  # as first written
    # one file with both cases: one person, the second row a duplicate
    both = tmp_path / "both.csv"
    both.write_text("email,source_name,source_type\nA.B@acme.example,f,direct\n"
                    "a.b@acme.example,f,direct\n")
    result = gateway_cli(config, "contacts", "import", str(both))
    assert "duplicate" in result.stderr and ":3:" in result.stderr
    assert count(config, "contacts") == 2


def test_a_consent_imported_again_without_its_method_keeps_the_method(config: Path,
                                                                      tmp_path: Path):
    """A consent recorded as "accepted T&C" (not consent, R10) became valid (R6) when a
    re-export without the method column was imported: the empty cell erased the method
    and the proof instead of keeping them, as the import's help says of empty cells."""
    first = tmp_path / "first.csv"
    first.write_text("email,consent,consent_at,consent_method,consent_proof,source_name,"
                     "source_type,collected_at\npt@b2c.example,granted,2026-01-05T10:00:00Z,"
                     "accepted T&C,cgv v2,Shop,direct,2026-01-05\n")
    again = tmp_path / "again.csv"
    again.write_text("email,consent,consent_at\npt@b2c.example,granted,2026-01-05T10:00:00Z\n")
    assert gateway_cli(config, "contacts", "import", str(first)).returncode == 0
    before = json.loads(gateway_cli(config, "check", "--account", "crm", "--to",
                                    "pt@b2c.example", "--json").stdout)
    assert gateway_cli(config, "contacts", "import", str(again)).returncode == 0
    after = json.loads(gateway_cli(config, "check", "--account", "crm", "--to",
                                   "pt@b2c.example", "--json").stdout)
    assert (before["decision"], before["rule"]) == (after["decision"], after["rule"]) \
        == ("reject", "R10")
    with sqlite3.connect(config.parent / "gateway.db") as conn:
        assert conn.execute("SELECT consent_method, consent_proof FROM contacts").fetchone() \
            == ("accepted T&C", "cgv v2")
    # another consent (a later date) is not proved by the earlier one's proof
    later = tmp_path / "later.csv"
    later.write_text("email,consent,consent_at\npt@b2c.example,granted,2026-03-01T10:00:00Z\n")
    assert gateway_cli(config, "contacts", "import", str(later)).returncode == 0
    with sqlite3.connect(config.parent / "gateway.db") as conn:
        assert conn.execute("SELECT consent_method, consent_proof FROM contacts").fetchone() \
            == (None, None)


def test_tables_on_a_narrow_terminal_wrap_instead_of_cutting(config: Path, tmp_path: Path):
    """On an ssh terminal of 80 columns `queue list`, `accounts list` and the other tables
    cut addresses, domains and ids with "…": the row to act on could not be read."""
    import pty

    domain = "a-rather-long-sending-domain-name.example"
    assert gateway_cli(config, "accounts", "add", "newsletter", "--from-domain", domain,
                       "--password-stdin", stdin=STRONG_PASSWORD + "\n").returncode == 0
    main, child = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(config), "accounts", "list"],
            stdout=child, stderr=subprocess.PIPE, timeout=60,
            env={**os.environ, "COLUMNS": "60", "LINES": "50", "TERM": "xterm"})
        os.close(child)
        child = -1
        output = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child's end is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)
    assert process.returncode == 0, process.stderr
    text = output.decode()
    assert "…" not in text, text
    domains = "".join(line.split("│")[2].strip() for line in text.splitlines()
                      if line.startswith("│") and line.count("│") > 2)  # the column, read down
    assert domain in domains, text


def test_a_withdrawal_on_a_row_refused_for_another_cell_is_applied_all_the_same(
        config: Path, tmp_path: Path):
    """A date in a local format, or a source without its type, refused the whole row, and
    the person's withdrawal with it: the address was never suppressed (ops review)."""
    csv = tmp_path / "w.csv"
    csv.write_text(
        "email,consent,consent_at,source_type,source_name,collected_at\n"
        "w1@example.com,withdrawn,2026-01-01,direct,form,31/12/2025\n"           # 2
        "w2@example.com,withdrawn,01/02/2026,direct,,2026-01-01\n"              # 3
        "ok@example.com,granted,2026-01-01,direct,form,2026-01-01\n"            # 4
        "bad@example.com,granted,2026-01-01,direct,form,31/12/2025\n")          # 5
    result = gateway_cli(config, "contacts", "import", str(csv))
    assert result.returncode == 1
    assert ("1 row (1 new, 0 updated), 3 refused, 2 withdrawals of consent from refused "
            "rows applied, 2 newly suppressed") in result.stdout, result.stdout
    lines = result.stderr.splitlines()
    assert "w.csv:2: collected_at" in lines[0]
    assert "its withdrawal of consent is applied all the same" in lines[0]
    assert "w.csv:3:" in lines[1] and "applied all the same" in lines[1]
    assert "w.csv:5:" in lines[2] and "applied" not in lines[2]  # a grant is not salvaged
    listed = json.loads(gateway_cli(config, "suppress", "list", "--json").stdout)
    assert len(listed) == 2
    for address in ("w1@example.com", "w2@example.com"):
        shown = gateway_cli(config, "contacts", "show", address)
        assert "suppressed" in shown.stdout.lower(), shown.stdout
    shown = gateway_cli(config, "contacts", "show", "bad@example.com")
    assert shown.returncode == 1


def test_rows_from_a_restricted_social_network_are_imported_with_a_note(config: Path,
                                                                        tmp_path: Path):
    """They imported without a word and were kept up to three years: R3 refuses the mail,
    but collecting them is what KASPR was fined for (data-lifecycle audit)."""
    csv = tmp_path / "s.csv"
    csv.write_text("email,audience,source_name,source_type,source_visibility\n"
                   "a@example.com,b2b,LinkedIn,social_network,restricted\n"
                   "b@example.com,b2b,LinkedIn,social_network,\n"
                   "c@example.com,b2b,LinkedIn,social_network,public\n"
                   "d@example.com,b2b,Fair,direct,\n")
    result = gateway_cli(config, "contacts", "import", str(csv))
    assert result.returncode == 0, result.stderr
    assert "imported 4 rows" in result.stdout
    assert "note: 2 rows come from a social network whose owner restricted" in result.stderr
    assert "(KASPR)" in result.stderr


def test_a_refused_rows_withdrawal_before_a_newer_grant_of_the_file_is_not_applied(
        config: Path, tmp_path: Path):
    """Salvaged from a refused row read before the address's valid row, the withdrawal was
    applied over that row's newer consent: the order of the rows decided (diff review)."""
    csv = tmp_path / "order.csv"
    csv.write_text(
        "email,consent,consent_at,consent_method,source_name,source_type\n"
        "old@example.com,withdrawn,2026-01-05,,form,\n"                     # 2: refused
        "old@example.com,granted,2026-03-01,web form,form,direct\n"         # 3
        "new@example.com,withdrawn,2026-06-01,,form,\n"                     # 4: refused
        "new@example.com,granted,2026-03-01,web form,form,direct\n")        # 5
    result = gateway_cli(config, "contacts", "import", str(csv))
    assert "unless a later row of this address gives a newer consent" in result.stderr
    assert "1 withdrawal of consent from refused rows applied, 1 newly suppressed" in \
        result.stdout, result.stdout
    listed = [e["address"] for e in json.loads(
        gateway_cli(config, "suppress", "list", "--json").stdout)]
    assert listed == ["new@example.com"]
