"""The composition root: builds every room and runs SMTP, HTTP and delivery on one event loop."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import math
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import uvicorn

from gateway.compose import Composer, CopySettings
from gateway.delivery.maildir import MaildirDelivery
from gateway.delivery.upstream import make_transport
from gateway.delivery.worker import DeliveryService
from gateway.errors import ConfigError, Refused
from gateway.flow import Decider, Flow
from gateway.notice_templates import load_templates
from gateway.notify import Notifier
from gateway.objections import Objections
from gateway.peers import is_loopback
from gateway.security.dkim_keys import load_keys as load_dkim_keys
from gateway.security.keys import AddressHasher, load_store_key
from gateway.security.tokens import load_store_token_keys
from gateway.settings import ControllerSettings, Settings, parse_listen, weak_secrets
from gateway.smtp.auth import Authenticator
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.server import GatewaySMTP, start_smtp_server
from gateway.store.accounts import AccountStore
from gateway.store.audit import AuditLog, unlink_late
from gateway.store.db import Database
from gateway.store.ledger import Ledger, LedgerLookup, ledger_form
from gateway.store.notifications import NotificationStore
from gateway.store.quarantine import QuarantineStore
from gateway.store.queue import QueueStore
from gateway.store.requests import RequestStore
from gateway.store.retention import Retention
from gateway.store.retention import due as maintenance_due
from gateway.store.retention import ran as maintenance_ran
from gateway.tls import ServerCertificate, ensure_self_signed
from gateway.transform.dkim import Signer, use_openssl_rsa
from gateway.transform.notice import find_template
from gateway.web.app import create_app
from gateway.web.protocol import guarded_protocol

log = logging.getLogger("gateway")

HOUSEKEEPING_SECONDS = 60.0
DRAIN_SECONDS = 30.0  # a stop waits this long for messages in progress and copies in flight
COMMIT_WAIT_SECONDS = 6.0  # a stop waits this long for a message commit (busy store: 5 s)
RETENTION_EVERY_SECONDS = 86400.0  # R4's purge: daily (the first a day after the first start)
SWITCH_INTERVAL = 0.0005
WEBHOOK_EVENTS_KEPT_SECONDS = 86400.0  # a replay is refused by its signature's age after 300 s
# the failures of an unknown login name not locked now, kept this long after the last
# (store/accounts.py auth_name_failures): a month
NAME_FAILURES_KEPT_SECONDS = 30 * 86400.0


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn on our loop; signals are ours (SIGTERM drains SMTP first)."""

    def capture_signals(self) -> Any:
        return nullcontext()


@dataclass(frozen=True)
class TlsInfo:
    cert: str
    self_signed: bool


