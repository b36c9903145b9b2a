"""`gateway report` through the real command, on a store filled over SMTP by the real server:
every figure must be exactly what was sent, refused, held and objected to."""

from __future__ import annotations

import datetime
import json
import smtplib
import stat
from pathlib import Path

import httpx
import pytest

from gateway.cli.report import render_html
from gateway.store.report import DayCount, DecisionCount, OpenRequest, Report

from conftest import (
    STRONG_PASSWORD,
    GatewayProcess,
    Sink,
    gateway_cli,
    make_store,
    message,
    wait_until,
)
from ledger_cases import ACCOUNT_PRODUCTS, ACCOUNT_TOPICS, write_cases_csv

# Recipients of tests/ledger_cases.py and what the policy decides for them.
CRM_RECIPIENTS = {
    "consented@b2c.example": ("allow", "R6"),
    "contact@company.example": ("allow", "R5"),
    "bought@b2c.example": ("reject", "R3"),
    "prospect@b2c.example": ("reject", "R10"),
    "stranger@nowhere.example": ("reject", "R2"),
    "unclear@b2b.example": ("quarantine", "R9"),
}
SHOP_RECIPIENTS = {
    "consented@b2c.example": ("allow", "R6"),
    "withdrawn@b2c.example": ("reject", "R1"),  # consent withdrawn: suppressed by the import
}
# Not a plain address for HTML: the report must escape it.
MARKUP_ADDRESS = "o'brien&co@example.com"  # ' and & are plain atext; HTML needs them escaped


def send(gw: GatewayProcess, account: str, sender: str, recipients: list[str],
         extra_headers: str = "") -> dict[str, tuple[int, bytes]]:
    """One message over SMTP AUTH as `account`; returns the recipients refused at RCPT."""
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as smtp:
        smtp.ehlo("client")
        smtp.login(account, STRONG_PASSWORD)
        return smtp.sendmail(sender, recipients, message(sender=sender, to=recipients[0],
                                                         extra_headers=extra_headers))


def report(gw: GatewayProcess, *args: str) -> dict:
    result = gw.cli("report", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def decisions(found: dict) -> dict[tuple[str | None, str, str], int]:
    return {(d["account"], d["rule"], d["decision"]): d["count"] for d in found["decisions"]}


@pytest.fixture
def gw(make_gateway, tmp_path: Path) -> GatewayProcess:
    gw = make_gateway(contacts=write_cases_csv(tmp_path / "cases.csv"), trusted=False,
                      smtp_extra="allow_plain_auth_on_loopback = true",
                      accounts={"crm": "example.com", "shop": "shop.example"}, start=False)
    for account in ("crm", "shop"):
        assert gw.cli("accounts", "update", account, "--topics", ACCOUNT_TOPICS,
                      "--product-categories", ACCOUNT_PRODUCTS).returncode == 0
    return gw.start()


@pytest.fixture
def filled(gw: GatewayProcess, sink: Sink) -> GatewayProcess:
    """Two accounts' mail decided by the real policy, objections by two channels, and
    requests open (one overdue), closed. Every SMTP transaction ends in an accepted message,
    so its audit rows are committed before the 250 (store/queue.py): no waiting for them."""
    refused = send(gw, "crm", "news@example.com", list(CRM_RECIPIENTS))
    assert set(refused) == {r for r, (d, _) in CRM_RECIPIENTS.items() if d == "reject"}
    refused = send(gw, "shop", "deals@shop.example", list(SHOP_RECIPIENTS))
    assert set(refused) == {"withdrawn@b2c.example"}
    # The campaign header narrows the topics after DATA: cto@ (R8 for security) is refused
    # with R10 then, a failed copy refused by the policy, and a DSN goes back to the sender.
    assert send(gw, "crm", "news@example.com", ["cto@b2b.example"],
                "X-Gateway-Campaign-Topics: crm\r\n") == {}
    copies = sink.wait_for(4)  # 2 + 1 allowed copies, 1 DSN
    unsubscribe = next(c for c in copies if c.rcpt_tos == ["contact@company.example"])
    url = unsubscribe.content.split(b"List-Unsubscribe: <", 1)[1].split(b">", 1)[0].decode()
    assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}).is_success
    assert gw.cli("suppress", "add", "someone@elsewhere.example").returncode == 0
    for address, kind, received in ((MARKUP_ADDRESS, "erasure", "2025-01-31"),
                                    ("cto@b2b.example", "access", None),
                                    ("cfo@b2b.example", "objection", None)):
        opened = gw.cli("requests", "open", address, "--kind", kind,
                        *(("--received", received) if received else ()))
        assert opened.returncode == 0, opened.stderr
    # the objection (request 3) is applied and closed as it is recorded: not listed
    return gw


