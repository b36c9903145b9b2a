"""Every embedded default in one place (postfix-mta-sts-resolver style)."""

from __future__ import annotations

SMTP_LISTEN = "127.0.0.1:2525"
HTTP_LISTEN = "127.0.0.1:8025"
VAR_DIR = "./var"
STORE_URL = "sqlite:///./var/gateway.db"
MAILDIR = "./var/outbox"
TLS_CERT = "./var/tls/cert.pem"
TLS_KEY = "./var/tls/key.pem"

MAX_MESSAGE_BYTES = 25 * 1024 * 1024
MAX_RECIPIENTS = 100  # per transaction; Postfix smtpd_recipient_limit is 1000, ESPs use 50-100
MAX_COMMANDS = 1000  # per verb and session, except the transaction verbs (MAIL, RCPT, DATA...)
MAX_CONNECTIONS_PER_IP = 50  # Postfix smtpd_client_connection_count_limit default; IPv6: per /64
MAX_CONNECTIONS = 1000  # SMTP sessions of one process; more get 421 (trusted_clients: not)
IDLE_TIMEOUT = 300.0  # RFC 5321 4.5.3.2.7: server timeout 5 minutes

AUTH_MAX_FAILURES = 10  # consecutive failures that lock an account
AUTH_LOCKOUT_MINUTES = 15
AUTH_IP_MAX_FAILURES = 20  # failures from one IP in the window (an IPv6 /64: 4x), then throttled
AUTH_FAILURE_DELAY = 1.0  # seconds added to every failed AUTH answer (throttling)

DELIVERY_WORKERS = 16
DELIVERY_MAX_AGE_HOURS = 120  # Postfix maximal_queue_lifetime = 5d
DELIVERY_RETRY_BASE_SECONDS = 60.0
DELIVERY_RETRY_MAX_SECONDS = 3600.0
DELIVERY_CLAIM_SECONDS = 600.0
DELIVERY_SCAN_SECONDS = 1.0
DELIVERY_TIMEOUT_SECONDS = 60.0

QUARANTINE_RETENTION_DAYS = 30
PROSPECT_RETENTION_DAYS = 1095
MAX_RETENTION_DAYS = 1825
# Data brokers give no guarantee that the person agreed to the transfer (NESTOR 2020); a
# partner that collected consent for the transfer is source type "partner" instead.
FORBIDDEN_SOURCES = ("broker",)
