"""Bad input to the CLI ends with a one-line error and the documented exit code (2 for a usage
or config error, 1 for a refusal), never a traceback; and nothing half-done is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from conftest import STRONG_PASSWORD, gateway_cli, make_store


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def clean_failure(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert words in result.stderr, result.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "gateway.db"}"\n')
    return path


@pytest.mark.parametrize("args", [
    ("contacts", "import", __file__),  # a file that exists: the config fails first
    ("check", "--account", "crm", "--to", "a@example.org"),
    ("subject", "export", "a@example.org"),
    ("subject", "erase", "a@example.org", "--yes"),
])
def test_a_missing_config_file_is_exit_2_in_every_command(tmp_path: Path, args: tuple[str, ...]):
    clean_failure(run("--config", str(tmp_path / "nope.toml"), *args), 2,
                  "config file not found")


def test_an_empty_gateway_config_means_the_embedded_defaults(tmp_path: Path):
    def gateway(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env={**os.environ, "GATEWAY_CONFIG": ""}, check=False)
    # the default store, not a crash on "."
    listed = gateway("accounts", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    assert (tmp_path / "var" / "gateway.db").exists()
    # relative, so read from the working directory: said (not from the config's folder)
    assert "store.url is a relative path, read from the working directory" in listed.stderr


@pytest.mark.parametrize("args", [
    ("suppress", "add", "someone@example.net"), ("queue", "list", "--failed", "--json"),
])
def test_a_command_that_makes_a_new_store_says_so_and_where(config: Path, tmp_path: Path,
                                                            args: tuple[str, ...]):
    """Run from the wrong directory (the default store is ./var/gateway.db), `suppress add`
    suppressed into a new empty store and a cron job's `queue list --failed` saw no
    failures for ever, without a word, while `serve` went on with the real store. The
    contract's commands still work on a new machine; stderr says a store was made, once."""
    first = gateway_cli(config, *args)
    assert first.returncode == 0, first.stderr
    assert f"no store at {tmp_path / 'gateway.db'}: making a new, empty one" in first.stderr
    assert "[" not in first.stderr and (first.stdout.strip() in ("[]", "")
                                        or "suppressed" in first.stdout)
    again = gateway_cli(config, *args)
    assert again.returncode == 0 and "no store" not in again.stderr


def test_a_key_file_that_is_no_key_is_exit_2_naming_it(config: Path, tmp_path: Path):
    key = tmp_path / "hash.key"
    key.write_text("zz\n")
    config.write_text(config.read_text() + f'[secrets]\nhash_key_file = "{key}"\n')
    csv = tmp_path / "c.csv"
    csv.write_text("email\na@example.org\n")
    clean_failure(gateway_cli(config, "contacts", "import", str(csv)), 2, str(key))


@pytest.mark.parametrize("args", [("suppress", "add", "x@example.org"), ("suppress", "list"),
                                  ("contacts", "show", "x@example.org")])
def test_a_key_file_that_cannot_be_read_is_exit_2_naming_it(config: Path, tmp_path: Path,
                                                           args: tuple[str, ...]):
    """A directory (or a file without permission) where the key should be: a traceback."""
    (tmp_path / "adir").mkdir()
    result = run("--config", str(config), *args,
                 env={"GATEWAY_SECRETS_HASH_KEY_FILE": str(tmp_path / "adir")})
    clean_failure(result, 2, "cannot read or create this key file")


def test_serve_with_a_token_key_file_that_cannot_be_read_is_exit_2(config: Path,
                                                                   tmp_path: Path):
    """secrets.token_key_file a directory: "cannot start: [Errno 21]", exit 1, no key named."""
    from conftest import free_port

    (tmp_path / "kd").mkdir()
    config.write_text(config.read_text()
                      + f'[smtp]\nlisten = "127.0.0.1:{free_port()}"\n'
                      + f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'
                      + f'[secrets]\ntoken_key_file = "{tmp_path / "kd"}"\n')
    result = run("--config", str(config), "serve")
    clean_failure(result, 2, "cannot read or create this key file")
    assert str(tmp_path / "kd") in result.stderr