def test_json_report_counts_exactly_what_was_decided_sent_held_and_objected(filled):
    expected_decisions = {
        **{("crm", rule, d): 1 for d, rule in CRM_RECIPIENTS.values()},
        ("crm", "R10", "reject"): 2,  # prospect@ at RCPT, cto@ after DATA
        ("shop", "R6", "allow"): 1, ("shop", "R1", "reject"): 1,
    }
    found = wait_until(lambda: (r := report(filled)) and r["deliveries"] == [
        {"account": None, "state": "sent", "count": 1},  # the DSN: no sending account
        {"account": "crm", "state": "refused", "count": 1},
        {"account": "crm", "state": "sent", "count": 2},
        {"account": "shop", "state": "sent", "count": 1},
    ] and r, what="every copy delivered")
    assert decisions(found) == expected_decisions
    # sent by rule, from the audit's 'sent' rows (the DSN carries no notice: not one)
    assert found["sent"] == [{"account": "crm", "rule": "R5", "count": 1},
                             {"account": "crm", "rule": "R6", "count": 1},
                             {"account": "shop", "rule": "R6", "count": 1}]
    assert found["since"] is None and found["generated_at"] > 0
    assert found["quarantine"] == [{"account": "crm", "rule": "R9", "state": "held",
                                    "count": 1}]
    assert {(o["channel"], o["count"]) for o in found["objections"]} == {
        ("import", 1), ("one-click", 1), ("manual", 2)}  # import: withdrawn@ in the CSV;
    # manual: suppress add, and cfo@'s objection request
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert found["daily"] == [{"day": today, "allow": 3, "reject": 5, "quarantine": 1}]
    overdue, recent = found["open_requests"]  # request 3 was closed: not listed
    received = datetime.datetime(2025, 1, 31, tzinfo=datetime.UTC).timestamp()
    assert overdue == {"id": 1, "kind": "erasure", "address": MARKUP_ADDRESS,
                       "received_at": received, "overdue": True,
                       # GDPR 12(3): one month, the month's last day when it is shorter
                       "due_at": datetime.datetime(2025, 2, 28, tzinfo=datetime.UTC)
                       .timestamp()}
    assert recent["id"] == 2 and recent["kind"] == "access" and not recent["overdue"]
    assert recent["due_at"] - recent["received_at"] >= 28 * 86400
    # an operator's review of the held copy is no second recipient decision (it read as
    # one more refusal)
    assert filled.cli("quarantine", "reject", "1", "--reason", "off topic").returncode == 0
    reviewed = report(filled)
    assert decisions(reviewed) == expected_decisions
    assert reviewed["daily"] == found["daily"]
    assert reviewed["quarantine"] == [{"account": "crm", "rule": "R9", "state": "rejected",
                                       "count": 1}]


def test_an_erasure_keeps_the_objection_in_the_figures(filled):
    """The erasure makes the suppression entry its own (channel 'erasure'): the one-click
    objection of the person erased vanished from the report (GDPR 5-2 accountability)."""
    before = {(o["channel"], o["count"]) for o in report(filled)["objections"]}
    erased = filled.cli("subject", "erase", "contact@company.example", "--yes")
    assert erased.returncode == 0, erased.stderr
    assert {(o["channel"], o["count"]) for o in report(filled)["objections"]} == before
    # an erasure of an address that never objected counts as one
    assert filled.cli("subject", "erase", "prospect@b2c.example", "--yes").returncode == 0
    assert {(o["channel"], o["count"]) for o in report(filled)["objections"]} == (
        before | {("erasure", 1)})


