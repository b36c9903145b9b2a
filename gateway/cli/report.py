"""`gateway report`: what the gateway decided and what is still owed, for the operator and
for whoever asks them to account for it (GDPR 5-2), as tables, JSON or one HTML file."""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import click
from rich.table import Table

from gateway.cli import (
    EXIT_REFUSED,
    EXIT_USAGE,
    SINCE_FORMATS,
    CliState,
    fail,
    print_json,
    run,
    table_console,
    when,
    write_private,
)
from gateway.store.db import Database
from gateway.store.report import (
    DECISIONS,
    DELIVERY_STATES,
    QUARANTINE_STATES,
    DayCount,
    Report,
    ReportStore,
)
from gateway.text import printable

NO_ACCOUNT = "(none)"
# Allowed, rejected, quarantined: one colour each, legible for the common colour blindnesses.
COLOURS = {"allow": "#1b9e77", "reject": "#d95f02", "quarantine": "#7570b3"}


@dataclass(frozen=True)
class Section:
    """One table of the report, rendered the same way on a terminal and in HTML."""
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


def _pivot(counts: Iterable[tuple[tuple[str, ...], str, int]],
           columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """(key, column, count) triples as one row per key with a count per column (SQL gave
    them one per key and column, already ordered by key)."""
    table: dict[tuple[str, ...], dict[str, int]] = {}
    for key, column, count in counts:
        row = table.setdefault(key, {})
        row[column] = row.get(column, 0) + count
    return [(*key, *(str(row.get(c, 0)) for c in columns)) for key, row in table.items()]


def sections(report: Report) -> list[Section]:
    """The report's tables, values as plain (unescaped) strings."""
    totals = {d: sum(c.count for c in report.decisions if c.decision == d) for d in DECISIONS}
    counts = [((c.account or NO_ACCOUNT, c.rule), c.decision, c.count)
              for c in report.decisions]
    counts += [((c.account or NO_ACCOUNT, c.rule), "sent", c.count) for c in report.sent]
    sent = sum(c.count for c in report.sent)
    return [
        Section(f"Recipient decisions: {totals['allow']} allowed, {totals['reject']} rejected, "
                f"{totals['quarantine']} quarantined; "
                f"{sent} cop{'y' if sent == 1 else 'ies'} sent (taken by the upstream, "
                "by the rule that allowed them; a released copy under its review's rule)",
                ("account", "rule", "allowed", "rejected", "quarantined", "sent"),
                _pivot(counts, (*DECISIONS, "sent"))),
        Section("Accepted copies still stored, by account (refused: by the policy after "
                "DATA or at delivery; erasure and retention remove theirs, /metrics counts "
                "every one ever)",
                ("account", *DELIVERY_STATES),
                _pivot((((c.account or NO_ACCOUNT,), c.state, c.count)
                        for c in report.deliveries), DELIVERY_STATES)),
        Section("Quarantine by account and rule", ("account", "rule", *QUARANTINE_STATES),
                _pivot((((c.account or NO_ACCOUNT, c.rule), c.state, c.count)
                        for c in report.quarantine), QUARANTINE_STATES)),
        Section(f"Suppression list entries: {sum(c.count for c in report.objections)} "
                "(by the channel of each entry now; a lifted one is gone, an erasure's "
                "counted as erasure)",
                ("channel", "count"), [(c.channel, str(c.count)) for c in report.objections]),
        Section(f"{len(report.open_requests)} open requests "
                f"({sum(r.overdue for r in report.open_requests)} overdue)",
                ("id", "kind", "address", "received", "due", ""),
                [(str(r.id), r.kind, r.address, when(r.received_at), when(r.due_at),
                  "OVERDUE" if r.overdue else "") for r in report.open_requests]),
    ]


def _heading(report: Report) -> str:
    period = f"since {report.since} (UTC)" if report.since else "all time"
    return f"Gateway report, {period}; generated {when(report.generated_at)}"


def print_tables(report: Report) -> None:
    console = table_console()
    console.print(_heading(report))
    for section in sections(report):
        console.print(f"\n{section.title}", soft_wrap=True)
        table = Table()
        for column in section.columns:
            table.add_column(column, overflow="fold")  # wrapped, never cut with "…"
        for row in section.rows:
            # Accounts, channels and addresses come from the store: no terminal escapes.
            table.add_row(*(printable(value) for value in row))
        console.print(table)


def _e(value: object) -> str:
    return html.escape(printable(str(value)), quote=True)


def _every_day(daily: list[DayCount]) -> list[DayCount]:
    """The days from the first to the last with decisions, the quiet ones as zeros, so the
    chart's axis is time and not a list of busy days."""
    if not daily:
        return []
    known = {d.day: d for d in daily}
    first = datetime.date.fromisoformat(daily[0].day)
    last = datetime.date.fromisoformat(daily[-1].day)
    days = (first + datetime.timedelta(days=n) for n in range((last - first).days + 1))
    return [known.get(day.isoformat(), DayCount(day.isoformat(), 0, 0, 0)) for day in days]


def chart_svg(daily: list[DayCount], width: int = 760, height: int = 280) -> str:
    """An inline SVG stacked bar chart of decisions per day (allow, reject, quarantine)."""
    days = _every_day(daily)
    if not days:
        return "<p>No decisions in this period.</p>"
    left, right, top, bottom = 56, 16, 36, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    highest = max(d.allow + d.reject + d.quarantine for d in days)
    step = max(1, math.ceil(highest / 4))
    y_max = step * 4
    bar = plot_w / len(days)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Recipient decisions per day">']
    for tick in range(0, y_max + 1, step):
        y = top + plot_h - tick / y_max * plot_h
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{tick}</text>')
    label_every = math.ceil(len(days) / 10)
    for i, day in enumerate(days):
        x = left + i * bar
        y = top + plot_h
        for decision in DECISIONS:  # stacked from the bottom in the legend's order
            count = getattr(day, decision)
            if count:
                h = count / y_max * plot_h
                y -= h
                parts.append(f'<rect x="{x + bar * 0.1:.1f}" y="{y:.1f}" '
                             f'width="{bar * 0.8:.1f}" height="{h:.1f}" '
                             f'fill="{COLOURS[decision]}"><title>{_e(day.day)}: {count} '
                             f'{decision}</title></rect>')
        if i % label_every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" '
                         f'text-anchor="middle">{_e(day.day)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                 f'y2="{top + plot_h}" stroke="#333"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>'
                 f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
                 f'day (UTC)</text><text transform="translate(14 {top + plot_h / 2}) '
                 f'rotate(-90)" text-anchor="middle">recipient decisions</text>')
    for n, decision in enumerate(DECISIONS):
        x = left + n * 120
        parts.append(f'<rect x="{x}" y="8" width="12" height="12" '
                     f'fill="{COLOURS[decision]}"/><text x="{x + 18}" y="18">{decision}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(report: Report) -> str:
    """One self-contained page: no script, no external resource, every value escaped."""
    body = [f"<h1>{_e(_heading(report))}</h1>", "<h2>Decisions over time</h2>",
            chart_svg(report.daily)]
    for section in sections(report):
        body.append(f"<h2>{_e(section.title)}</h2>")
        if not section.rows:
            body.append("<p>None.</p>")
            continue
        head = "".join(f"<th>{_e(c)}</th>" for c in section.columns)
        rows = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>\n"
                       for row in section.rows)
        body.append(f"<table>\n<tr>{head}</tr>\n{rows}</table>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        # The page needs nothing from anywhere: a CSP that forbids it all, inline style aside.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        "<title>Gateway report</title>\n<style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:left}svg text{font-size:11px;font-family:sans-serif}</style>\n"
        "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