def test_a_store_restored_without_its_hash_key_is_refused_not_given_a_new_one(
        config: Path, tmp_path: Path):
    """The suppression list is keyed: a restore without secrets/hash.key, or a typo in
    secrets.hash_key_file, made a new key at once, and an address on the list was allowed."""
    make_store(config)
    assert gateway_cli(config, "suppress", "add", "someone@example.net").returncode == 0
    key = tmp_path / "secrets" / "hash.key"
    original = key.read_bytes()
    key.unlink()  # restored without secrets/
    rows = tmp_path / "rows.csv"
    rows.write_text("email\nsomeone@example.net\n")
    # a dry run too (it said "would import 1 row", exit 0, with a throwaway key; ops review)
    for args in (("suppress", "add", "other@example.net"), ("suppress", "list"),
                 ("contacts", "import", "--dry-run", str(rows))):
        clean_failure(gateway_cli(config, *args), 2, "restore")
        assert not key.exists()  # no new key left behind to be backed up as the real one
    other = tmp_path / "other.key"  # another key file named in the config
    other.write_text("ab" * 32 + "\n")
    clean_failure(run("--config", str(config), "suppress", "list",
                      env={"GATEWAY_SECRETS_HASH_KEY_FILE": str(other)}),
                  2, "not the address hash key the store")
    # a backup from before the fingerprint was kept (no key_fingerprints yet), restored
    # without its key: the first command made a new key and bound it
    import sqlite3
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        db.execute("DROP TABLE key_fingerprints")
        db.execute("DELETE FROM schema_migrations WHERE version = 19")
    csv = tmp_path / "c.csv"
    csv.write_text("email\nother@example.org\n")
    clean_failure(gateway_cli(config, "contacts", "import", str(csv)), 2, "restore")
    assert not key.exists()
    key.write_bytes(original)
    listed = gateway_cli(config, "suppress", "list", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1  # nothing added
    assert gateway_cli(config, "suppress", "remove", "someone@example.net").returncode == 0


def test_a_store_that_cannot_be_created_is_a_clear_error(tmp_path: Path):
    config = tmp_path / "g.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "a-file" / "gateway.db"}"\n')
    (tmp_path / "a-file").write_text("")
    clean_failure(gateway_cli(config, "accounts", "add", "crm", "--from-domain", "example.com",
                              "--password-stdin", stdin=STRONG_PASSWORD + "\n"),
                  1, "cannot create the store")


def test_a_malformed_notify_url_is_refused_and_no_account_is_made(config: Path):
    make_store(config)
    for url in ("http://[::1/", "http://[::1"):
        result = gateway_cli(config, "accounts", "add", "crm", "--from-domain", "example.com",
                             "--notify-url", url, "--password-stdin",
                             stdin=STRONG_PASSWORD + "\n")
        clean_failure(result, 2, "--notify-url")
    listed = gateway_cli(config, "accounts", "list", "--json")
    assert listed.returncode == 0 and "crm" not in listed.stdout
    # a credential in a refused URL is not echoed to stderr (journald, CI logs)
    result = gateway_cli(config, "accounts", "add", "crm", "--from-domain", "example.com",
                         "--notify-url", "https://u:s3cret@crm.example:99999/h?token=abc",
                         "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    clean_failure(result, 2, "--notify-url")
    assert "s3cret" not in result.stderr and "token=abc" not in result.stderr
    # plain http to another host: taken, with a warning
    result = gateway_cli(config, "accounts", "add", "crm", "--from-domain", "example.com",
                         "--notify-url", "http://crm.example/hook", "--password-stdin",
                         stdin=STRONG_PASSWORD + "\n")
    assert result.returncode == 0 and "plain http" in result.stderr


def test_adding_an_account_that_exists_says_so_before_any_password(config: Path):
    """The name was checked last: the password asked twice and judged, then "exists"."""
    make_store(config)
    for password in (STRONG_PASSWORD, "weak"):
        result = gateway_cli(config, "accounts", "add", "crm", "--from-domain", "example.com",
                             "--password-stdin", stdin=password + "\n")
        if password == STRONG_PASSWORD and result.returncode == 0:
            continue  # the first one makes it
        clean_failure(result, 1, "account 'crm' already exists")


def test_an_export_to_a_folder_that_does_not_exist_is_refused(config: Path, tmp_path: Path):
    make_store(config)
    out = tmp_path / "missing" / "x.json"
    clean_failure(gateway_cli(config, "subject", "export", "a@example.org", "--out", str(out)),
                  1, f"cannot write {out}")


def test_check_refuses_what_rcpt_to_would_refuse(config: Path):
    added = gateway_cli(config, "accounts", "add", "crm", "--from-domain", "example.com",
                        "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    clean_failure(gateway_cli(config, "check", "--account", "crm", "--to", "not an address"),
                  2, "--to: not a plain e-mail address")


def test_a_store_that_is_no_database_is_an_error_that_ends(tmp_path: Path):
    """The failed connection's thread was left running: the error was printed, then the
    command never ended (and `serve` ignored SIGTERM)."""
    (tmp_path / "notdb.db").write_text("this is not a database\n" * 100)
    config = tmp_path / "g.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "notdb.db"}"\n')
    result = run("--config", str(config), "accounts", "list")  # times out at 120 s if stuck
    clean_failure(result, 1, "file is not a database")


@pytest.mark.parametrize("args", [
    ("quarantine", "show", "99999999999999999999"),
    ("queue", "delete", "99999999999999999999"),
    ("requests", "close", "99999999999999999999"),
    ("queue", "list", "--limit", "99999999999999999999"),
    ("quarantine", "list", "--limit", "99999999999999999999"),
])
def test_an_id_past_sqlites_integers_is_a_usage_error(config: Path, args: tuple[str, ...]):
    """OverflowError: Python int too large to convert to SQLite INTEGER, and a traceback."""
    clean_failure(run("--config", str(config), *args), 2, "is not in the range")


def test_a_request_received_centuries_ago_is_a_typo(config: Path):
    """--received 0026-11-20 (for 2026) was taken: overdue at once, and a listing that
    crashed on its year."""
    clean_failure(run("--config", str(config), "requests", "open", "a@example.org", "--kind",
                      "access", "--received", "0026-11-20"), 2, "years ago")


@pytest.mark.parametrize("args", [
    ("contacts", "show", "not an address"), ("suppress", "add", "nope"),
    ("suppress", "remove", "a@@b"), ("requests", "open", "x", "--kind", "access"),
    ("subject", "export", "bad"), ("subject", "erase", "bad", "--yes"),
])
def test_an_invalid_address_is_a_usage_error_everywhere(config: Path, args: tuple[str, ...]):
    """`check --to bad` was exit 2, the others exit 1 (INTERFACE.md: 2 is usage)."""
    clean_failure(run("--config", str(config), *args), 2, "e-mail address")


def test_a_password_with_no_terminal_to_ask_on_names_password_stdin(config: Path):
    """Python's GetPassWarning, then 'Aborted!' (exit 1), and no word of --password-stdin."""
    result = run("--config", str(config), "accounts", "add", "crm", "--from-domain",
                 "example.com", stdin="")
    clean_failure(result, 2, "--password-stdin")
    assert "GetPassWarning" not in result.stderr
    # a script answering the prompt through a pipe still works (INTERFACE: "password
    # prompted, or one line on stdin")
    piped = run("--config", str(config), "accounts", "add", "crm", "--from-domain",
                "example.com", stdin=f"{STRONG_PASSWORD}\n{STRONG_PASSWORD}\n")
    assert piped.returncode == 0, piped.stderr


def test_dkim_keygen_refuses_a_selector_taken_and_an_out_folder_missing(config: Path,
                                                                        tmp_path: Path):
    """ed25519 beside RSA under one selector printed a second TXT record for the same name
    (DNS then holds two, and DKIM breaks); --out /nonexistent/k.key made /nonexistent."""
    made = run("--config", str(config), "dkim", "keygen", "--domain", "example.com",
               "--selector", "gw2026")
    assert made.returncode == 0, made.stderr
    clean_failure(run("--config", str(config), "dkim", "keygen", "--domain", "example.com",
                      "--selector", "gw2026", "--algorithm", "ed25519"), 1,  # refused
                  "gw2026._domainkey.example.com already has a key")
    assert run("--config", str(config), "dkim", "keygen", "--domain", "example.com",
               "--selector", "gw2026e", "--algorithm", "ed25519").returncode == 0
    # a [[dkim]] entry written before its key exists (as the example config suggests)
    planned = tmp_path / "planned.toml"
    planned.write_text(config.read_text() + '[[dkim]]\ndomain = "example.org"\n'
                       f'selector = "gw2026"\nkey_file = "{tmp_path / "none.key"}"\n')
    assert run("--config", str(planned), "dkim", "keygen", "--domain", "example.org",
               "--selector", "gw2026").returncode == 0
    missing = tmp_path / "no-such-folder" / "k.key"
    clean_failure(run("--config", str(config), "dkim", "keygen", "--domain", "example.com",
                      "--selector", "s3", "--out", str(missing)), 2, "does not exist")
    assert not missing.parent.exists()


def test_a_store_path_that_is_a_symbolic_link_is_refused(tmp_path: Path):
    """A link planted at the store's path (a folder others can write to): the gateway chmod
    the file it named and wrote its store over it."""
    victim = tmp_path / "precious.txt"
    victim.write_text("do not overwrite\n")
    victim.chmod(0o644)
    (tmp_path / "gateway.db").symlink_to(victim)
    config = tmp_path / "g.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "gateway.db"}"\n')
    clean_failure(run("--config", str(config), "accounts", "list"), 1, "symbolic link")
    assert victim.read_text() == "do not overwrite\n"
    assert victim.stat().st_mode & 0o777 == 0o644


def test_a_retention_dry_run_where_there_is_no_store_makes_none(config: Path, tmp_path: Path):
    """A dry run wrote a new 150 KB store (and said nothing) where it found none."""
    result = gateway_cli(config, "retention", "run", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"dry_run": True, "purged": []}
    assert "no store at" in result.stderr and "nothing to purge" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.toml"]


def test_a_store_migrated_by_a_newer_version_is_refused(config: Path, tmp_path: Path):
    """An upgrade rolled back: the older program ran on the newer store with no word, and
    its audit rows broke the newer one's chain."""
    import sqlite3

    make_store(config)
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        db.execute("INSERT INTO schema_migrations VALUES (999, '999_future.sql', 0)")
    result = gateway_cli(config, "queue", "list")
    clean_failure(result, 1, "newer than this program's")


def test_a_queue_reference_that_is_neither_form_says_what_is_expected(config: Path):
    """An operator review: `queue delete ZZZ` said "'ZZZ' is not a valid integer range",
    though a queue id (hex) is taken too."""
    for verb in ("delete", "retry"):
        clean_failure(run("--config", str(config), "queue", verb, "ZZZ"), 2,
                      "'ZZZ' is neither a queue entry's id")
    found = run("--config", str(config), "queue", "delete", "0123456789ABCDEF")
    assert found.returncode == 1 and "Traceback" not in found.stderr  # a queue id: looked up


def test_a_store_in_a_folder_that_is_not_writable_says_the_folder(config: Path,
                                                                 tmp_path: Path):
    """SQLite's "attempt to write a readonly database" blamed the file, writable itself:
    its -wal file beside it is what could not be made (ops review). Run without the
    capability that lets root write anywhere."""
    make_store(config)
    assert gateway_cli(config, "accounts", "list").returncode == 0
    tmp_path.chmod(0o555)
    try:
        result = subprocess.run(
            ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
             "--bounding-set=-dac_override,-dac_read_search",
             sys.executable, "-m", "gateway", "--config", str(config), "accounts", "list"],
            capture_output=True, text=True, timeout=120, check=False)
    finally:
        tmp_path.chmod(0o700)
    clean_failure(result, 1, f"the folder {tmp_path} must be writable")


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_option_of_every_command_says_what_it_does():
    """`accounts update --category`, `requests open --kind` and `subject export --format`
    were listed in --help with no word on them (docs review)."""
    from gateway.cli import main

    silent = [f"{' '.join(path)} {option.opts[0]}" for path, command in _commands(main)
              for option in command.params
              if isinstance(option, click.Option) and not (option.help or "").strip()]
    assert silent == []
    assert len(list(_commands(main))) > 30  # the walk reached the commands
