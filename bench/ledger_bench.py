#!/usr/bin/env python3
"""Contact-ledger benchmark: CSV import, in-process recipient decisions, RCPT over SMTP.

Against a generated ledger of --rows contacts (default 1,000,000), in a temp dir:

  1. import   `python -m gateway contacts import FILE` as a subprocess: rows/s, peak RSS
  2. decide   `Decider(LedgerLookup(...), knobs).decide(account, address)` in this process,
              one at a time and 20 tasks at once: decisions/s, p50/p99/max
  3. rcpt     `python -m gateway serve` (trusted_clients, no AUTH), 20 SMTP sessions sending
              `RCPT TO` one command at a time, each timed from write to reply: RCPT/s, p50/p99/max

Addresses are ~90% known (spread over the whole ledger) and ~10% unknown. The generated mix
makes every recipient rule fire, and each contact's expected rule is known, so every decision
and every RCPT reply is checked against it. Figures only: exit 0 whatever PASS/MISS says,
non-zero when something failed to run.

    python bench/ledger_bench.py                  # 1,000,000 rows (~2 minutes)
    python bench/ledger_bench.py --quick          # 100,000 rows, fewer decisions
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    HOST,
    Interrupted,
    Processes,
    Session,
    SmtpError,
    Summary,
    catch_signals,
    cpu_seconds,
    free_port,
    gateway_cli,
    ignore_signals,
    load_average,
    pct,
    run_loop,
    smtp_ready,
    tail,
    wait_until,
)

ACCOUNT = "bench"
ACCOUNT_PASSWORD = "Correct-Horse-Battery-Staple-42!"  # noqa: S105 - a throwaway bench account
ACCOUNT_TOPICS = "crm;security;marketing"
ACCOUNT_PRODUCT_CATEGORIES = "software"
SENDER = "bench@example.com"
SENDER_DOMAIN = "example.com"
DOMAINS = 5000  # addresses are user{i}@d{i % DOMAINS}.example
UNKNOWN_SHARE = 0.10  # of the sampled addresses: not in the ledger (R2)
RSET_EVERY = 100  # RCPTs per transaction
# aiosmtpd's command_call_limit (smtp.max_commands, default 1000) counts each verb per
# session: a session may send at most 1000 RCPT, so a longer run reconnects.
RCPTS_PER_CONNECTION = 1000
WARMUP_DECISIONS = 1000

TARGET_IMPORT_ROWS_S = 50_000
TARGET_IMPORT_PEAK_MB = 300
TARGET_DECIDE_P99_MS = 1.0
TARGET_RCPT_P99_MS = 5.0


# --- the generated ledger ----------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """One kind of generated contact: its share of the ledger and the rule it must get."""

    name: str
    weight: float  # percent of the ledger
    rule: str  # expected rule for the bench account (topics crm;security;marketing, software)
    accepted: bool  # RCPT answers 250 (allow or quarantine) rather than 550


KINDS = (
    Kind("b2c, consent granted", 40, "R6", True),
    Kind("b2b, topics crm/security", 10, "R8", True),
    Kind("b2b, topics finance/hr only", 5, "R10", False),
    Kind("b2b, no topics", 5, "R9", True),
    Kind("role address", 10, "R5", True),
    Kind("customer, bought software", 7, "R7", True),
    Kind("customer, bought hardware", 3, "R10", False),
    Kind("broker source", 5, "R3", False),
    Kind("social network, restricted", 3, "R3", False),
    Kind("consent withdrawn", 2, "R1", False),
    Kind("collected 4-5 years ago", 5, "R4", False),
    Kind("b2c prospect, no consent", 5, "R10", False),
)
UNKNOWN = Kind("unknown address", 0, "R2", False)
(B2C_CONSENT, B2B_RELEVANT, B2B_UNRELATED, B2B_NO_TOPICS, ROLE, CUSTOMER_SOFTWARE,
 CUSTOMER_OTHER, BROKER, SOCIAL_RESTRICTED, WITHDRAWN, OLD, PROSPECT) = range(len(KINDS))

CSV_HEADER = ("email,kind,audience,relationship,language,first_name,last_name,job_title,topics,"
              "customer_categories,consent,consent_at,consent_method,consent_proof,source_name,"
              "source_type,source_visibility,collected_at,last_interaction_at,informed_at,"
              "opt_out_offered")
FIRST_NAMES = ("Alice", "Bruno", "Chloe", "David", "Emma", "Farid", "Gaelle", "Hugo", "Ines",
               "Jules", "Karim", "Lea", "Marc", "Nora", "Oscar", "Paula")
LAST_NAMES = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
              "Leroy", "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "Roux")
JOB_TITLES = ("CTO", "Head of Sales", "CISO", "CFO", "HR Manager", "IT Manager", "Buyer")
LANGUAGES = ("fr", "en", "de", "es", "en-GB")


def address(i: int) -> str:
    return f"user{i}@d{i % DOMAINS}.example"


def generate_csv(path: Path, rows: int, seed: int) -> bytes:
    """Write the contact CSV; returns each row's kind (an index into KINDS), one byte a row."""
    rng = random.Random(seed)
    kinds = bytes(rng.choices(range(len(KINDS)), weights=[k.weight for k in KINDS], k=rows))
    today = datetime.datetime.now(datetime.UTC).date()
    days = [(today - datetime.timedelta(days=d)).isoformat() for d in range(2000)]
    recent = rng.randrange  # recent(a, b): a day index a..b-1 days ago
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(CSV_HEADER + "\r\n")
        lines: list[str] = []
        for i, k in enumerate(kinds):
            first, last = FIRST_NAMES[i % 16], LAST_NAMES[(i // 16) % 16]
            lang = LANGUAGES[i % 5]
            collected = days[recent(30, 700)]
            # email,kind,audience,relationship,language,first,last,job,topics,categories
            # consent,consent_at,method,proof, source name,type,visibility
            # collected_at,last_interaction_at,informed_at,opt_out_offered
            if k == B2C_CONSENT:
                line = (f"person,b2c,prospect,{lang},{first},{last},,,,granted,"
                        f"{days[recent(1, 30)]},web form,form-v3 ip 192.0.2.{i % 250},"
                        f"website,direct,,{collected},,{days[recent(1, 30)]},true")
            elif k == B2B_RELEVANT:
                topics = ("crm", "security", "crm;finance", "security;hr")[i % 4]
                line = (f"person,b2b,prospect,{lang},{first},{last},{JOB_TITLES[i % 7]},"
                        f"{topics},,,,,,annuaire-pro,public_directory,public,{collected},,,")
            elif k == B2B_UNRELATED:
                topics = ("finance", "hr", "finance;hr")[i % 3]
                line = (f"person,b2b,prospect,{lang},{first},{last},{JOB_TITLES[i % 7]},"
                        f"{topics},,,,,,annuaire-pro,public_directory,public,{collected},,,")
            elif k == B2B_NO_TOPICS:
                line = (f"person,b2b,prospect,{lang},{first},{last},{JOB_TITLES[i % 7]},,,,,,,"
                        f"trade fair 2025,partner,,{collected},,,")
            elif k == ROLE:
                line = (f"role,b2b,prospect,{lang},,,,,,,,,,company website,public_directory,"
                        f"public,{collected},,,")
            elif k in (CUSTOMER_SOFTWARE, CUSTOMER_OTHER):
                bought = "software;support" if k == CUSTOMER_SOFTWARE else "hardware"
                line = (f"person,b2c,customer,{lang},{first},{last},,,{bought},,,,,"
                        f"shop checkout,direct,,{collected},{days[recent(1, 30)]},"
                        f"{collected},true")
            elif k == BROKER:
                line = (f"person,b2c,prospect,{lang},{first},{last},,,,,,,,"
                        f"listbroker inc,broker,,{collected},,,")
            elif k == SOCIAL_RESTRICTED:
                line = (f"person,b2b,prospect,{lang},{first},{last},{JOB_TITLES[i % 7]},crm,,"
                        f",,,,profile scraper,social_network,restricted,{collected},,,")
            elif k == WITHDRAWN:
                line = (f"person,b2c,prospect,{lang},{first},{last},,,,withdrawn,"
                        f"{days[recent(1, 30)]},,,website,direct,,{collected},,,")
            elif k == OLD:
                line = (f"person,b2c,prospect,{lang},{first},{last},,,,granted,"
                        f"{days[recent(1500, 1800)]},web form,form-v1,website,direct,,"
                        f"{days[recent(1500, 1800)]},,,")
            else:  # PROSPECT
                line = (f"person,b2c,prospect,{lang},{first},{last},,,,,,,,"
                        f"partner list,partner,,{collected},,,")
            lines.append(f"user{i}@d{i % DOMAINS}.example,{line}\r\n")
            if len(lines) >= 10_000:
                out.write("".join(lines))
                lines = []
        out.write("".join(lines))
    return kinds


def sample(kinds: bytes, count: int, seed: int) -> list[tuple[str, Kind]]:
    """`count` addresses with their expected kind: ~90% known anywhere in the ledger, ~10%
    unknown (same shape, indexes past the end)."""
    rng = random.Random(seed)
    rows = len(kinds)
    picked = []
    for _ in range(count):
        if rng.random() < UNKNOWN_SHARE:
            picked.append((address(rows + rng.randrange(rows)), UNKNOWN))
        else:
            i = rng.randrange(rows)
            picked.append((address(i), KINDS[kinds[i]]))
    return picked


# --- figures -----------------------------------------------------------------------------

@dataclass
class Latencies:
    ns: list[int] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole run

    def pct(self, p: float) -> float:
        """Nearest-rank percentile, in ms."""
        return pct(self.ns, p)

    @property
    def rate(self) -> float:
        return len(self.ns) / self.seconds if self.seconds > 0 else 0.0

    def line(self, unit: str) -> str:
        return (f"{len(self.ns):,} in {self.seconds:.2f} s = {self.rate:,.0f} {unit}/s; "
                f"latency p50 {self.pct(50):.3f} ms, p99 {self.pct(99):.3f} ms, "
                f"max {self.pct(100):.3f} ms")


def rule_mix(counts: Counter[str]) -> str:
    total = sum(counts.values()) or 1
    order = sorted(counts, key=lambda r: (r[0], int(r[1:]) if r[1:].isdigit() else 0))
    return ", ".join(f"{r} {counts[r] * 100 / total:.1f}%" for r in order)


# --- the bench ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Processes) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.config = tmp / "gateway.toml"
        self.db = tmp / "gateway.db"
        self.csv = tmp / "contacts.csv"
        self.log = tmp / "gateway.log"
        self.summary = Summary("one run on a noisy 2-core machine: expect ~30% between runs")
        self.kinds = b""
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.gateway: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config.write_text(f"""\
[smtp]
listen = "{HOST}:{self.smtp_port}"
hostname = "bench.local"
tls_self_signed = false
max_recipients = 1000
max_connections_per_ip = 1000
processes = {self.args.processes}
trusted_clients = [{{ network = "127.0.0.0/8", account = "{ACCOUNT}" }}]

[http]
listen = "{HOST}:{self.http_port}"

[store]
url = "sqlite:///{self.db}"
ledger_reads = "{self.args.ledger_reads}"

[delivery]
mode = "maildir"
maildir = "{self.tmp / 'maildir'}"

[log]
level = "WARNING"
""")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return gateway_cli(self.config, *args, stdin=stdin)

    # 1. import ----------------------------------------------------------------------------

    def run_import(self) -> None:
        rows = self.args.rows
        print(f"\n[1/3] import: generating {rows:,} contacts into {self.csv} ...", flush=True)
        t0 = time.monotonic()
        self.kinds = generate_csv(self.csv, rows, self.args.seed)
        counts = Counter(self.kinds)
        print(f"  generated in {time.monotonic() - t0:.1f} s, "
              f"{self.csv.stat().st_size / 1e6:,.1f} MB; mix: "
              + ", ".join(f"{KINDS[k].name} {counts[k] * 100 / rows:.1f}% ({KINDS[k].rule})"
                          for k in range(len(KINDS))))
        out, err = self.tmp / "import.out", self.tmp / "import.err"
        argv = [sys.executable, "-m", "gateway", "--config", str(self.config),
                "contacts", "import", str(self.csv)]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            t0 = time.monotonic()
            proc = self.procs.start(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=stderr)
            code, peak_kb = self.procs.wait(proc)
            seconds = time.monotonic() - t0
        said = out.read_text(errors="replace").strip()
        errors = err.read_text(errors="replace").splitlines()
        rate = rows / seconds
        peak_mb = peak_kb / 1024
        db_mb = self.db.stat().st_size / 1e6 if self.db.exists() else 0.0
        wal = self.db.with_name(self.db.name + "-wal")
        wal_mb = wal.stat().st_size / 1e6 if wal.exists() else 0.0
        print(f"  `gateway contacts import`: exit {code}, {seconds:.1f} s wall (process start "
              f"and migrations included) = {rate:,.0f} rows/s; peak RSS {peak_mb:,.0f} MB "
              "(wait4 ru_maxrss of the child)")
        print(f"  it said: {said or '(nothing)'}")
        print(f"  CSV {self.csv.stat().st_size / 1e6:,.1f} MB -> database {db_mb:,.1f} MB"
              + (f" (+ WAL {wal_mb:,.1f} MB)" if wal_mb else ""))
        if errors:
            print(f"  stderr ({len(errors)} lines), first ones:")
            for text in errors[:10]:
                print(f"    {text}")
        if code != 0:
            raise RuntimeError(f"contacts import failed (exit {code}); see above")
        self.summary.add("import rows/s", f"{rate:,.0f}", f">= {TARGET_IMPORT_ROWS_S:,}",
                         rate >= TARGET_IMPORT_ROWS_S)
        self.summary.add("import peak RSS", f"{peak_mb:,.0f} MB", f"< {TARGET_IMPORT_PEAK_MB} MB",
                         peak_mb < TARGET_IMPORT_PEAK_MB)
        self.summary.add("CSV / database size", f"{self.csv.stat().st_size / 1e6:,.0f} / "
                         f"{db_mb + wal_mb:,.0f} MB", "", None)

        added = self.cli("accounts", "add", ACCOUNT, "--from-domain", SENDER_DOMAIN,
                         "--topics", ACCOUNT_TOPICS, "--product-categories",
                         ACCOUNT_PRODUCT_CATEGORIES, "--password-stdin",
                         stdin=ACCOUNT_PASSWORD + "\n")
        if added.returncode != 0:
            raise RuntimeError("`gateway accounts add` failed (exit "
                               f"{added.returncode}): {(added.stderr or added.stdout).strip()}")

    # 2. in-process decisions -----------------------------------------------------------

    def run_decisions(self) -> None:
        n = self.args.decisions
        conc = self.args.concurrency
        inline = self.args.ledger_reads == "inline"
        print("\n[2/3] in-process decisions: Decider(LedgerLookup(db, hasher, "
              f"reader_process=True, inline={inline}), knobs).decide(account, address) as "
              f"`gateway serve` builds it, {n:,} sequential "
              f"then {n:,} with {conc} tasks "
              f"(after {WARMUP_DECISIONS:,} warm-up) ...", flush=True)
        sequential_addrs = sample(self.kinds, n, self.args.seed + 1)
        concurrent_addrs = sample(self.kinds, n, self.args.seed + 2)
        warmup = sample(self.kinds, WARMUP_DECISIONS, self.args.seed + 3)

        async def body() -> tuple[Latencies, Latencies, Counter[str], int, float, float,
                                  Counter[str]]:
            from gateway.cli import hasher_for
            from gateway.flow import Decider
            from gateway.settings import load_settings
            from gateway.store.accounts import AccountStore
            from gateway.store.db import Database
            from gateway.store.ledger import LedgerLookup

            settings = load_settings(self.config)
            async with Database(settings.store.path) as db:
                account = await AccountStore(db).require(ACCOUNT)
            lookup = LedgerLookup(settings.store.path, hasher_for(settings),
                                  reader_process=True, inline=inline)
            await lookup.start()
            try:
                decider = Decider(lookup, settings.policy.knobs())
                rules: Counter[str] = Counter()
                wrong = 0

                async def one(addr: str, kind: Kind, lat: Latencies) -> None:
                    nonlocal wrong
                    t = time.perf_counter_ns()
                    _facts, decision = await decider.decide(account, addr)
                    lat.ns.append(time.perf_counter_ns() - t)
                    rules[decision.rule] += 1
                    if decision.rule != kind.rule:
                        wrong += 1
                        if wrong <= 5:
                            print(f"  unexpected: {addr} ({kind.name}) got {decision.rule} "
                                  f"{decision.decision}: {decision.reason}")

                scratch = Latencies()
                for addr, kind in warmup:
                    await one(addr, kind, scratch)
                rules.clear()
                # as `gateway serve` does once started (runtime.py): what lives as long as
                # the run (here the 100,000 sampled addresses) out of the collector's way
                gc.collect()
                gc.freeze()
                seq = Latencies()
                cpu0, t0 = time.process_time(), time.perf_counter()
                for addr, kind in sequential_addrs:
                    await one(addr, kind, seq)
                seq.seconds = time.perf_counter() - t0
                cpu_seq = time.process_time() - cpu0

                par = Latencies()
                work: Iterator[tuple[str, Kind]] = iter(concurrent_addrs)

                async def worker() -> None:
                    for addr, kind in work:  # shared: each task takes the next address
                        await one(addr, kind, par)

                cpu0, t0 = time.process_time(), time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(conc)))
                par.seconds = time.perf_counter() - t0
                cpu_par = time.process_time() - cpu0
                return seq, par, rules, wrong, cpu_seq, cpu_par, Counter(lookup.batches)
            finally:
                gc.unfreeze()
                await lookup.close()

        (seq, par, rules, wrong, cpu_seq, cpu_par, batches), loop_name = run_loop(body)
        print(f"  event loop: {loop_name}; ledger batches read on the loop {batches['inline']:,} "
              f"({batches['slow']:,} slow, {batches['refused']:,} refused), by the reader "
              f"process {batches['reader']:,}")
        print(f"  sequential:        {seq.line('decisions')}; "
              f"CPU {cpu_seq * 1e6 / max(1, len(seq.ns)):.0f} us/decision")
        print(f"  {conc} concurrent tasks: {par.line('decisions')}; "
              f"CPU {cpu_par * 1e6 / max(1, len(par.ns)):.0f} us/decision")
        print(f"    ({conc} in flight: mean latency = {conc} / rate = "
              f"{conc * 1e3 / par.rate if par.rate else float('nan'):.3f} ms, Little's law)")
        print(f"  rules ({sum(rules.values()):,} decisions): {rule_mix(rules)}")
        print(f"  decisions that differ from the generated kind's expected rule: {wrong}")
        self.summary.add("decide sequential", f"{seq.rate:,.0f}/s", "", None)
        self.summary.add("decide sequential p99", f"{seq.pct(99):.3f} ms",
                         f"< {TARGET_DECIDE_P99_MS:g} ms", seq.pct(99) < TARGET_DECIDE_P99_MS)
        self.summary.add(f"decide {conc} tasks", f"{par.rate:,.0f}/s", "", None)
        self.summary.add(f"decide {conc} tasks p99", f"{par.pct(99):.3f} ms",
                         f"< {TARGET_DECIDE_P99_MS:g} ms", par.pct(99) < TARGET_DECIDE_P99_MS)
        r2 = rules["R2"] / max(1, sum(rules.values()))
        self.summary.add("rule mix (not all R2)", f"{len(rules)} rules, R2 {r2:.0%}",
                         "R1-R10 all fire, R2 ~10%", len(rules) >= 10 and r2 < 0.5)
        self.summary.add("decisions != expected rule", f"{wrong}", "0", wrong == 0)

    # 3. RCPT over SMTP -----------------------------------------------------------------

    def start_gateway(self) -> None:
        self.smtp_port, self.http_port = free_port(), free_port()
        self.write_config()
        with self.log.open("wb") as log:
            self.gateway = self.procs.start(
                [sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if wait_until(lambda: smtp_ready(self.smtp_port), 60, proc=self.gateway):
            return
        raise RuntimeError(f"`gateway serve` did not listen on {HOST}:{self.smtp_port} "
                           f"(exit {self.gateway.poll()}):\n{tail(self.log)}")

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.procs.stop(self.gateway, grace=35.0)  # SIGTERM drains for up to 30 s
            self.gateway = None

    def run_smtp(self) -> None:
        total = self.args.rcpts
        sessions = self.args.sessions
        print(f"\n[3/3] RCPT over SMTP: `gateway serve` (smtp.processes = "
              f"{self.args.processes}, store.ledger_reads = {self.args.ledger_reads}), "
              f"{sessions} sessions, {total:,} RCPTs, one command at a time, "
              f"RSET every {RSET_EVERY}"
              + (", the sessions' transactions staggered" if self.args.stagger else "")
              + " ...", flush=True)
        self.start_gateway()
        assert self.gateway is not None
        picked = sample(self.kinds, total, self.args.seed + 4)
        shares = [picked[i::sessions] for i in range(sessions)]
        cpu0, own0 = cpu_seconds(self.gateway.pid), time.process_time()
        result, loop_name = run_loop(lambda: smtp_load(self.smtp_port, shares,
                                                       self.args.stagger))
        cpu1, own1 = cpu_seconds(self.gateway.pid), time.process_time()
        lat = result.latencies
        print(f"  client event loop: {loop_name} (the client shares the 2 cores with the "
              "gateway)")
        print(f"  RCPT: {lat.line('RCPT')}")
        print(f"    (latency from the command's write to the reply's arrival in the client; "
              f"to the session's coroutine resuming, behind the other sessions it woke with: "
              f"p50 {result.resumed.pct(50):.3f} ms, p99 {result.resumed.pct(99):.3f} ms)")
        print(f"    ({sessions} in flight: mean latency = {sessions} / rate = "
              f"{sessions * 1e3 / lat.rate if lat.rate else float('nan'):.3f} ms, Little's law)")
        print(f"  replies: 250 x {result.codes[250]:,}, 550 x {result.codes[550]:,}"
              + "".join(f", {c} x {n:,}" for c, n in sorted(result.codes.items())
                        if c not in (250, 550)))
        print(f"  550 by rule: {rule_mix(result.rules)}")
        print(f"  replies that differ from the expected one: {result.wrong}")
        for text in result.samples:
            print(f"    {text}")
        if cpu0 is not None and cpu1 is not None and lat.ns:
            print(f"  CPU per RCPT (RSET, MAIL and session set-up included): gateway "
                  f"{(cpu1 - cpu0) * 1e6 / len(lat.ns):.0f} us, this client "
                  f"{(own1 - own0) * 1e6 / len(lat.ns):.0f} us")
        if result.errors:
            print(f"  session errors ({len(result.errors)}):")
            for text in result.errors[:10]:
                print(f"    {text}")
        self.stop_gateway()
        audited = None
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
                audited = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        except sqlite3.Error as exc:
            print(f"  cannot count audit rows: {exc}")
        if audited is not None:
            print(f"  audit rows after the gateway stopped: {audited:,} "
                  f"(one per RCPT decided: {len(lat.ns):,})")
        # the log level is WARNING: anything logged (the startup banner aside) is news
        logged = [line for line in tail(self.log, 10_000).splitlines()
                  if " WARNING " in line or " ERROR " in line or "Traceback" in line]
        print(f"  gateway log: {len(logged)} warning/error line(s)"
              + "".join(f"\n    {line}" for line in logged[-10:]))
        self.summary.add(f"RCPT/s, {sessions} sessions", f"{lat.rate:,.0f}/s", "", None)
        self.summary.add("RCPT p50", f"{lat.pct(50):.3f} ms", "", None)
        self.summary.add("RCPT p99", f"{lat.pct(99):.3f} ms", f"< {TARGET_RCPT_P99_MS:g} ms",
                         lat.pct(99) < TARGET_RCPT_P99_MS)
        self.summary.add("RCPT max", f"{lat.pct(100):.3f} ms", "", None)
        self.summary.add("RCPT 250 / 550", f"{result.codes[250]:,} / {result.codes[550]:,}",
                         "", None)
        self.summary.add("RCPT replies != expected", f"{result.wrong}", "0", result.wrong == 0)
        if audited is not None:
            self.summary.add("audit rows / RCPTs", f"{audited:,} / {len(lat.ns):,}", "equal",
                             audited == len(lat.ns))
        if result.errors:
            raise RuntimeError(f"{len(result.errors)} SMTP session(s) failed")


# --- the SMTP client -------------------------------------------------------------------

@dataclass
class SmtpResult:
    latencies: Latencies = field(default_factory=Latencies)  # write -> reply's arrival
    resumed: Latencies = field(default_factory=Latencies)  # write -> the session's coroutine
    codes: Counter[int] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    samples: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ArrivalReader(asyncio.StreamReader):
    """Notes when bytes last arrived: in the protocol's data_received, before the coroutine
    waiting for them runs. When a batch of replies lands at once, the 20 sessions' coroutines
    resume one after the other, each doing its bookkeeping and its next write first; the
    arrival time leaves that client-side queue out of the RCPT round trip."""

    arrived_ns = 0

    def feed_data(self, data: bytes) -> None:
        self.arrived_ns = time.perf_counter_ns()
        super().feed_data(data)


class MailSession(Session):
    """A Session in a transaction: open() also sends MAIL FROM, ready for RCPTs."""

    reader_class = ArrivalReader

    async def open(self) -> None:
        await super().open()
        await self.command(f"MAIL FROM:<{SENDER}>")


async def smtp_load(port: int, shares: list[list[tuple[str, Kind]]],
                    stagger: bool = False) -> SmtpResult:
    """`stagger`: session i of n starts as if i/n of a transaction and of a connection were
    behind it, so that the sessions do not all end their transactions at the same moment."""
    result = SmtpResult()
    lat = result.latencies
    go = asyncio.Event()
    ready = 0  # sessions connected (or failed to): the clock starts when all are

    async def run(share: list[tuple[str, Kind]], index: int) -> None:
        nonlocal ready
        session = MailSession(port)
        try:
            try:
                await session.open()
            finally:
                ready += 1
            await go.wait()
            in_txn = on_conn = 0
            if stagger:
                in_txn = index * RSET_EVERY // len(shares)
                on_conn = index * RCPTS_PER_CONNECTION // len(shares)
            for addr, kind in share:
                if on_conn >= RCPTS_PER_CONNECTION:
                    await session.close()
                    await session.open()
                    in_txn = on_conn = 0
                elif in_txn >= RSET_EVERY:
                    await session.command("RSET")
                    await session.command(f"MAIL FROM:<{SENDER}>")
                    in_txn = 0
                assert session.writer is not None and isinstance(session.reader, ArrivalReader)
                t = time.perf_counter_ns()
                session.writer.write(f"RCPT TO:<{addr}>\r\n".encode())
                code, line = await session.reply()
                result.resumed.ns.append(time.perf_counter_ns() - t)
                lat.ns.append(session.reader.arrived_ns - t)
                in_txn += 1
                on_conn += 1
                result.codes[code] += 1
                rule = line.split(" ", 3)[2] if code == 550 and line.count(" ") >= 3 else ""
                if rule:
                    result.rules[rule] += 1
                ok = (code == 250) if kind.accepted else (code == 550 and rule == kind.rule)
                if not ok:
                    result.wrong += 1
                    if len(result.samples) < 5:
                        result.samples.append(f"{addr} ({kind.name}, expected {kind.rule}): "
                                              f"{line}")
            await session.close()
        except (OSError, SmtpError, ValueError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
            session.abort()

    tasks = [asyncio.create_task(run(share, i)) for i, share in enumerate(shares)]
    while ready < len(shares):
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    lat.seconds = result.resumed.seconds = time.perf_counter() - t0
    return result


# --- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="contacts in the ledger (default 1,000,000; "
                        "--quick 100,000)")
    parser.add_argument("--quick", action="store_true",
                        help="100,000 rows, 10,000 decisions, 10,000 RCPTs")
    parser.add_argument("--decisions", type=int,
                        help="in-process decisions per mode (default 50,000; --quick 10,000)")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="concurrent in-process decision tasks (default 20)")
    parser.add_argument("--rcpts", type=int,
                        help="RCPTs over SMTP in total (default 20,000; --quick 10,000)")
    parser.add_argument("--sessions", type=int, default=20,
                        help="concurrent SMTP sessions (default 20)")
    parser.add_argument("--stagger", action="store_true",
                        help="start session i of n i/n of the way into its first transaction "
                        "and connection, so that the sessions do not end their transactions "
                        "in step (default: they do, as identical clients started together)")
    parser.add_argument("--processes", type=int, default=1,
                        help="gateway smtp.processes (default 1, the gateway's default)")
    parser.add_argument("--ledger-reads", choices=("inline", "process"), default="process",
                        help="the gateway's store.ledger_reads, also used for the in-process "
                        "decisions: the lookups' SQL always in the ledger reader process "
                        "(process, the gateway's default) or on the event loop while the "
                        "database answers at once (inline)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temp dir (CSV, database, config, gateway log)")
    args = parser.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.decisions = args.decisions or (10_000 if args.quick else 50_000)
    args.rcpts = args.rcpts or (10_000 if args.quick else 20_000)
    if min(args.rows, args.decisions, args.rcpts, args.sessions, args.concurrency,
           args.processes) < 1:
        parser.error("counts must be at least 1")

    catch_signals()
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    procs = Processes()
    bench = Bench(args, tmp, procs)
    print(f"ledger bench: {args.rows:,} contacts, temp dir {tmp}; Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cores. One run on a noisy machine "
          "(2 cores, ~30% between runs): compare figures from the same run only. Load "
          "average now: " + load_average())
    failed = False
    try:
        bench.write_config()
        bench.run_import()
        bench.run_decisions()
        bench.run_smtp()
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError, sqlite3.Error) as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        failed = True
    finally:
        ignore_signals()
        bench.stop_gateway()
        procs.stop_all()
        if bench.summary.rows:
            bench.summary.print()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
