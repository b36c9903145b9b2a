"""The gateway's exception hierarchy.

Outcomes (allow, reject, quarantine) are values; these are failures.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the offending key."""


class StoreError(GatewayError):
    """The store could not do what was asked (locked, full, corrupt, ...)."""


class NotFound(GatewayError):
    """A named thing (account, queue entry, ...) does not exist."""


class Refused(GatewayError):
    """A request was understood but refused (weak password, duplicate name, ...)."""


class TemporaryFailure(GatewayError):
    """Try again later: the SMTP client gets a 4xx, the queue defers.

    `remote_mta`: the host whose 4xx reply this is, or None (for the DSN of a copy that
    expires on it)."""

    def __init__(self, message: str, remote_mta: str | None = None) -> None:
        super().__init__(message)
        self.remote_mta = remote_mta


class PermanentFailure(GatewayError):
    """Will never succeed as it is: the queue marks the copy failed and sends a DSN.

    `remote_mta`: the host whose SMTP reply this is (the DSN's Remote-MTA field), or None
    when the gateway decided itself (a policy refusal, a copy it cannot make compliant).
    """

    def __init__(self, message: str, remote_mta: str | None = None,
                 audit: tuple[object, ...] | None = None) -> None:
        super().__init__(message)
        self.remote_mta = remote_mta
        # the audit row of a decision the gateway took at delivery (R1: an objection made
        # while the copy waited), written with the failure
        self.audit = audit
