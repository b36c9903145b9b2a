"""The `gateway` command. Exit codes: 0 ok, 1 refused or not found, 2 usage or config error."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from gateway.errors import ConfigError, GatewayError, NotFound, Refused, StoreError
from gateway.settings import Settings, load_settings, weak_secrets

T = TypeVar("T")

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class CliState:
    """What every subcommand gets: the config path, loaded lazily so --help never needs it."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The settings; a config error ends the command with exit 2, wherever it is read."""
        if self._settings is None:
            try:
                settings = load_settings(self.config_path)
            except ConfigError as exc:
                fail(f"config error: {exc}", EXIT_USAGE)
                raise  # pragma: no cover - fail() exits
            _note_a_new_store(settings)
            _warn_weak_secrets(settings)
            self._settings = settings
        return self._settings


# the commands that say themselves where their store is (the banner), or make none
QUIET_ABOUT_A_NEW_STORE = frozenset({"serve", "dkim keygen"})


def _warn_weak_secrets(settings: Settings) -> None:
    """serve refuses to start with a weak shared secret; the other commands say so and go
    on (refused by every command, an upgrade left no `audit verify` nor `subject erase`)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.info_name == "serve":
        return
    for problem in weak_secrets(settings):
        click.echo(f"gateway: warning: {problem}; serve refuses to start with it", err=True)


def _note_a_new_store(settings: Settings) -> None:
    """Say on stderr that the command makes a new, empty store, and where (a listing on a
    new machine still answers `[]`, as the contract wants).

    The default store is relative (./var/gateway.db): a `gateway suppress add` or a cron
    job's `queue list --failed` run from another directory used a new, empty store of its
    own without a word, while `serve` went on with the real one. (Refusing instead would
    break the contract's commands on a new machine: `suppress add` before any import.)"""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.params.get("dry_run"):  # a dry run makes no store
        return
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    if not names or " ".join(reversed(names)) in QUIET_ABOUT_A_NEW_STORE:
        return
    try:
        path = settings.store.path
    except ConfigError:
        return  # the command reports it where the store is opened
    if not path.exists() and not path.is_symlink():
        # a relative store.url is read from the working directory, not the config's folder
        # (an operator review: `--config rel/g.toml` made ./var/gateway.db here, and the
        # hint to name the config with --config, given already, did not say why)
        where = ("; store.url is a relative path, read from the working directory, not from "
                 "the config file's folder" if not path.is_absolute() else "")
        click.echo(f"gateway: no store at {path.absolute()}: making a new, empty one (run "
                   "commands where `gateway serve` runs, or name its config with --config "
                   f"or GATEWAY_CONFIG{where})", err=True)


def fail(message: str, code: int = EXIT_REFUSED) -> None:
    """Print `message` to stderr and exit with `code`."""
    click.echo(f"gateway: {message}", err=True)
    sys.exit(code)


@contextmanager
def errors_to_exit_codes() -> Iterator[None]:
    try:
        yield
    except ConfigError as exc:
        fail(f"config error: {exc}", EXIT_USAGE)
    except (NotFound, Refused) as exc:
        fail(str(exc), EXIT_REFUSED)
    except StoreError as exc:
        fail(f"store error: {exc}", EXIT_REFUSED)
    except GatewayError as exc:
        fail(str(exc), EXIT_REFUSED)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async CLI body with the gateway's errors mapped to exit codes."""
    with errors_to_exit_codes():
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    raise AssertionError("unreachable")  # pragma: no cover


def _row_id() -> Any:
    import click

    return click.IntRange(1, 2**63 - 1)


# an entry's id or a --limit: SQLite's integers stop at 2**63 - 1 (a larger one was an
# OverflowError and a traceback)
ROW_ID: Any = _row_id()
# --since: a day, or a moment in UTC, as typed or as the tables print it ("2026-11-27 10:08Z")
SINCE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%MZ",
                 "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%SZ", "%Y-%m-%d %H:%M:%S",
                 "%Y-%m-%d %H:%MZ", "%Y-%m-%d %H:%M"]