class Gateway:
    """One gateway process. With smtp.processes > 1, several share `listen_socket` and the store;
    only the one with `serve_http` runs the HTTP service."""

    def __init__(self, settings: Settings, listen_socket: socket.socket | None = None,
                 serve_http: bool = True) -> None:
        self.settings = settings
        self.listen_socket = listen_socket
        self.serve_http = serve_http
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.db = Database(settings.store.path)
        self.accepting = asyncio.Event()
        self.connections: Counter[str] = Counter()
        self.sessions: set[GatewaySMTP] = set()  # open SMTP sessions, for a stop's drain
        self._hurry = asyncio.Event()  # a second signal: stop without waiting any longer
        self.started_at = time.time()
        self.tls: TlsInfo | None = None
        self._smtp: asyncio.Server | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.delivery: DeliveryService | None = None
        self.queue: QueueStore | None = None
        self.lookup: LedgerLookup | None = None
        self.flow: Flow | None = None
        self.ledger: Ledger | None = None
        self.composer: Composer | None = None
        self.notifier: Notifier | None = None

    def certificate(self) -> ServerCertificate | None:
        """The SMTP listener's certificate (loaded again when its files change), or None
        without TLS."""
        s = self.settings.smtp
        if s.tls_cert:
            self.tls = TlsInfo(s.tls_cert, False)
            try:  # the key made owner-only, as the DKIM and store keys are
                return ServerCertificate(s.tls_cert, s.tls_key, "smtp.tls_key")
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"smtp.tls_cert {s.tls_cert} / smtp.tls_key {s.tls_key}: "
                                  f"cannot load the certificate and its key: {exc}") from None
        if not s.tls_self_signed:
            return None
        folder = self.settings.store.path.parent / "tls"
        cert, key = folder / "cert.pem", folder / "key.pem"
        if ensure_self_signed(cert, key, s.hostname):
            log.warning("created a self-signed certificate %s for development; set "
                        "smtp.tls_cert and smtp.tls_key for production", cert)
        self.tls = TlsInfo(str(cert), True)
        return ServerCertificate(cert, key, "the self-signed certificate's key")

    def tls_description(self) -> str:
        """What STARTTLS offers, in words (the banner, the log at start)."""
        if self.tls is None:
            return ("no TLS (AUTH without TLS on loopback only: "
                    "smtp.allow_plain_auth_on_loopback)"
                    if self.settings.smtp.allow_plain_auth_on_loopback else
                    "no TLS (AUTH refused; only trusted_clients can send)")
        return (f"STARTTLS with {'a self-signed' if self.tls.self_signed else 'the'} "
                f"certificate {self.tls.cert} (reloaded when it changes)")

    def delivery_target(self) -> str:
        """Where copies go, in words."""
        d = self.settings.delivery
        return (f"the Maildir {d.maildir}/new (one file per copy)" if d.mode == "maildir"
                else f"the upstream relay {d.host}:{d.port}"
                     f"{' with STARTTLS' if d.starttls else ''}")

    def copy_settings(self) -> CopySettings:
        s = self.settings
        keys = load_dkim_keys(s.dkim)
        use_openssl_rsa()
        if not keys:
            log.warning("no [[dkim]] key configured: copies go out unsigned; create one with "
                        "`gateway dkim keygen`")
        example = [f"controller.{key}" for key in ("name", "address", "privacy_url",
                                                     "dpo_email")
                   if getattr(s.controller, key) == getattr(ControllerSettings(), key)]
        if example:
            log.warning("%s still the example value: every notice names the sender and its "
                        "data protection officer (GDPR 14); set them before real mail goes "
                        "out", ", ".join(example))
        if not s.webhooks.opt_out_secret:
            # (the notifier says on its first send that notifications go unsigned)
            log.warning("webhooks.opt_out_secret is not set: POST /webhooks/opt-out answers "
                        "401 to every call")
        if not s.http.public_url.startswith("https://"):
            log.warning("http.public_url %s is not https: RFC 8058 one-click unsubscribe needs "
                        "an HTTPS link (fine for local tests only)", s.http.public_url)
        for i, client in enumerate(s.smtp.trusted_clients):
            network = ipaddress.ip_network(client.network, strict=False)
            if not (network.is_private or network.is_loopback):
                log.warning("smtp.trusted_clients[%d] trusts %s, which holds public addresses: "
                            "any host there sends as account %r without AUTH (an open relay "
                            "for that account if SMTP is reachable from them)", i,
                            client.network, client.account)
        d = s.delivery
        if d.mode == "maildir":
            # every copy was deferred, retried for delivery.max_age_hours, then bounced, while
            # the banner said "mail goes to the Maildir"
            problem = MaildirDelivery(d.maildir).problem()
            if problem:
                raise ConfigError(f"delivery.maildir: cannot deliver into {d.maildir}: {problem}")
        if s.smtp.allow_plain_auth_on_loopback:
            log.warning("smtp.allow_plain_auth_on_loopback is true: passwords go in clear text "
                        "over loopback connections (development only)")
        if d.mode == "smtp" and not d.starttls and not _loopback(d.host):
            log.warning("delivery.starttls is false: copies (personal data) go to %s:%d in "
                        "clear text, even if it offers STARTTLS; set delivery.starttls = true",
                        d.host, d.port)
        listen_host = parse_listen(s.smtp.listen)[0]
        if s.smtp.hostname.rstrip(".").lower() in ("localhost", "localhost.localdomain") \
                and not _loopback(listen_host):
            log.warning("smtp.hostname is %r while SMTP listens on %s: every copy's mailto "
                        "unsubscribe (unsubscribe+TOKEN@%s) and every DSN name a host nobody "
                        "else can reach; set smtp.hostname to this gateway's public name",
                        s.smtp.hostname, s.smtp.listen, s.smtp.hostname)
        templates = load_templates(s.controller.notices_dir)
        if find_template(templates, s.controller.default_language) is None:  # as copies
            # choose theirs: "FR" and "fr-FR" are French, a "pt-BR" file is found
            raise ConfigError(f"controller.default_language: no notice in "
                              f"{s.controller.default_language!r} (there are notices in "
                              f"{', '.join(sorted(templates))}; add one with "
                              "controller.notices_dir)")
        return CopySettings(load_store_token_keys(s.token_key_path, s.store.path),
                            s.http.public_url.rstrip("/"), s.smtp.hostname,
                            Signer(keys) if keys else None, templates, s.controller,
                            # whole years, rounded up: the notice may not promise less
                            # than R4 keeps (547 days is "at most 2 years", not 1)
                            max(1, math.ceil(s.policy.prospect_retention_days / 365)))

    async def start(self) -> None:
        s = self.settings
        for problem in weak_secrets(s):  # (the other commands warn: settings load for all)
            raise ConfigError(problem)
        await self.db.open()
        self.queue = QueueStore(self.db, self.instance_id)
        accounts = AccountStore(self.db)
        transport = make_transport(s.delivery, s.smtp.hostname, s.smtp.max_message_bytes)
        self.delivery = DeliveryService(self.queue, transport, s.delivery, s.smtp.hostname)
        hasher = AddressHasher(load_store_key(s.hash_key_path, s.store.path))
        self.lookup = LedgerLookup(s.store.path, hasher, reader_process=True,
                                   inline=s.store.ledger_reads == "inline")
        await self.lookup.start()
        decider = Decider(self.lookup, s.policy.knobs())
        ledger = self.ledger = Ledger(self.db, hasher)
        if self.serve_http and await maintenance_due(self.db, "nfc-addresses", math.inf,
                                                     first_run=True):
            rewritten = await ledger.compose_stored_addresses()  # once, after the upgrade
            await maintenance_ran(self.db, "nfc-addresses")
            if rewritten:
                log.info("ledger: %d addresses stored decomposed rewritten in NFC", rewritten)
        if self.serve_http and await maintenance_due(self.db, "case-twins", math.inf,
                                                     first_run=True):
            twins, some = await ledger.case_twins()  # once, after the upgrade to 023
            await maintenance_ran(self.db, "case-twins")
            if twins:
                log.warning("ledger: %d contacts written with capitals have a twin in another "
                            "letter case (imported so by an earlier version), e.g. %s: a RCPT "
                            "or import "
                            "written alike takes its own, any other spelling the oldest; "
                            "compare them with `gateway contacts show` (a subject erase "
                            "takes every spelling)", twins, ", ".join(some))
        flow = self.flow = Flow(self.queue, self.delivery, accounts, s.smtp.trusted_clients,
                                decider, AuditLog(self.db), ledger, hasher, s.smtp.hostname)
        if self.serve_http:  # one process says it
            for name in await flow.missing_trusted_accounts():
                log.warning("smtp.trusted_clients names the account %r, which does not exist: "
                            "mail from its network needs AUTH until `gateway accounts add %s`",
                            name, name)
        if self.serve_http and s.webhooks.opt_out_secret and not s.webhooks.notify_secret:
            notified = [a.name for a in await accounts.list() if a.notify_url]
            if notified:
                log.warning("objection notifications to the notify_url of %s are signed with "
                            "webhooks.opt_out_secret: an endpoint that checks them holds the "
                            "key that signs opt-outs for any address (and a notification "
                            "replayed to /webhooks/opt-out is one); set webhooks.notify_secret "
                            "(GATEWAY_WEBHOOKS_NOTIFY_SECRET) and give the tools that one",
                            ", ".join(notified))
        copy_settings = self.copy_settings()
        if self.serve_http and copy_settings.signer is not None:  # one process says it
            keyed = set(copy_settings.signer.domains())
            for account in await accounts.list():
                unkeyed = [d for d in account.from_domains if d.lower() not in keyed]
                if unkeyed:
                    log.warning("account %s may send from %s, which no [[dkim]] key signs: "
                                "its copies are accepted, then deferred until "
                                "delivery.max_age_hours and bounced; add a key (gateway dkim "
                                "keygen --domain %s ...) or remove the domain", account.name,
                                ", ".join(unkeyed), unkeyed[0])
        self.composer = Composer(copy_settings, self.lookup, ledger, flow.account,
                                 s.policy.knobs())
        self.delivery.prepare = self.composer.prepare
        self.delivery.on_sent = self.composer.sent
        # only now: a copy claimed before (a restart's backlog) went out as stored, with
        # no unsubscribe fields, notice or DKIM, and no R1 check
        await self.delivery.start()
        self.notifier = Notifier(NotificationStore(self.db), s.webhooks.notify_signing_secret,
                                 retry_base=s.webhooks.notify_retry_base_seconds,
                                 holder=self.instance_id)
        objections = Objections(self.composer.settings.tokens, ledger, s.webhooks.opt_out_secret,
                                on_objection=self.notifier.wake)
        flow.objections = objections
        handler = GatewayHandler(flow, Authenticator(accounts, s.smtp, hasher.login_name))
        host, port = parse_listen(s.smtp.listen)
        self.accepting.set()
        certificate = self.certificate()
        try:
            self._smtp = await start_smtp_server(handler, s.smtp, host, port, certificate,
                                                 self.accepting, self.connections,
                                                 sock=self.listen_socket,
                                                 sessions=self.sessions)
        except OSError as exc:
            raise OSError(f"smtp.listen {s.smtp.listen}: {exc.strerror or exc}") from None
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        if not self.serve_http:
            return
        http_host, http_port = parse_listen(s.http.listen)
        self.notifier.start()  # in the process that serves HTTP only: one sender
        app = create_app(self.metrics, objections, s.controller.name,
                         s.controller.default_language, s.http.metrics_token,
                         s.controller.dpo_email)
        if not s.http.metrics_token and not _loopback(http_host):
            log.warning("GET /metrics is open to whoever reaches http.listen %s (message and "
                        "objection counts): set http.metrics_token (GATEWAY_HTTP_METRICS_TOKEN) "
                        "and give it to Prometheus as a bearer token", s.http.listen)
        # ws="none": no WebSocket here; an upgrade handed the connection to another
        # protocol object, and the per-client connection count never got it back
        config = uvicorn.Config(app, host=http_host, port=http_port, ws="none",
                                log_level="warning", access_log=False, lifespan="off",
                                http=guarded_protocol(s.http.request_timeout_seconds,
                                                      s.http.max_connections,
                                                      s.http.max_connections_per_ip))
        # bound here, not by uvicorn: it answers a port in use with sys.exit(), which would
        # end the event loop before anything could be stopped
        try:
            http_socket = socket.create_server(
                (http_host, http_port), backlog=1024,
                family=socket.AF_INET6 if ":" in http_host else socket.AF_INET)
        except OSError as exc:
            raise OSError(f"http.listen {s.http.listen}: {exc.strerror or exc}") from None
        self._http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[http_socket]),
                                              name="http")
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises what stopped it
                raise OSError(f"the HTTP server did not start on {s.http.listen}")
            await asyncio.sleep(0.01)

    async def metrics(self) -> dict[str, float]:
        """/metrics' figures. The delivery counters are the store's (every process's); the
        connections and the uptime are this process's, the one serving HTTP."""
        counts = await self.queue.outcome_counts() if self.queue is not None else {}
        return {
            "up": 1,
            "smtp_connections": sum(self.connections.values()),
            "deliveries_sent_total": counts.get("sent", 0),
            "deliveries_deferred_total": counts.get("deferred", 0),
            "deliveries_failed_total": counts.get("failed", 0),
            "deliveries_refused_total": counts.get("refused", 0),  # by the rule book
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }

    async def _housekeep(self) -> None:
        """At start, then every minute: free finished content, purge the quarantine."""
        while True:
            try:
                assert self.queue is not None
                if self.serve_http:  # one process frees and purges
                    await self.queue.drop_finished_content()
                    await self._purge_quarantine()
                    if await maintenance_due(self.db, "request-warnings", 86400.0,
                                             first_run=True):
                        await self._warn_due_requests()
                        await maintenance_ran(self.db, "request-warnings")
                    if await maintenance_due(self.db, "webhook-events", 86400.0):
                        assert self.ledger is not None
                        await self.ledger.forget_webhook_events(
                            time.time() - WEBHOOK_EVENTS_KEPT_SECONDS)
                        await AccountStore(self.db).forget_name_failures(
                            time.time() - NAME_FAILURES_KEPT_SECONDS)
                        await maintenance_ran(self.db, "webhook-events")
                    late = await unlink_late(self.db)
                    if late:
                        log.info("audit: %d rows written after an erasure about the time "
                                 "before it unlinked from their recipient", late)
                    if await maintenance_due(self.db, "retention", RETENTION_EVERY_SECONDS):
                        assert self.lookup is not None
                        purged = await Retention(
                            self.db, self.settings.policy.knobs(), self.lookup.hasher,
                            self.settings.quarantine.retention_days).purge()
                        await maintenance_ran(self.db, "retention")  # only once it is done
                        log.info("retention: %d expired ledger entries purged, with %s",
                                 len(purged.addresses), purged.summary())
            except Exception:
                log.exception("housekeeping failed")
            try:
                # an erasure or a purge could not empty the WAL of the rows it deleted (a
                # reader held it): retried here until it can (Database.empty_wal_later)
                emptied = await self.db.empty_wal_if_due()
                if emptied:
                    log.info("the WAL held pages of erased or purged rows: emptied now")
            except Exception:
                log.exception("emptying the WAL failed")
            await asyncio.sleep(HOUSEKEEPING_SECONDS)

    async def _warn_due_requests(self) -> None:
        """GDPR 12(3): a warning a day for each request due within 7 days (or overdue)."""
        for request in await RequestStore(self.db).open_requests(time.time() + 7 * 86400):
            log.warning("data-subject request %d (%s, %s) is due %s: answer it (gateway "
                        "requests list)", request.id, request.kind, request.address,
                        time.strftime("%Y-%m-%d", time.gmtime(request.due_at)))

    async def _purge_quarantine(self) -> None:
        """quarantine.retention_days: held personal data does not pile up."""
        days = self.settings.quarantine.retention_days
        store = QuarantineStore(self.db)
        for entry in await store.held_before(time.time() - days * 86400):
            assert self.lookup is not None
            try:
                await store.reject(entry, "purge", f"held longer than {days} days",
                                   self.lookup.hasher(ledger_form(entry.recipient)))
            except Refused:  # an operator decided it meanwhile
                continue
            log.info("quarantine entry %d purged after %d days", entry.id, days)

    async def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Graceful: stop accepting, let sessions finish, finish deliveries, close the store."""
        self.accepting.clear()
        # one deadline for the whole drain: sessions, then deliveries in what is left (each
        # had drain_seconds of its own: up to twice what the log and a supervisor's grace
        # period, e.g. Kubernetes' 30 s, allowed, then SIGKILL in mid-delivery)
        began = time.monotonic()
        deadline = began + drain_seconds
        # the sessions' part of it: the copies in flight keep the rest, at least a sixth (one
        # client slow in DATA to the end left them none: cancelled mid-transaction)
        sessions_until = deadline - drain_seconds / 6
        if self._smtp is not None:
            self._smtp.close()  # no new connections
            while (self.sessions and time.monotonic() < sessions_until
                   and not self._hurry.is_set()):
                # a session between two messages is closed at once (421), as its client
                # keeps it open for the next; one in a transaction when it has finished
                closed = sum(session.close_for_stop(idle_only=True)
                             for session in list(self.sessions))
                if closed:
                    log.info("closed %d idle SMTP sessions (421); %d finishing a message",
                             closed, len(self.sessions) - closed)
                await asyncio.sleep(0.05)
            if self.sessions:
                log.warning("closing %d SMTP sessions still in a transaction after %.1f s "
                            "(421: their clients keep the messages and retry)",
                            len(self.sessions), time.monotonic() - began)
                for session in list(self.sessions):
                    session.close_for_stop(idle_only=False)
            # a session whose message is being committed gets its DATA reply, then the 421
            # (close_for_stop): waited for, bounded (a commit behind a busy store waits up
            # to its 5 s busy timeout), so the stop does not close the store under it
            for _ in range(round(COMMIT_WAIT_SECONDS / 0.05)):
                if not any(session.committing for session in self.sessions):
                    break
                await asyncio.sleep(0.05)
            self._smtp.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.flow is not None:
            await self.flow.drain()  # audit records of sessions that just ended
        if self.delivery is not None:
            await self.delivery.stop(max(0.0, deadline - time.monotonic()), hurry=self._hurry)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await asyncio.gather(self._http_task, return_exceptions=True)
        if self.composer is not None:
            await self.composer.drain()
        if self.notifier is not None and self.serve_http:
            await self.notifier.stop()
        if self.lookup is not None:
            await self.lookup.close()
        await self.db.close()

    async def _stop_after_failed_start(self) -> None:
        try:
            await self.stop(drain_seconds=0)
        except Exception:
            log.exception("stopping after a failed start")
            if self.lookup is not None:
                await asyncio.gather(self.lookup.close(), return_exceptions=True)
            await asyncio.gather(self.db.close(), return_exceptions=True)

    def _stop_now(self) -> None:
        if not self._hurry.is_set():
            log.warning("second signal: stopping now; sessions still open get 421, copies "
                        "still being sent are handed back to the queue (an upstream that "
                        "took one already may get it again)")
            self._hurry.set()

    async def run_until_signalled(self, on_ready: Any = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # before start: a signal then still drains. SIGHUP too (a closed terminal, an
        # operator's habit): it ended the process without a drain. DRAIN_SIGNAL is the
        # supervisor's: it drains, and never counts as a second signal
        signals = stop_signals()
        received: list[int] = []

        def signalled(sig: int) -> None:
            received.append(sig)
            stop.set()

        for sig in (*signals, DRAIN_SIGNAL):
            loop.add_signal_handler(sig, signalled, sig)
        try:
            await self.start()
        except BaseException:
            # what started before the failure (the store's thread, the ledger reader, the
            # delivery workers) would keep the process alive, deaf to SIGTERM: stop it first
            await self._stop_after_failed_start()
            raise
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # collector's generations, so a full collection does not walk it in the middle of a
        # session (a stall of several ms in the RCPT latency tail).
        gc.freeze()
        s = self.settings
        # in the log too, with its time: a deployment that keeps stderr only had it nowhere
        log.info("ready: SMTP %s, %s; HTTP %s; copies go to %s; store %s", s.smtp.listen,
                 self.tls_description(), s.http.listen if self.serve_http else "in another "
                 "process", self.delivery_target(), s.store.path.absolute())
        if on_ready is not None:
            on_ready(self)
        await stop.wait()
        for sig in signals:
            loop.add_signal_handler(sig, self._stop_now)
        loop.add_signal_handler(DRAIN_SIGNAL, lambda: None)
        name = signal.Signals(received[0]).name if received else "a signal"
        log.info("%s received: draining for up to %.0f s (no new connections; idle "
                 "sessions closed, messages in progress finished, deliveries in flight "
                 "finished); a second signal stops at once%s", name, DRAIN_SECONDS,
                 " (SIGHUP stops the gateway: it does not reload its config)"
                 if received and received[0] == signal.SIGHUP else "")
        await self.stop(DRAIN_SECONDS)
        log.info("stopped cleanly")


def stop_signals() -> tuple[signal.Signals, ...]:
    """What stops the gateway: the first drains, a second stops at once. SIGHUP only when
    it is not ignored already: under `nohup` a closed terminal must not stop it."""
    hup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, signal.SIGINT, *hup)
# What the supervisor sends its workers for a stop: a drain only. A Ctrl-C or a `systemctl
# stop` signals the whole process group, so each worker got the signal itself and then the
# supervisor's SIGTERM, which it took for a second signal: no drain (sessions in DATA got 421)
DRAIN_SIGNAL = signal.SIGUSR1


def run(settings: Settings, on_ready: Any = None) -> None:
    """Run the gateway until SIGTERM/SIGINT: one process, or a supervisor and its workers."""
    raise_open_file_limit(settings)
    if settings.smtp.processes > 1:
        from gateway.supervisor import supervise

        supervise(settings, on_ready)
        return
    run_one(Gateway(settings), on_ready)


def run_one(gateway: Gateway, on_ready: Any = None) -> None:
    """Run one gateway process on uvloop (when available) until SIGTERM/SIGINT."""
    # The ledger and store threads hold the GIL only briefly, but when they do, the event loop
    # waits up to the switch interval for it (5 ms by default): that wait was the tail of the
    # RCPT latency. 0.5 ms keeps the loop's waits short at a negligible switching cost.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(gateway.run_until_signalled(on_ready))
    else:
        uvloop.run(gateway.run_until_signalled(on_ready))


def _loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only (a name other than
    localhost: assume it is reachable from elsewhere)."""
    return host == "localhost" or is_loopback(host)


# file descriptors besides the connections: listeners, the store and its WAL, the ledger
# reader, upstream connections, the Maildir, logs
FD_MARGIN = 256


def raise_open_file_limit(settings: Settings) -> None:
    """The soft open-file limit raised to the hard one (as nginx's worker_rlimit_nofile): a
    shell's 1024 is below smtp.max_connections and http.max_connections together, and a flood
    of connections then took every descriptor: one-click POSTs failed, deliveries deferred
    with "Too many open files" (security review). Said when even the hard limit is short."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    needed = settings.smtp.max_connections + settings.http.max_connections + FD_MARGIN
    if soft < needed:
        log.warning("the open-file limit is %d, below the %d that smtp.max_connections (%d) and "
                    "http.max_connections (%d) may take: a flood of connections would leave "
                    "none for the store and deliveries; raise it (systemd LimitNOFILE=, ulimit "
                    "-n) or lower those settings", soft, needed, settings.smtp.max_connections,
                    settings.http.max_connections)
