"""The aiosmtpd handler: thin. It checks the session, then asks the flow.

Hooks return reply strings from replies.py. Who may send is decided here (AUTH or a trusted
network); what happens to a recipient or a message is decided by gateway.flow.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
import unicodedata
from base64 import b64decode

from aiosmtpd.smtp import AuthResult, Envelope, Session

from gateway.errors import StoreError
from gateway.flow import Flow, RecipientVerdict, sender_refused
from gateway.smtp import replies
from gateway.smtp.auth import Authenticator, AuthOutcome
from gateway.smtp.server import GatewaySMTP
from gateway.store.accounts import Account
from gateway.transform.headers import HOP_LIMIT, too_many_hops, trace_protocol

log = logging.getLogger("gateway.smtp")

# RFC 5321 4.5.3.1: local part 64 octets, domain 255, path 256 (address 254 in practice)
MAX_LOCAL_PART = 64
MAX_ADDRESS = 254
RCPT_ATTEMPTS = 3  # RCPT commands a transaction may try, per smtp.max_recipients
# RFC 5321 4.1.2: no control character anywhere in a path, quoted or not (an ESC would also
# reach the operator's terminal through the log), and no unquoted space
FORBIDDEN_IN_ADDRESS = frozenset(map(chr, (*range(0x20), 0x7F))) | {" "}
UNICODE_CONTROLS = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})


def address_problem(address: str) -> str | None:
    """The reply for an address we refuse, or None when it is acceptable."""
    if not FORBIDDEN_IN_ADDRESS.isdisjoint(address):
        return replies.BAD_ADDRESS
    if not address.isascii() and any(
            unicodedata.category(c) in UNICODE_CONTROLS for c in address):
        return replies.BAD_ADDRESS  # C1 controls (NEL, CSI), bidi overrides, line separators
    if address.startswith("@") or ":" in address or "%" in address or "!" in address:
        return replies.SOURCE_ROUTE  # RFC 5321 4.1.2 / Postfix allow_percent_hack = no
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(local) > MAX_LOCAL_PART:
        return replies.BAD_ADDRESS
    if len(address) > MAX_ADDRESS or "." not in domain.strip("[]") or ".." in domain:
        return replies.BAD_ADDRESS
    return None


def _verdicts(envelope: Envelope) -> list[tuple[str, RecipientVerdict]]:
    """This transaction's recipient decisions (kept on aiosmtpd's per-transaction Envelope)."""
    verdicts: list[tuple[str, RecipientVerdict]] | None = getattr(
        envelope, "gateway_verdicts", None)
    if verdicts is None:
        verdicts = []
        envelope.gateway_verdicts = verdicts  # type: ignore[attr-defined]
    return verdicts


def _log_unanswered(task: asyncio.Future[str]) -> None:
    """Retrieve the commit's outcome even when its session is gone (asyncio would report an
    exception never retrieved); a StoreError is the hook's 451, logged there."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, StoreError):
        log.error("message not committed: %r", exc)


def _accepted(envelope: Envelope) -> set[str]:
    """The recipients accepted in this transaction, lower-cased: a RCPT repeated and allowed
    again gets its 250 but no second copy."""
    accepted: set[str] | None = getattr(envelope, "gateway_accepted", None)
    if accepted is None:
        accepted = set()
        envelope.gateway_accepted = accepted  # type: ignore[attr-defined]
    return accepted


def _unsubscribes(envelope: Envelope) -> list[str]:
    """The tokens of this transaction's unsubscribe+TOKEN@ recipients, recorded at DATA."""
    tokens: list[str] | None = getattr(envelope, "gateway_unsubscribes", None)
    if tokens is None:
        tokens = []
        envelope.gateway_unsubscribes = tokens  # type: ignore[attr-defined]
    return tokens


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


