"""Typed, frozen configuration read from TOML, with GATEWAY_<SECTION>_<KEY> overrides.

Validated once at start: an unknown section or key, or a value of the wrong type, is a
ConfigError naming the key (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import defaults
from gateway.errors import ConfigError
from gateway.model import SOURCE_TYPES, PolicyKnobs


@dataclass(frozen=True)
class TrustedClient:
    """A network whose clients may send without AUTH, as the named account (Postfix mynetworks)."""

    network: str
    account: str

    def contains(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in ipaddress.ip_network(self.network, strict=False)
        except ValueError:
            return False


@dataclass(frozen=True)
class SmtpSettings:
    listen: str = defaults.SMTP_LISTEN
    hostname: str = "localhost"
    tls_cert: str = ""
    tls_key: str = ""
    tls_self_signed: bool = True
    max_message_bytes: int = defaults.MAX_MESSAGE_BYTES
    max_recipients: int = defaults.MAX_RECIPIENTS
    max_commands: int = defaults.MAX_COMMANDS
    max_connections: int = defaults.MAX_CONNECTIONS
    max_connections_per_ip: int = defaults.MAX_CONNECTIONS_PER_IP
    idle_timeout: float = defaults.IDLE_TIMEOUT
    allow_plain_auth_on_loopback: bool = False
    auth_max_failures: int = defaults.AUTH_MAX_FAILURES
    auth_lockout_minutes: float = defaults.AUTH_LOCKOUT_MINUTES
    auth_ip_max_failures: int = defaults.AUTH_IP_MAX_FAILURES
    auth_failure_delay: float = defaults.AUTH_FAILURE_DELAY
    trusted_clients: tuple[TrustedClient, ...] = ()
    processes: int = 1


@dataclass(frozen=True)
class HttpSettings:
    listen: str = defaults.HTTP_LISTEN
    # "" (the default): http://<http.listen>, so that moving the port moves the links with
    # it (a wildcard listen gives the loopback address: set public_url for real recipients)
    public_url: str = ""
    # a client must send each whole request (headers and body) within this many seconds of
    # connecting or of the previous answer (slow clients hold connections: slowloris)
    request_timeout_seconds: float = 10.0
    max_connections: int = 1000  # open HTTP connections; more are closed at once
    max_connections_per_ip: int = 100  # of them from one address (IPv6: one /64)
    # GET /metrics needs "Authorization: Bearer <this>" when set (COMPLIANCE.md 7: admin
    # endpoints are authenticated); empty: open to whoever reaches http.listen
    metrics_token: str = ""


@dataclass(frozen=True)
class StoreSettings:
    url: str = defaults.STORE_URL
    # where `serve` runs the RCPT lookups' SQL: always in the ledger reader "process" (the
    # event loop never waits on the database: the default), or "inline" on the event loop
    # while the database answers at once (else in the reader process)
    ledger_reads: str = "process"

    @property
    def path(self) -> Path:
        """The SQLite file behind `sqlite:///path` (three slashes, then the path)."""
        prefix = "sqlite:///"
        if not self.url.startswith(prefix):
            # userinfo masked: a postgresql://user:password@... URL is what INTERFACE.md
            # announces for later
            shown = re.sub(r"//[^/@]*@", "//***@", self.url)
            raise ConfigError(
                f"store.url: only {prefix}PATH is supported for now, got {shown!r}")
        path = self.url[len(prefix):]
        if not path or path.endswith("/"):
            raise ConfigError(f"store.url: no file name in {self.url!r} (sqlite:///PATH)")
        return Path(path)


@dataclass(frozen=True)
class DeliverySettings:
    mode: str = "maildir"
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    tls_ca_file: str = ""
    username: str = ""
    password: str = ""
    maildir: str = defaults.MAILDIR
    workers: int = defaults.DELIVERY_WORKERS
    max_age_hours: float = defaults.DELIVERY_MAX_AGE_HOURS
    retry_base_seconds: float = defaults.DELIVERY_RETRY_BASE_SECONDS
    retry_max_seconds: float = defaults.DELIVERY_RETRY_MAX_SECONDS
    timeout_seconds: float = defaults.DELIVERY_TIMEOUT_SECONDS
    scan_seconds: float = defaults.DELIVERY_SCAN_SECONDS
    helo_name: str = ""


@dataclass(frozen=True)
class ControllerSettings:
    name: str = "Example Controller"
    address: str = "https://example.org"
    privacy_url: str = "https://example.org/privacy"
    dpo_email: str = "dpo@example.org"
    default_language: str = "en"
    notices_dir: str = ""  # folder of <lang>.toml notice templates replacing the bundled ones


@dataclass(frozen=True)
class DkimSettings:
    domain: str = ""
    selector: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class PolicySettings:
    unknown_recipient: str = "reject"
    b2b_unclear: str = "quarantine"
    prospect_retention_days: int = defaults.PROSPECT_RETENTION_DAYS
    max_retention_days: int = defaults.MAX_RETENTION_DAYS
    forbidden_sources: tuple[str, ...] = defaults.FORBIDDEN_SOURCES


    def knobs(self) -> PolicyKnobs:
        return PolicyKnobs(self.unknown_recipient, self.b2b_unclear,
                           self.prospect_retention_days, self.max_retention_days,
                           frozenset(self.forbidden_sources))


@dataclass(frozen=True)
class QuarantineSettings:
    retention_days: int = defaults.QUARANTINE_RETENTION_DAYS


@dataclass(frozen=True)
class SecretsSettings:
    token_key_file: str = ""  # empty: secrets/token.key beside the store file
    hash_key_file: str = ""  # empty: secrets/hash.key beside the store file


@dataclass(frozen=True)
class WebhooksSettings:
    opt_out_secret: str = ""
    # signs the notifications to the accounts' notify_url (and the erasure notices); empty:
    # opt_out_secret, which lets every endpoint that checks them sign opt-outs too
    notify_secret: str = ""
    notify_retry_base_seconds: float = 30.0  # first retry of a failed notification, doubling

    @property
    def notify_signing_secret(self) -> str:
        return self.notify_secret or self.opt_out_secret


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"


@dataclass(frozen=True)
class Settings:
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    dkim: tuple[DkimSettings, ...] = ()
    policy: PolicySettings = field(default_factory=PolicySettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    webhooks: WebhooksSettings = field(default_factory=WebhooksSettings)
    log: LogSettings = field(default_factory=LogSettings)
    source: str = "embedded defaults"

    @property
    def token_key_path(self) -> Path:
        """The unsubscribe token keys: configured, else beside the store."""
        if self.secrets.token_key_file:
            return Path(self.secrets.token_key_file)
        return self.store.path.parent / "secrets" / "token.key"

    @property
    def hash_key_path(self) -> Path:
        """The address hash key: configured, else beside the store, so they travel together."""
        if self.secrets.hash_key_file:
            return Path(self.secrets.hash_key_file)
        return self.store.path.parent / "secrets" / "hash.key"


_CHOICES: dict[str, tuple[str, ...]] = {
    "delivery.mode": ("smtp", "maildir"),
    "store.ledger_reads": ("inline", "process"),
    "policy.unknown_recipient": ("reject", "quarantine"),
    "policy.b2b_unclear": ("quarantine", "reject"),
    "log.level": ("DEBUG", "INFO", "WARNING", "ERROR"),
}


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Read `path` (or embedded defaults when None), apply env overrides, validate."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "embedded defaults"
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (TOML is UTF-8): {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read the config file {path}: "
                              f"{exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        source = str(path)
    overridden = _apply_env(raw, environ)
    try:
        sections: dict[str, Any] = {}
        for name, value in raw.items():
            if name not in _SECTION_TYPES:
                raise ConfigError(
                    f"unknown config section [{name}] (known: {', '.join(_SECTION_TYPES)})")
            if name == "dkim":
                items = value if isinstance(value, list) else [value]
                sections[name] = tuple(_build(DkimSettings, item, "dkim") for item in items)
            else:
                sections[name] = _build(_SECTION_TYPES[name], value, name)
        settings = Settings(**sections, source=source)
        if not settings.http.public_url:
            settings = dataclasses.replace(settings, http=dataclasses.replace(
                settings.http, public_url=url_of_listen(settings.http.listen)))
        _check(settings)
    except ConfigError as exc:
        # say where the value came from: the file was blamed for an environment variable's
        # value (GATEWAY_SMTP_LISTEN=0.0.0.0 read as "smtp.listen: expected HOST:PORT")
        text = str(exc)
        key = text.split(":", 1)[0].split("[", 1)[0].strip()
        if key in overridden:
            raise ConfigError(f"{text} (the value of the environment variable "
                              f"{overridden[key]})") from None
        if source != "embedded defaults" and ":" in text and not text.startswith(source):
            raise ConfigError(f"{text} (in {source})") from None
        raise
    return settings


def url_of_listen(listen: str) -> str:
    """The http:// base URL of what `listen` (http.listen) serves: what the unsubscribe
    links point to unless http.public_url says otherwise."""
    host, port = parse_listen(listen, "http.listen")
    if host in ("0.0.0.0", ""):  # noqa: S104 - a wildcard is reached at the loopback here
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_SECTION_TYPES: dict[str, type] = {
    "smtp": SmtpSettings, "http": HttpSettings, "store": StoreSettings,
    "delivery": DeliverySettings, "controller": ControllerSettings, "dkim": DkimSettings,
    "policy": PolicySettings, "quarantine": QuarantineSettings, "secrets": SecretsSettings,
    "webhooks": WebhooksSettings, "log": LogSettings,
}


_SERVICE_LINK = re.compile(
    r"service_host|service_port(_\w+)?|port(_\d+_(tcp|udp|sctp)(_(proto|port|addr))?)?")
_SERVICE_URL = re.compile(r"(tcp|udp|sctp)://")


def _apply_env(raw: dict[str, Any], environ: typing.Mapping[str, str]) -> dict[str, str]:
    """GATEWAY_SMTP_LISTEN=... overrides [smtp] listen. A text setting takes the value as it
    is (a secret of digits stays text, quotes stay quotes); numbers, true/false and lists are
    read as TOML values (GATEWAY_POLICY_FORBIDDEN_SOURCES='["broker"]'). Returns the keys
    overridden ("smtp.listen") with the variable that did it."""
    overridden: dict[str, str] = {}
    for name, text in environ.items():
        if not name.startswith("GATEWAY_") or name == "GATEWAY_CONFIG":
            continue
        rest = name[len("GATEWAY_"):].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTION_TYPES or not key:
            # another program's (CGI's GATEWAY_INTERFACE), unless it is a near miss of ours:
            # GATEWAY_WEBHOOK_OPT_OUT_SECRET was ignored, and every webhook got 401
            near = difflib.get_close_matches(section, _SECTION_TYPES, n=1, cutoff=0.8)
            if near and key in {f.name for f in dataclasses.fields(_SECTION_TYPES[near[0]])}:
                # a key of that section: ours, misspelt (another program's GATEWAY_SECRET
                # or a Kubernetes GATEWAY_WEBHOOK_SERVICE_HOST is left alone)
                raise ConfigError(f"{name}: there is no [{section}] section; did you mean "
                                  f"GATEWAY_{near[0].upper()}_{key.upper()}?")
            continue
        known = {f.name for f in dataclasses.fields(_SECTION_TYPES[section])}
        if _SERVICE_LINK.fullmatch(key) and (key not in known or _SERVICE_URL.match(text)):
            # what Kubernetes (enableServiceLinks, on by default) and Docker links put in
            # every pod for a Service named gateway-smtp, gateway-http, gateway-delivery...:
            # GATEWAY_SMTP_SERVICE_HOST, GATEWAY_DELIVERY_PORT=tcp://10.0.0.3:25. Not ours
            # (GATEWAY_DELIVERY_PORT=587 still is)
            continue
        if key not in known:
            raise ConfigError(f"{name}: [{section}] has no key {key!r} (known: "
                              f"{', '.join(sorted(known))})")
        value: Any = text
        hint = typing.get_type_hints(_SECTION_TYPES[section]).get(key, str)
        if hint is not str:
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"{name}: not a value for {section}.{key}: {text!r} "
                                  f"(expected {_expected_form(hint)})") from None
        table = raw.setdefault(section, {})
        if section == "dkim" and isinstance(table, list):  # [[dkim]]: one entry, or which?
            if len(table) != 1:
                raise ConfigError(f"{name}: the config has {len(table)} [[dkim]] entries; an "
                                  "environment override applies to one only: edit the file")
            table = table[0]
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table, got {type(table).__name__} "
                              f"(overridden by {name})")
        table[key] = value
        overridden[f"{section}.{key}"] = name
    return overridden


def _build(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key {where}.{key} (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(hints[key], item, f"{where}.{key}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(f'{where}.{m}' for m in missing)}")
    return cls(**kwargs)


# keys whose values a config error must not print (stderr goes to journald, CI logs...)
SECRET_KEYS = frozenset({"delivery.password", "delivery.username", "webhooks.opt_out_secret",
                         "webhooks.notify_secret", "http.metrics_token"})


def _shown(key: str, value: Any) -> str:
    return f"a {type(value).__name__} (not shown: a secret)" if key in SECRET_KEYS \
        else repr(value)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_shown(key, value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_shown(key, value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_shown(key, value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_shown(key, value)}")
        return value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_shown(key, value)}")
        if isinstance(item_type, type) and dataclasses.is_dataclass(item_type):
            return tuple(_build(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
        return tuple(_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(hint, types.UnionType):  # pragma: no cover - no such field yet
        raise ConfigError(f"{key}: unsupported type")
    raise ConfigError(f"{key}: unsupported type {hint!r}")


_NOT_IN_URL = '<>"\'`,\\{}|^'
_HOST_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_HOST_LABEL}(?:\.{_HOST_LABEL})*")


# The shared secrets: the HMAC keys of the opt-out webhook and of the accounts'
# notifications can be guessed offline from one signed request seen (a notify_url over plain
# http, a proxy's log), and whoever has the opt-out key can unsubscribe any address; the
# /metrics token is guessed online. 128 bits, counted as CNIL counts a password's (length x
# log2 of the alphabet its character classes span): 32 hex digits, 22 letters and digits.
MIN_SECRET_BITS = 128
MIN_SECRET_DISTINCT = 8
_SECRET_SETTINGS = {  # the key, and what leaving it empty does
    "webhooks.opt_out_secret": "POST /webhooks/opt-out then refuses every request",
    "webhooks.notify_secret": "opt_out_secret then signs the notifications",
    "http.metrics_token": "GET /metrics then needs no token"}
_SECRET_CLASSES = (("abcdefghijklmnopqrstuvwxyz", 26), ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 26),
                   ("0123456789", 10), ("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", 33))


def secret_problem(secret: str) -> str | None:
    """Why a shared secret (_SECRET_SETTINGS) is too weak to use; None if it is not."""
    if any(c.isspace() or not c.isprintable() for c in secret):
        return "it holds spaces or control characters (a copy-paste error?)"
    for period in range(1, len(secret) // 2 + 1):  # "abcdefgh" * 4, "Summer2026!" * 3
        if all(secret[i] == secret[i % period] for i in range(len(secret))):
            return f"{period} characters repeated"
    alphabet = sum(size for chars, size in _SECRET_CLASSES if any(c in chars for c in secret))
    alphabet += 100 if any(not c.isascii() for c in secret) else 0
    bits = len(secret) * math.log2(alphabet) if alphabet else 0.0
    if bits < MIN_SECRET_BITS:
        return f"{int(bits)} bits, at least {MIN_SECRET_BITS} needed"
    if len(set(secret)) < MIN_SECRET_DISTINCT:
        return (f"only {len(set(secret))} different characters, at least "
                f"{MIN_SECRET_DISTINCT} needed")
    return None


def weak_secrets(settings: Settings) -> list[str]:
    """What is wrong with each shared secret too weak to use (serve refuses to start with
    one; the other commands only warn, so that an upgrade leaves the CLI usable)."""
    found = []
    for key, empty in _SECRET_SETTINGS.items():
        section, _, name = key.partition(".")
        value = getattr(getattr(settings, section), name)
        problem = secret_problem(value) if value else None
        if problem:
            found.append(f"{key}: too weak a secret ({problem}; the value is not shown). "
                         "Use a random one, such as the output of `openssl rand -hex 32`, "
                         f"or leave it empty ({empty})")
    return found


def _check(settings: Settings) -> None:
    for key, allowed in _CHOICES.items():
        section, _, name = key.partition(".")
        value = getattr(getattr(settings, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    for key in ("smtp.listen", "http.listen"):
        section, _, name = key.partition(".")
        if parse_listen(getattr(getattr(settings, section), name), key)[1] == 0:
            raise ConfigError(f"{key}: port 0 would listen on a port chosen at random, which "
                              "no client could be told; give one from 1 to 65535")
    for i, client in enumerate(settings.smtp.trusted_clients):
        try:
            ipaddress.ip_network(client.network, strict=False)
        except ValueError:
            raise ConfigError(
                f"smtp.trusted_clients[{i}].network: not an IP network: {client.network!r}"
            ) from None
    if bool(settings.smtp.tls_cert) != bool(settings.smtp.tls_key):
        raise ConfigError("smtp.tls_cert and smtp.tls_key must be set together")
    for key in ("smtp.max_message_bytes", "smtp.max_recipients", "smtp.max_commands",
                "smtp.max_connections", "smtp.max_connections_per_ip", "smtp.processes",
                "delivery.workers", "delivery.port", "http.max_connections",
                "http.max_connections_per_ip"):
        section, _, name = key.partition(".")
        if getattr(getattr(settings, section), name) < 1:
            raise ConfigError(f"{key}: must be at least 1")
    if settings.quarantine.retention_days < 0:
        raise ConfigError("quarantine.retention_days: must be 0 (purge at once) or more")
    if settings.delivery.port > 65535:
        raise ConfigError(f"delivery.port: not a TCP port: {settings.delivery.port}")
    if not 0 < settings.http.request_timeout_seconds < 86400:
        raise ConfigError("http.request_timeout_seconds: must be more than 0 and less than a "
                          "day")
    # durations: a negative idle timeout closed every session at once, a negative
    # max_age_hours failed every copy at its first attempt; NaN compares false to all
    for key, least in (("smtp.idle_timeout", 0.0), ("smtp.auth_lockout_minutes", 0.0),
                       ("smtp.auth_failure_delay", None), ("delivery.max_age_hours", 0.0),
                       ("delivery.retry_base_seconds", 0.0),
                       ("delivery.retry_max_seconds", 0.0),
                       ("delivery.timeout_seconds", 0.0), ("delivery.scan_seconds", 0.0),
                       ("webhooks.notify_retry_base_seconds", 0.0)):
        section, _, name = key.partition(".")
        value = getattr(getattr(settings, section), name)
        if not math.isfinite(value) or (value <= least if least is not None else value < 0):
            raise ConfigError(f"{key}: must be a finite number "
                              f"{'of 0 or more' if least is None else 'more than 0'}, "
                              f"got {value!r}")
    try:
        url = urllib.parse.urlsplit(settings.http.public_url)
        url.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        url = urllib.parse.urlsplit("")  # refused just below
    # the URL goes between <> in List-Unsubscribe: a '>' or ',' in it made a second link
    # there (RFC 8058 wants exactly one), a non-ASCII one an undeclared 8-bit header field
    if (url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment
            or not settings.http.public_url.isascii()
            or any(c.isspace() or not c.isprintable() or c in _NOT_IN_URL
                   for c in settings.http.public_url)):
        raise ConfigError(f"http.public_url: expected an http(s)://host[:port][/path] URL, the "
                          f"base of the unsubscribe links (ASCII: an internationalised host in "
                          f"its xn-- form; none of {_NOT_IN_URL}); got "
                          f"{settings.http.public_url!r}")
    # the EHLO name, the domain of every unsubscribe+TOKEN@ address, of Message-IDs and of the
    # DSNs' From: "gw.example.com>, <https://elsewhere/" put a second link in every copy
    if not _HOSTNAME.fullmatch(settings.smtp.hostname):
        raise ConfigError(f"smtp.hostname: expected a DNS name such as mail.example.com "
                          f"(letters, digits, hyphens, dots, without a trailing dot; an "
                          f"internationalised name in its xn-- form: the name this gateway's "
                          f"mail and unsubscribe addresses use); got {settings.smtp.hostname!r}")
    d = settings.delivery
    if d.mode == "smtp" and d.username and not d.starttls:
        raise ConfigError("delivery.username is set but delivery.starttls is false: "
                          "credentials would cross in clear text")
    settings.store.path  # noqa: B018 - validates the URL scheme
    unknown = [s for s in settings.policy.forbidden_sources if s not in SOURCE_TYPES]
    if unknown:
        raise ConfigError(f"policy.forbidden_sources: unknown source type {unknown[0]!r} "
                          f"(known: {', '.join(SOURCE_TYPES)})")
    p = settings.policy
    for key in ("prospect_retention_days", "max_retention_days"):
        if getattr(p, key) < 1:
            raise ConfigError(f"policy.{key}: must be at least 1")
    for key in ("name", "address", "privacy_url", "dpo_email"):
        if not " ".join(getattr(settings.controller, key).split()):
            # every notice names them (COMPLIANCE.md 4.2, GDPR 14(1)(a)-(b)): an empty one
            # rendered "Sender: , ." and "by writing to ."
            raise ConfigError(f"controller.{key}: must not be empty (every notice gives it)")


def _expected_form(hint: Any) -> str:
    """How an environment override of a key of type `hint` is written (a TOML value)."""
    if hint is bool:
        return "true or false, in lower case"
    if hint is int:
        return "a whole number, such as 30"
    if hint is float:
        return "a number, such as 2.5"
    if typing.get_origin(hint) in (list, tuple):
        if typing.get_args(hint)[0] is TrustedClient:
            return 'a TOML list of tables, such as [{network = "10.0.0.0/8", account = "crm"}]'
        return 'a TOML list, such as ["a", "b"]'
    return "a TOML value, as in the config file"


def parse_listen(text: str, key: str = "listen") -> tuple[str, int]:
    """'127.0.0.1:2525' or '[::1]:2525' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: port out of range in {text!r}")
    return host, int(port)