def _address_type() -> Any:
    import click

    from gateway.addresses import normalize_address

    class Address(click.ParamType):  # type: ignore[type-arg]
        """An e-mail address argument: checked before anything is opened, a bad one a usage
        error (exit 2, as `check --to` has it); the value is kept as typed."""

        name = "email"

        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                normalize_address(str(value))
            except ValueError as exc:
                self.fail(str(exc) if "e-mail address" in str(exc)
                          else f"{value!r} is not an e-mail address: {exc}", param, ctx)
            return str(value)

    return Address()


ADDRESS: Any = _address_type()

PIPED_WIDTH = 10_000  # columns of a table written to a pipe or a file: never cut


def table_console(**options: Any) -> Any:
    """A rich Console for tables, without markup. Written to a pipe or a file, rich took 80
    columns and cut addresses and queue ids with "…" (`gateway queue list | grep ADDRESS`
    found nothing): there, it is as wide as the longest row."""
    import sys

    from rich.console import Console

    width = None if sys.stdout.isatty() else PIPED_WIDTH
    return Console(markup=False, highlight=False, emoji=False, width=width, **options)


def when(ts: float | None, seconds: bool = False) -> str:
    """A unix timestamp for tables, in UTC and saying so ("2026-11-27 10:08Z"; "" for none):
    dates are typed in UTC (--since, --received) and shown so everywhere, the access letter
    and the report's days too (local time without a zone was read as UTC, a day off)."""
    import datetime

    if ts is None:
        return ""
    try:
        moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    except (OverflowError, OSError, ValueError):  # a date edited in by hand, out of range
        return f"@{ts:.0f}"
    return moment.strftime("%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


def operator_name(value: str | None) -> str:
    """Who an operator's decision is recorded as: --operator, else the OS user."""
    if value:
        return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        return f"uid {os.getuid()}"


def hasher_for(settings: Settings) -> Any:
    """The address hasher of this store (its key is created on first use, 0600)."""
    from gateway.security.keys import AddressHasher, load_store_key

    with errors_to_exit_codes():  # a key file that is no key, or not the store's: exit 2
        return AddressHasher(load_store_key(settings.hash_key_path, settings.store.path))
    raise AssertionError("unreachable")  # pragma: no cover


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` readable by the owner only (exports and reports name people):
    a 0600 temporary file in the same folder, renamed over `path`, so no reader ever sees it
    half-written or with looser permissions."""
    import tempfile
    from pathlib import Path

    target = Path(path)
    if target.is_symlink() or (target.exists() and not target.is_file()):
        # renamed over, a symlink or a device (/dev/stdout, as root) was replaced by a file
        # of the export; its target never got it
        raise Refused(f"{target} exists and is not a regular file (a link, a device, a "
                      "folder): name a file, or leave --out out to print")
    try:
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:  # it named the temporary file, which the operator never gave
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              default=lambda: os.environ.get("GATEWAY_CONFIG") or None,
              help="TOML config file (default: $GATEWAY_CONFIG, else embedded defaults).")
@click.version_option(package_name="compliance-gateway", prog_name="gateway")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Compliance-aware SMTP sending gateway.

    Point your marketing tool's SMTP settings at `gateway serve`; manage who may send with
    `gateway accounts`, what you know about each recipient with `gateway contacts import`,
    objections with `gateway suppress`. `gateway check` says what the gateway would decide
    for a recipient; held copies are listed by `gateway quarantine`, the delivery queue by
    `gateway queue`. Data-subject rights: `gateway requests` tracks them to their due date,
    `gateway subject export|erase` answers them; `gateway retention run` purges what R4 says
    has expired; `gateway report` and `gateway audit verify` account for it all.
    """
    ctx.obj = CliState(config_path)


def _register() -> None:
    from gateway.cli import (
        accounts,
        audit,
        check,
        contacts,
        dkim,
        quarantine,
        queue,
        report,
        requests,
        retention,
        serve,
        subject,
        suppress,
    )

    for module in (accounts, contacts, suppress, check, quarantine, queue, subject, requests,
                   retention, dkim, audit, report, serve):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