class GatewayHandler:
    """One instance for the whole server; per-connection state lives on the aiosmtpd Session."""

    def __init__(self, flow: Flow, authenticator: Authenticator) -> None:
        self.flow = flow
        self.authenticator = authenticator
        # aiosmtpd reads dir(handler) on every connection for its handle_* and auth_* hooks
        self._hook_names = sorted(name for name in object.__dir__(self)
                                  if name.startswith(("handle_", "auth_")))

    def __dir__(self) -> list[str]:
        return list(self._hook_names)

    # --- who is sending -----------------------------------------------------------------

    async def _sender_account(self, server: GatewaySMTP, session: Session) -> Account | None:
        """The AUTH account as it is now (its domains, topics, category: read again, a few
        seconds' cache, not as it was at login), else the account of a trusted network, else
        None. A session whose account was removed, or whose password was changed, since it
        logged in is logged out: a marketing tool keeps its connection for hours, and a
        leaked password changed by the operator kept sending on it."""
        if session.authenticated and isinstance(session.auth_data, Account):
            login = session.auth_data
            current = await self.flow.account(login.name)
            if current is None or current.credential_stamp != login.credential_stamp:
                # the cache may be older than the login (a login with a new password
                # against the old cached stamp): read it again before logging out
                current = await self.flow.account(login.name, fresh=True)
            if (current is not None and current.id == login.id
                    and current.credential_stamp == login.credential_stamp):
                return current
            log.warning("%s: account %s was %s since this session logged in: logged out",
                        server.client_ip, login.name,
                        "removed" if current is None or current.id != login.id
                        else "given a new password")
            session.authenticated = False
            session.auth_data = None
        return await self.flow.trusted_account(server.client_ip)

    async def auth_PLAIN(self, server: GatewaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except binascii.Error:
                await server.push(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push(replies.AUTH_BAD_PLAIN)
            return AuthResult(success=False, handled=True)
        if parts[0] not in (b"", parts[1]):
            # RFC 4616 2: an authorization identity the login may not act as fails; no
            # account here acts for another (it was ignored: AUTH as crm "for" anyone)
            log.info("%s AUTH PLAIN for another identity refused", server.client_ip)
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        return await self._check(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: GatewaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth(server.AuthLoginUsernameChallenge)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except binascii.Error:
                await server.push(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        if not isinstance(login, bytes):
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def _check(self, server: GatewaySMTP, login: bytes, password: bytes) -> AuthResult:
        verdict = await self.authenticator.authenticate(
            login.decode("utf-8", "replace"), password.decode("utf-8", "replace"),
            server.client_ip)
        if verdict.outcome is AuthOutcome.OK and verdict.account is not None:
            log.info("%s authenticated as %s", server.client_ip, verdict.account.name)
            return AuthResult(success=True, auth_data=verdict.account, message=replies.AUTH_OK)
        message = replies.AUTH_LOCKED if verdict.outcome is AuthOutcome.LOCKED \
            else replies.AUTH_INVALID
        return AuthResult(success=False, handled=False, message=message)

    async def handle_EHLO(self, server: GatewaySMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """Add PIPELINING (RFC 2920): aiosmtpd reads pipelined commands in order but does not
        say so; and ENHANCEDSTATUSCODES (RFC 2034): every reply but the greeting's, EHLO's
        and DATA's 354 carries one (replies.py), which clients read once told. SIZE,
        8BITMIME, SMTPUTF8, STARTTLS and AUTH come from aiosmtpd."""
        session.host_name = hostname
        responses[len(responses) - 1:len(responses) - 1] = ["250-PIPELINING",
                                                            "250-ENHANCEDSTATUSCODES"]
        return responses

    # --- the transaction ----------------------------------------------------------------

    def transaction_ended(self, server: GatewaySMTP, envelope: Envelope) -> None:
        """Called by the server when a transaction's envelope is discarded (after DATA, RSET,
        EHLO, or a lost connection): decisions not yet recorded with a message are audited."""
        verdicts = getattr(envelope, "gateway_verdicts", None)
        if verdicts:
            account = getattr(server.session, "gateway_account", None)
            self.flow.record_abandoned(account, server.client_ip, list(verdicts))
            verdicts.clear()

    async def handle_MAIL(self, server: GatewaySMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        account = await self._sender_account(server, session)
        if account is None:
            # Accepted so that mail to unsubscribe+TOKEN@ our hostname can arrive from any MTA
            # (RFC 2369 mailto); every other recipient gets 530 at RCPT: no relaying. But a
            # sender of an account's domain is a marketing tool that forgot to log in (the
            # people objecting write from their own addresses): 530 here, as for MAIL
            # without AUTH on a submission port
            problem = _address_refusal(address, envelope) if address != "<>" else None
            if problem:
                return problem
            if address != "<>":
                try:
                    ours = await self.flow.is_account_domain(domain_of(address))
                except StoreError as exc:
                    log.error("%s MAIL without authentication: accounts not read, answered "
                              "451: %s", server.client_ip, exc)
                    return replies.INTERNAL_ERROR
                if ours:
                    log.info("%s MAIL FROM <%s> without authentication refused",
                             server.client_ip, address)
                    return replies.AUTH_REQUIRED
            envelope.mail_from = address
            session.gateway_account = None  # type: ignore[attr-defined]
            return replies.SENDER_OK
        refusal = None
        if address == "<>":  # bounces are the gateway's own: prospecting mail names its sender
            refusal = replies.NULL_SENDER
        else:
            problem = _address_refusal(address, envelope)
            if problem:
                return problem
            if not account.may_send_from(domain_of(address)):
                log.warning("%s account %s may not send as <%s>", server.client_ip,
                            account.name, address)
                refusal = replies.SENDER_NOT_ALLOWED
        # M1 is said at each RCPT but unsubscribe+TOKEN@: an inbound MX inside
        # trusted_clients (or logged in) relays people's objections by mail from their own
        # addresses, and a refusal at MAIL lost every one of them
        envelope.gateway_sender_refusal = refusal  # type: ignore[attr-defined]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        # aiosmtpd's Session is the per-connection bag; RCPT and DATA read the account here
        session.gateway_account = account  # type: ignore[attr-defined]
        return replies.SENDER_OK

    async def handle_RCPT(self, server: GatewaySMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        account: Account | None = getattr(session, "gateway_account", None)
        token = self.flow.unsubscribe_token(address)
        if token is not None:  # an objection by mail: no AUTH needed for this address only
            tokens = _unsubscribes(envelope)
            if token in tokens:  # the same address again: one objection, one recipient
                return replies.UNSUBSCRIBE_OK
            if len(envelope.rcpt_tos) >= server.gateway_settings.max_recipients:
                return replies.TOO_MANY_RECIPIENTS
            try:
                known = await self.flow.unsubscribe_names_a_copy(token)
            except StoreError as exc:
                log.error("%s unsubscribe address not checked, answered 451: %s",
                          server.client_ip, exc)
                return replies.LEDGER_UNAVAILABLE
            if not known:
                return replies.NO_SUCH_UNSUBSCRIBE
            # recorded at DATA, once the mail has come: a probe of the address (a callout,
            # a transaction given up) is no objection, as a GET of the page is none
            tokens.append(token)
            envelope.rcpt_tos.append(address)
            return replies.UNSUBSCRIBE_OK
        if account is None:
            log.info("%s RCPT without authentication refused", server.client_ip)
            return replies.AUTH_REQUIRED
        problem = _address_refusal(address, envelope)
        if problem:
            return problem
        verdicts = _verdicts(envelope)
        if (len(envelope.rcpt_tos) >= server.gateway_settings.max_recipients
                or len(verdicts) >= RCPT_ATTEMPTS * server.gateway_settings.max_recipients):
            # also every RCPT tried, refused or repeated: each is decided, kept and audited,
            # so a transaction of endless RCPTs held memory without bound
            return replies.TOO_MANY_RECIPIENTS
        refusal = getattr(envelope, "gateway_sender_refusal", None)
        if refusal is not None:  # M1 of the envelope sender: a decision, audited as such
            # with the transaction (it was said to the tool and recorded nowhere)
            verdicts.append((address, sender_refused(str(refusal))))
            return str(refusal)
        verdict: RecipientVerdict = await self.flow.decide_recipient(account, address)
        verdicts.append((address, verdict))  # every decision is audited
        if not verdict.accepted:
            if verdict.decision is not None:  # (as Postfix's "NOQUEUE: reject: RCPT from")
                log.info("reject client=%s account=%s from=<%s> to=<%s> %s: %s",
                         server.client_ip, account.name, envelope.mail_from, address,
                         verdict.decision.rule, verdict.decision.reason)
            return verdict.reply
        accepted = _accepted(envelope)
        key = address.lower()
        if key not in accepted:  # the same recipient again: decided (and audited) again,
            # so an objection since is answered R1, but one copy (Flow.accept; Postfix's
            # cleanup drops duplicate recipients too)
            accepted.add(key)
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    def content_ignored(self, envelope: Envelope) -> bool:
        """Whether the message of this transaction is read for nothing: its recipients are
        unsubscribe+TOKEN@ addresses only, whose mail is the objection (handle_DATA)."""
        return bool(_unsubscribes(envelope)) and not any(
            verdict.accepted for _, verdict in _verdicts(envelope))

    async def handle_DATA(self, server: GatewaySMTP, session: Session,
                          envelope: Envelope) -> str:
        account: Account | None = getattr(session, "gateway_account", None)
        verdicts = _verdicts(envelope)
        unsubscribes = _unsubscribes(envelope)
        if unsubscribes:
            try:
                for token in unsubscribes:
                    await self.flow.object_by_mail(token, server.client_ip)
            except StoreError as exc:
                log.error("%s objection by mail not stored, answered 451: %s",
                          server.client_ip, exc)
                return replies.CANNOT_COMMIT
            unsubscribes.clear()
            if not any(v.accepted for _, v in verdicts):  # only unsubscribe+ recipients
                return replies.UNSUBSCRIBE_RECORDED
        if account is None or not envelope.mail_from:
            return replies.AUTH_REQUIRED
        content = envelope.original_content
        assert isinstance(content, bytes)
        if too_many_hops(content):
            self.flow.record_abandoned(account, server.client_ip, verdicts)
            log.warning("%s refused from=<%s> account=%s nrcpt=%d: %d Received fields or more, "
                        "a mail loop", server.client_ip, envelope.mail_from, account.name,
                        len(envelope.rcpt_tos), HOP_LIMIT)
            verdicts.clear()
            return replies.TOO_MANY_HOPS
        refusal = self.flow.check_message(account, content)
        if refusal is not None:
            self.flow.record_abandoned(account, server.client_ip, verdicts, refusal)
            log.info("%s refused from=<%s> account=%s nrcpt=%d size=%d: %s %s",
                     server.client_ip, envelope.mail_from, account.name,
                     len(envelope.rcpt_tos), len(content), refusal.rule, refusal.reason)
            verdicts.clear()
            return replies.policy_reject(refusal.rule, refusal.reason)
        decided = list(verdicts)
        verdicts.clear()  # audited with the message, or as abandoned below: never twice
        # shielded: a client gone while its message commits (a reset after the final dot)
        # cancels this hook, not the commit, which then still hands the copies to the
        # delivery workers at once instead of leaving them claimed until the claim expires
        accepting = asyncio.ensure_future(self.flow.accept(
            account=account, client_ip=server.client_ip, mail_from=envelope.mail_from,
            verdicts=decided, content=content, received_at=time.time(),
            smtputf8=envelope.smtp_utf8, helo=session.host_name or "",
            protocol=trace_protocol(bool(envelope.smtp_utf8), server.tls_active,
                                    bool(session.authenticated))))
        accepting.add_done_callback(_log_unanswered)
        try:
            queue_id = await asyncio.shield(accepting)
        except StoreError as exc:
            verdicts.extend(decided)  # no message: the decisions are audited on their own
            log.error("%s message from <%s> not committed, answered 451: %s",
                      server.client_ip, envelope.mail_from, exc)
            return replies.CANNOT_COMMIT
        except Exception:  # a bug: the same 451, and the decisions still audited
            verdicts.extend(decided)
            log.exception("%s message from <%s> not accepted, answered 451",
                          server.client_ip, envelope.mail_from)
            return replies.INTERNAL_ERROR
        log.info("%s queued %s from=<%s> account=%s nrcpt=%d size=%d", server.client_ip,
                 queue_id, envelope.mail_from, account.name, len(envelope.rcpt_tos),
                 len(content))
        return replies.QUEUED.format(queue_id=queue_id)


def _address_refusal(address: str, envelope: Envelope) -> str | None:
    """The reply refusing an envelope address, or None: its syntax, then (RFC 6531) an
    address beyond ASCII in a transaction whose MAIL did not say SMTPUTF8."""
    problem = address_problem(address)
    if problem is None and not address.isascii() and not envelope.smtp_utf8:
        return replies.NEEDS_SMTPUTF8
    return problem
