"""`gateway accounts` through the real console entry point, on a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import STRONG_PASSWORD, gateway_cli, make_store


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "g.db"}"\n')
    return path


def add(config: Path, name: str = "crm", password: str = STRONG_PASSWORD, *extra: str):
    return gateway_cli(config, "accounts", "add", name, "--from-domain", "Example.COM",
                       "--password-stdin", *extra, stdin=password + "\n")


def listing(config: Path) -> list[dict]:
    result = gateway_cli(config, "accounts", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_add_list_update_remove(config: Path):
    result = add(config, "crm", STRONG_PASSWORD, "--from-domain", "évian.fr",
                 "--topics", "saas; crm", "--product-categories", "software")
    assert result.returncode == 0, result.stderr
    assert "example.com" in result.stdout
    (account,) = listing(config)
    assert account["name"] == "crm" and account["from_domains"] == ["example.com",
                                                                    "xn--vian-9oa.fr"]
    assert account["topics"] == ["saas", "crm"] and account["product_categories"] == ["software"]
    assert not any("hash" in key or "password" in key for key in account)
    assert gateway_cli(config, "accounts", "update", "crm", "--topics", "",
                       "--notify-url", "https://crm.example.com/unsub").returncode == 0
    (account,) = listing(config)
    assert account["topics"] == [] and account["notify_url"] == "https://crm.example.com/unsub"
    assert account["from_domains"] == ["example.com", "xn--vian-9oa.fr"]
    assert gateway_cli(config, "accounts", "update", "crm", "--notify-url",
                       "https://hook:s3cr3t-Pw@crm.example.com/unsub").returncode == 0
    listed = gateway_cli(config, "accounts", "list", "--json").stdout
    assert "s3cr3t-Pw" not in listed  # the endpoint's basic auth is not printed back
    assert json.loads(listed)[0]["notify_url"] == "https://hook:***@crm.example.com/unsub"
    table = gateway_cli(config, "accounts", "list")
    assert "crm" in table.stdout and "1 accounts" in table.stdout
    assert gateway_cli(config, "accounts", "remove", "crm").returncode == 0
    assert listing(config) == []


@pytest.mark.parametrize("password, words", [
    ("a", "bits"),                       # NESTOR: one-character passwords
    ("Abcdef12", "bits"),                # 8 characters, 3 classes: about 48 bits
    ("crm-Correct-Horse-42!", "name"),   # contains the account name
])
def test_weak_passwords_are_refused_and_nothing_is_created(config: Path, password: str,
                                                            words: str):
    make_store(config)
    result = add(config, "crm", password)
    assert result.returncode == 1
    assert "password refused" in result.stderr and words in result.stderr
    assert listing(config) == []


def test_a_listing_written_to_a_pipe_is_never_cut(config: Path):
    """Piped, rich took 80 columns and cut long values with "…": `gateway accounts list |
    grep DOMAIN` (or queue list | grep ADDRESS) found nothing."""
    domain = "mail.campaigns.very-long-subsidiary-name.groupe-industriel.example"
    assert gateway_cli(config, "accounts", "add", "campaign-tool-of-the-paris-office",
                       "--from-domain", domain, "--password-stdin",
                       stdin=STRONG_PASSWORD + "\n").returncode == 0
    listed = gateway_cli(config, "accounts", "list")  # stdout is a pipe here
    assert listed.returncode == 0
    assert domain in listed.stdout and "campaign-tool-of-the-paris-office" in listed.stdout
    assert "…" not in listed.stdout


def test_duplicate_and_unknown_accounts_exit_1(config: Path):
    assert add(config).returncode == 0
    again = add(config)
    assert again.returncode == 1 and "already exists" in again.stderr
    for args in (("unlock", "ghost"), ("remove", "ghost"), ("update", "ghost", "--topics", "a")):
        result = gateway_cli(config, "accounts", *args)
        assert result.returncode == 1 and "ghost" in result.stderr, args
    result = gateway_cli(config, "accounts", "passwd", "ghost", "--password-stdin",
                         stdin=STRONG_PASSWORD + "\n")
    assert result.returncode == 1 and "ghost" in result.stderr


@pytest.mark.parametrize("args, words", [
    (["accounts", "add", "crm", "--from-domain", "not a domain", "--password-stdin"],
     "--from-domain"),
    (["accounts", "add", "crm", "--password-stdin"], "--from-domain"),
    (["accounts", "add", "bad name!", "--from-domain", "example.com", "--password-stdin"],
     "invalid account name"),
    (["accounts", "add", "crm", "--from-domain", "example.com", "--category", "spam",
      "--password-stdin"], "category"),
    (["accounts", "update", "crm", "--notify-url", "ftp://x"], "--notify-url"),
    (["accounts", "update", "crm", "--notify-url", "http://127.0.0.1:8o8o/hook"],
     "--notify-url"),  # a port typo: urlsplit takes it, the sender could not
    (["accounts", "update", "crm", "--notify-url", "http://crm.example/a\r\nX-Injected: 1"],
     "control characters"),
    (["accounts", "update", "crm", "--notify-url", "http://crm.example/a\tb"],
     "control characters"),
    (["accounts", "update", "crm", "--notify-url", "https:///nohost"], "--notify-url"),
    # SSRF: the cloud metadata service, as written or IPv4-mapped; the unspecified address
    (["accounts", "update", "crm", "--notify-url", "http://169.254.169.254/latest/"],
     "link-local"),
    (["accounts", "update", "crm", "--notify-url", "http://[::ffff:169.254.169.254]/"],
     "link-local"),
    (["accounts", "update", "crm", "--notify-url", "http://0.0.0.0:8080/"], "link-local"),
])
def test_usage_errors_exit_2_with_the_option_named(config: Path, args: list[str], words: str):
    result = gateway_cli(config, *args, stdin=STRONG_PASSWORD + "\n")
    assert result.returncode == 2 and words in result.stderr


def test_passwd_changes_the_password_and_unlocks(config: Path):
    assert add(config).returncode == 0
    new = "Another-Strong-Passphrase-2026!"
    result = gateway_cli(config, "accounts", "passwd", "crm", "--password-stdin",
                         stdin=new + "\n")
    assert result.returncode == 0, result.stderr
    weak = gateway_cli(config, "accounts", "passwd", "crm", "--password-stdin", stdin="short\n")
    assert weak.returncode == 1 and "password refused" in weak.stderr
    assert gateway_cli(config, "accounts", "unlock", "crm").returncode == 0


def test_help_explains_the_password_rule():
    result = gateway_cli(Path("/nonexistent.toml"), "accounts", "add", "--help")
    assert result.returncode == 0 and "80 bits" in result.stdout


async def test_a_notify_url_is_checked_again_where_it_resolves_when_sent():
    """A name may point at 169.254.169.254 (or be changed to): the sender looks where it
    resolves before each POST. Loopback and private networks stay allowed."""
    from gateway.notify import unsafe_destination

    assert "link-local" in await unsafe_destination("http://169.254.169.254/x")
    assert "link-local" in await unsafe_destination("http://[fe80::1]/x")
    assert await unsafe_destination("http://localhost:8080/hook") is None
    assert await unsafe_destination("http://[::1]:8080/hook") is None  # (in IPv6's ::/8)
    assert await unsafe_destination("http://[::ffff:127.0.0.1]/hook") is None
    assert "link-local" in await unsafe_destination("http://[::]/x")
    assert await unsafe_destination("http://10.1.2.3/hook") is None
    assert await unsafe_destination("http://no-such-host.invalid/hook") is None  # its own error