def test_since_limits_every_figure_but_not_the_open_requests(filled):
    utc_today = datetime.datetime.now(datetime.UTC).date()
    tomorrow = (utc_today + datetime.timedelta(days=1)).isoformat()
    later = report(filled, "--since", tomorrow)
    assert later["since"] == tomorrow
    assert later["decisions"] == [] and later["daily"] == [] and later["deliveries"] == []
    assert later["quarantine"] == [] and later["objections"] == [] and later["sent"] == []
    assert [r["id"] for r in later["open_requests"]] == [1, 2]
    yesterday = (utc_today - datetime.timedelta(days=1)).isoformat()
    assert decisions(report(filled, "--since", yesterday)) == decisions(report(filled))
    assert sum(decisions(report(filled)).values()) == 9
    # a moment, in the ISO forms the CLI prints (it took a day only: exit 2)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    for moment in (soon.strftime("%Y-%m-%dT%H:%M:%SZ"), soon.strftime("%Y-%m-%dT%H:%M")):
        after = report(filled, "--since", moment)
        assert after["decisions"] == [] and after["since"].startswith(moment[:16]), after


def test_tables_on_the_terminal_name_accounts_rules_and_overdue_requests(filled):
    # the sent marks follow the sink's 250s by a moment
    shown = wait_until(lambda: "; 3 copies sent" in (r := filled.cli("report")).stdout and r,
                       what="the three sent marks")
    assert shown.returncode == 0, shown.stderr
    assert "3 allowed, 5 rejected, 1 quarantined; 3 copies sent" in shown.stdout
    assert "shop" in shown.stdout and "R9" in shown.stdout and "one-click" in shown.stdout
    assert "2 open requests (1 overdue)" in shown.stdout and "OVERDUE" in shown.stdout


def test_html_report_is_private_self_contained_escaped_and_charts_each_day(filled,
                                                                             tmp_path: Path):
    page = tmp_path / "report.html"
    page.write_text("old")
    page.chmod(0o644)  # an existing file readable by all must not stay so
    written = filled.cli("report", "--html", str(page))
    assert written.returncode == 0, written.stderr
    assert str(page) in written.stdout
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    text = page.read_text()
    assert "<svg" in text and text.count("<rect") >= 3 + 3  # 3 stacked bars, 3 legend keys
    assert "day (UTC)" in text and "recipient decisions" in text  # axis labels
    assert "o&#x27;brien&amp;co@example.com" in text and MARKUP_ADDRESS not in text
    assert "<script" not in text and "http-equiv" in text and "src=" not in text
    assert "R9" in text and "shop" in text and "OVERDUE" in text


def test_html_rendering_escapes_every_value():
    evil = "<script>alert(1)</script>"
    page = render_html(Report(
        None, 0.0, [DecisionCount(evil, "R6", "allow", 2)], [], [], [],
        [OpenRequest(1, "access", evil, 0.0, 1.0, True)], [DayCount("2026-01-02", 2, 0, 0)]))
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2


def test_usage_errors_exit_2(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "g.db"}"\n')
    make_store(config)
    bad = gateway_cli(config, "report", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr
    both = gateway_cli(config, "report", "--json", "--html", str(tmp_path / "r.html"))
    assert both.returncode == 2 and not (tmp_path / "r.html").exists()
    assert json.loads(gateway_cli(config, "report", "--json").stdout)["decisions"] == []


def test_a_report_into_a_folder_that_does_not_exist_names_the_file_given(filled, tmp_path):
    """The error named the temporary file ('/nonexistent/.r.html.d6zro5of'; ops review)."""
    target = tmp_path / "no-such-folder" / "r.html"
    result = filled.cli("report", "--html", str(target))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot write {target}" in result.stderr and ".r.html." not in result.stderr


@pytest.mark.parametrize(("command", "option", "shown"), [
    (("report",), "--since", "--since DATE"),
    (("quarantine", "list"), "--since", "--since DATE"),
    (("requests", "open"), "--received", "--received YYYY-MM-DD"),
])
def test_a_date_options_help_shows_its_form_not_nine_strftime_patterns(command, option, shown):
    """`report --help` showed --since [%Y-%m-%d|%Y-%m-%dT%H:%M:%SZ|...] (ops review)."""
    from conftest import gateway_cli
    result = gateway_cli(Path("/nonexistent.toml"), *command, "--help")
    assert result.returncode == 0 and shown in result.stdout and "%Y" not in result.stdout