@click.command()
@click.option("--since", type=click.DateTime(SINCE_FORMATS), metavar="DATE",
              help="Only what happened since this day (YYYY-MM-DD, from midnight UTC) or "
                   "moment (YYYY-MM-DDTHH:MM[:SS][Z], UTC); open requests are listed "
                   "whatever their date.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (its keys are listed above).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page with a chart of decisions per day to "
                   "this file (mode 0600: it names addresses).")
@click.pass_obj
def report(state: CliState, since: datetime.datetime | None, as_json: bool,
           html_path: Path | None) -> None:
    """Recipient decisions by account and rule, accepted copies by outcome, the quarantine,
    objections by channel and open data-subject requests with their due dates.

    \b
    --json keys:
      since          "YYYY-MM-DD" (or "YYYY-MM-DDTHH:MM:SSZ") or null; generated_at: unix
                     seconds
      decisions      [{account, rule, decision (allow|reject|quarantine), count}]
      sent           [{account, rule, count}] copies the upstream took (audit log;
                     on a store upgraded from before migration 022, only those sent
                     since the upgrade: `deliveries` has the earlier ones)
      deliveries     [{account, state (queued|deferred|sent|failed|refused), count}]
      quarantine     [{account, rule, state (held|released|rejected), count}]
      objections     [{channel, count}]
      open_requests  [{id, kind, address, received_at, due_at, overdue}]
      daily          [{day (UTC), allow, reject, quarantine}]
    """
    if as_json and html_path is not None:
        fail("give --json or --html, not both", EXIT_USAGE)
    start = since.replace(tzinfo=datetime.UTC) if since else None

    async def body() -> Report:
        async with Database(state.settings.store.path) as db:
            return await ReportStore(db).report(
                start.timestamp() if start else None,
                None if start is None else start.date().isoformat()
                if start.time() == datetime.time() else start.strftime("%Y-%m-%dT%H:%M:%SZ"))

    found = run(body)
    if as_json:
        print_json(found.as_json())
    elif html_path is not None:
        try:
            write_private(html_path, render_html(found))
        except OSError as exc:
            fail(f"cannot write {html_path}: {exc}", EXIT_REFUSED)
        click.echo(f"report written to {html_path} (readable by you only)")
    else:
        print_tables(found)


COMMANDS = [report]
