"""Config: embedded defaults, TOML, GATEWAY_* overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings


def test_embedded_defaults_match_the_contract():
    s = load_settings(None, environ={})
    assert s.smtp.listen == "127.0.0.1:2525" and s.http.listen == "127.0.0.1:8025"
    assert str(s.store.path) == "var/gateway.db"
    assert s.delivery.mode == "maildir" and s.delivery.maildir == "./var/outbox"
    assert s.store.ledger_reads == "process"  # the event loop never waits on the database
    assert s.smtp.trusted_clients == () and s.smtp.allow_plain_auth_on_loopback is False
    assert s.http.public_url == "http://127.0.0.1:8025"


@pytest.mark.parametrize(("listen", "url"), [
    ("127.0.0.1:3531", "http://127.0.0.1:3531"), ("0.0.0.0:80", "http://127.0.0.1:80"),
    ("[::1]:8025", "http://[::1]:8025"), ("[::]:8025", "http://[::1]:8025"),
    ("gw.example:8080", "http://gw.example:8080")])
def test_the_unsubscribe_links_follow_the_http_port_unless_public_url_is_set(
        tmp_path: Path, listen: str, url: str):
    """http.listen moved (GATEWAY_HTTP_LISTEN, the port being taken): the links still
    pointed at :8025, where nothing answered, or another gateway said 404."""
    s = load_settings(None, environ={"GATEWAY_HTTP_LISTEN": listen})
    assert s.http.public_url == url
    config = tmp_path / "g.toml"
    config.write_text('[http]\npublic_url = "https://unsubscribe.example.com"\n')
    s = load_settings(config, environ={"GATEWAY_HTTP_LISTEN": listen})
    assert s.http.public_url == "https://unsubscribe.example.com"


def test_the_documented_example_config_loads():
    example = Path(__file__).resolve().parents[1] / "config" / "gateway.toml"
    s = load_settings(example, environ={})
    assert s.source == str(example)


def test_environment_overrides_single_keys(tmp_path: Path):
    config = tmp_path / "g.toml"
    config.write_text('[delivery]\nmode = "smtp"\nport = 25\n')
    s = load_settings(config, environ={"GATEWAY_DELIVERY_PORT": "2526",
                                       "GATEWAY_DELIVERY_PASSWORD": "s3cret",
                                       "GATEWAY_SMTP_ALLOW_PLAIN_AUTH_ON_LOOPBACK": "true"})
    assert s.delivery.port == 2526 and s.delivery.password == "s3cret"
    assert s.smtp.allow_plain_auth_on_loopback is True


def test_an_environment_override_of_a_text_setting_is_taken_as_it_is(tmp_path: Path):
    config = tmp_path / "g.toml"
    config.write_text('[delivery]\nmode = "smtp"\nstarttls = true\n')
    s = load_settings(config, environ={"GATEWAY_DELIVERY_PASSWORD": "123456789012",
                                       "GATEWAY_DELIVERY_USERNAME": '"quoted"',
                                       "GATEWAY_CONTROLLER_NAME": "Acme [EU]",
                                       "GATEWAY_POLICY_FORBIDDEN_SOURCES": '["broker"]'})
    assert s.delivery.password == "123456789012" and s.delivery.username == '"quoted"'
    assert s.controller.name == "Acme [EU]"
    assert s.policy.forbidden_sources == ("broker",)
    with pytest.raises(ConfigError, match="GATEWAY_DELIVERY_PORT"):
        load_settings(config, environ={"GATEWAY_DELIVERY_PORT": "twenty-five"})


def test_trusted_clients_are_typed_and_match_networks(tmp_path: Path):
    config = tmp_path / "g.toml"
    config.write_text('[smtp]\ntrusted_clients = [{ network = "10.0.0.0/8", account = "crm" }]\n')
    (client,) = load_settings(config, environ={}).smtp.trusted_clients
    assert client.account == "crm" and client.contains("10.1.2.3")
    assert not client.contains("11.0.0.1")


@pytest.mark.parametrize("body, words", [
    ("[smtp]\nlisten = 2525\n", "smtp.listen"),
    ("[smtp]\nlisten = \"nohostport\"\n", "smtp.listen"),
    ("[smtp]\nallow_plain_auth_on_loopback = 1\n", "smtp.allow_plain_auth_on_loopback"),
    ("[smtp]\ntrusted_clients = [{ network = \"not-a-net\", account = \"x\" }]\n",
     "trusted_clients[0].network"),
    ("[smtp]\ntrusted_clients = [{ network = \"10.0.0.0/8\", acount = \"x\" }]\n", "acount"),
    ("[policy]\nunknown_recipient = \"accept\"\n", "policy.unknown_recipient"),
    ("[store]\nurl = \"mysql://x\"\n", "store.url"),
    ("[store]\nledger_reads = \"thread\"\n", "store.ledger_reads"),
    ("[delivery]\nmode = \"smtp\"\nusername = \"u\"\n", "delivery.username"),
    ("[smtp]\ntls_cert = \"a.pem\"\n", "smtp.tls_key"),
    ("not toml at all [", "not valid TOML"),
    ("[smtp]\ntrusted_clients = [{ network = \"10.0.0.0/8\" }]\n",
     "smtp.trusted_clients[0].account"),
    ("[delivery]\nport = 70000\n", "delivery.port"),
    ("[delivery]\nport = 0\n", "delivery.port"),
    ("[quarantine]\nretention_days = -1\n", "quarantine.retention_days"),
    ("[http]\npublic_url = \"not a url\"\n", "http.public_url"),
    ("[http]\npublic_url = \"ftp://gw.example\"\n", "http.public_url"),
    ("[http]\npublic_url = \"https://gw.example/u\\r\\nX-Evil: 1\"\n", "http.public_url"),
    ("[http]\npublic_url = \"http://[::1\"\n", "http.public_url"),
    ("[http]\npublic_url = \"http://gw.example:port\"\n", "http.public_url"),
    # between <> in List-Unsubscribe: a second link (RFC 8058 wants one), an 8-bit header
    ("[http]\npublic_url = \"https://u.example/x>,<https://evil.example/p\"\n",
     "http.public_url"),
    ("[http]\npublic_url = \"https://d\u00e9sabonner.example\"\n", "xn--"),
    ("[smtp]\nhostname = \"gw.example.com>, <https://evil.example/phish\"\n",
     "smtp.hostname"),
    ("[smtp]\nhostname = \"gw example.com\"\n", "smtp.hostname"),
    ("[smtp]\nhostname = \"-gw.example.com\"\n", "smtp.hostname"),
    ("[smtp]\nhostname = \"gw..example.com\"\n", "smtp.hostname"),
    ("[smtp]\nhostname = \"\"\n", "smtp.hostname"),
    ("[http]\nrequest_timeout_seconds = 0\n", "http.request_timeout_seconds"),
    ("[http]\nrequest_timeout_seconds = inf\n", "http.request_timeout_seconds"),
    ("[http]\nmax_connections = 0\n", "http.max_connections"),
    ("[smtp]\nidle_timeout = -5.0\n", "smtp.idle_timeout"),
    ("[smtp]\nauth_lockout_minutes = nan\n", "smtp.auth_lockout_minutes"),
    ("[smtp]\nauth_failure_delay = -1.0\n", "smtp.auth_failure_delay"),
    ("[delivery]\nmax_age_hours = -1.0\n", "delivery.max_age_hours"),
    ("[delivery]\nretry_base_seconds = inf\n", "delivery.retry_base_seconds"),
    ("[delivery]\nscan_seconds = 0\n", "delivery.scan_seconds"),
    ("[webhooks]\nnotify_retry_base_seconds = -inf\n", "webhooks.notify_retry_base_seconds"),
    ("[smtp]\nlisten = \"127.0.0.1:\u00b2\"\n", "smtp.listen"),  # isdigit(), not int()
    ("[store]\nurl = \"sqlite:///\"\n", "store.url"),
    ("smtp = 5\n", r"[smtp] must be a table"),
])
def test_invalid_config_names_the_key(tmp_path: Path, body: str, words: str):
    config = tmp_path / "g.toml"
    config.write_text(body)
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_settings(config, environ={})


def test_a_config_file_that_cannot_be_read_is_a_config_error(tmp_path: Path):
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes(b"\xff\xfe[smtp]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(not_utf8, environ={})
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(not_utf8 / "x.toml", environ={})  # a file, not a folder


def test_an_override_of_a_section_that_is_no_table_is_a_config_error(tmp_path: Path):
    config = tmp_path / "g.toml"
    for body in ("smtp = 5\n", "[[smtp]]\nlisten = \"127.0.0.1:25\"\n"):
        config.write_text(body)
        with pytest.raises(ConfigError, match=r"\[smtp\] must be a table"):
            load_settings(config, environ={"GATEWAY_SMTP_LISTEN": "1.2.3.4:25"})


@pytest.mark.parametrize("key", ["name", "address", "privacy_url", "dpo_email"])
def test_an_empty_controller_identity_is_refused(tmp_path: Path, key: str):
    """Every notice names them: an empty one rendered "Sender: , ." (GDPR 14(1)(a)-(b))."""
    path = tmp_path / "g.toml"
    path.write_text(f'[controller]\n{key} = "  "\n')
    with pytest.raises(ConfigError, match=f"controller.{key}: must not be empty"):
        load_settings(path)


def test_a_config_error_never_prints_a_secret(tmp_path: Path, monkeypatch):
    """stderr goes to journald and CI logs: the value of a password or secret of the wrong
    type, or a store URL's password, was printed in full."""
    path = tmp_path / "g.toml"
    path.write_text("[delivery]\npassword = 98765432109876\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert "delivery.password" in str(error.value) and "98765432109876" not in str(error.value)
    path.write_text("[http]\nmetrics_token = 123456789\n")  # the bearer token of /metrics
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert "http.metrics_token" in str(error.value) and "123456789" not in str(error.value)
    monkeypatch.setenv("GATEWAY_STORE_URL", "postgresql://gw:DBPASS-SECRET@db.internal/gw")
    path.write_text("")
    with pytest.raises(ConfigError) as error:
        load_settings(path).store.path  # noqa: B018
    assert "DBPASS-SECRET" not in str(error.value) and "//***@db.internal" in str(error.value)


def test_dkim_keys_are_overridden_by_the_environment_like_any_other(tmp_path: Path):
    """GATEWAY_DKIM_* were ignored without a word (INTERFACE.md: any single key)."""
    path = tmp_path / "g.toml"
    path.write_text('[[dkim]]\ndomain = "example.com"\nselector = "s1"\nkey_file = "a.key"\n')
    settings = load_settings(path, {"GATEWAY_DKIM_KEY_FILE": "/run/secrets/b.key",
                                    "GATEWAY_DKIM_SELECTOR": "s2"})
    assert [(d.domain, d.selector, d.key_file) for d in settings.dkim] == [
        ("example.com", "s2", "/run/secrets/b.key")]
    empty = tmp_path / "e.toml"
    empty.write_text("")
    only_env = load_settings(empty, {"GATEWAY_DKIM_DOMAIN": "example.org",
                                     "GATEWAY_DKIM_SELECTOR": "s", "GATEWAY_DKIM_KEY_FILE": "k"})
    assert [d.domain for d in only_env.dkim] == ["example.org"]
    path.write_text(path.read_text() * 2)
    with pytest.raises(ConfigError, match="2 \\[\\[dkim\\]\\] entries"):
        load_settings(path, {"GATEWAY_DKIM_SELECTOR": "s2"})


def test_a_near_miss_in_an_environment_override_is_an_error_naming_it(tmp_path: Path):
    """GATEWAY_WEBHOOK_OPT_OUT_SECRET (no S) was ignored: every webhook got 401."""
    with pytest.raises(ConfigError, match="did you mean GATEWAY_WEBHOOKS_OPT_OUT_SECRET"):
        load_settings(None, environ={"GATEWAY_WEBHOOK_OPT_OUT_SECRET": "x" * 32})
    with pytest.raises(ConfigError, match="GATEWAY_SMTP_MAXMESSAGE_BYTES: .smtp. has no key"):
        load_settings(None, environ={"GATEWAY_SMTP_MAXMESSAGE_BYTES": "1000"})
    # another program's variable is none of ours, and no error
    for other in ("GATEWAY_INTERFACE", "GATEWAY_SECRET", "GATEWAY_WEBHOOK_SERVICE_HOST"):
        assert load_settings(None, environ={other: "x"}).smtp.processes >= 1, other


def _service_links(service: str, ip: str, port: int) -> dict[str, str]:
    """What Kubernetes' service links (enableServiceLinks, on by default) put in every pod of
    the namespace for a Service."""
    prefix = service.upper().replace("-", "_")
    url = f"tcp://{ip}:{port}"
    return {f"{prefix}_SERVICE_HOST": ip, f"{prefix}_SERVICE_PORT": str(port),
            f"{prefix}_SERVICE_PORT_SMTP": str(port), f"{prefix}_PORT": url,
            f"{prefix}_PORT_{port}_TCP": url, f"{prefix}_PORT_{port}_TCP_PROTO": "tcp",
            f"{prefix}_PORT_{port}_TCP_PORT": str(port), f"{prefix}_PORT_{port}_TCP_ADDR": ip}


@pytest.mark.parametrize("service, port", [("gateway-smtp", 2525), ("gateway-http", 8025),
                                           ("gateway-delivery", 25)])
def test_kubernetes_service_links_of_a_service_named_gateway_are_no_overrides(service, port):
    """A Service named gateway-smtp made GATEWAY_SMTP_SERVICE_HOST, and every command
    stopped on '[smtp] has no key service_host'; gateway-delivery's
    GATEWAY_DELIVERY_PORT=tcp://... was read as delivery.port."""
    settings = load_settings(None, environ=_service_links(service, "10.96.0.12", port + 1))
    assert settings.delivery.port == 25
    assert settings.smtp.listen == "127.0.0.1:2525"
    # a real override by the same name still is one
    assert load_settings(None, environ={"GATEWAY_DELIVERY_PORT": "587"}).delivery.port == 587


@pytest.mark.parametrize("key, text, expected", [
    ("SMTP_TLS_SELF_SIGNED", "False", "true or false, in lower case"),
    ("DELIVERY_PORT", "twenty-five", "a whole number, such as 30"),
    ("DELIVERY_RETRY_BASE_SECONDS", "soon", "a number, such as 2.5"),
    ("POLICY_FORBIDDEN_SOURCES", "broker", 'a TOML list, such as ["a", "b"]'),
    ("SMTP_TRUSTED_CLIENTS", "10.0.0.0/8", '[{network = "10.0.0.0/8", account = "crm"}]'),
])
def test_an_override_that_is_no_value_says_how_to_write_one(key, text, expected):
    """The operator was told `not a value for smtp.tls_self_signed: 'False'`, not what
    would be one."""
    with pytest.raises(ConfigError) as error:
        load_settings(None, environ={f"GATEWAY_{key}": text})
    assert f"GATEWAY_{key}" in str(error.value) and expected in str(error.value)


@pytest.mark.parametrize("key", ["smtp.listen", "http.listen"])
def test_port_0_is_refused_for_a_listener(tmp_path: Path, key: str):
    """Port 0 started on a random port and the banner said ":0": no client could be told."""
    section, name = key.split(".")
    config = tmp_path / "g.toml"
    config.write_text(f'[{section}]\n{name} = "127.0.0.1:0"\n')
    with pytest.raises(ConfigError, match=f"{key}: port 0"):
        load_settings(config, environ={})


def test_a_config_error_says_whether_the_file_or_the_environment_gave_the_value(
        tmp_path: Path):
    """GATEWAY_SMTP_LISTEN=0.0.0.0 gave "smtp.listen: expected HOST:PORT", and the operator
    searched a correct file; a file's error did not name the file."""
    config = tmp_path / "g.toml"
    config.write_text("")
    with pytest.raises(ConfigError, match=r"environment variable GATEWAY_SMTP_LISTEN\)$"):
        load_settings(config, environ={"GATEWAY_SMTP_LISTEN": "0.0.0.0"})
    config.write_text('[smtp]\nlisten = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=rf"expected HOST:PORT.*\(in {config}\)$"):
        load_settings(config, environ={})


@pytest.mark.parametrize("key", ["webhooks.opt_out_secret", "webhooks.notify_secret",
                                 "http.metrics_token"])
def test_a_weak_shared_secret_is_named_without_showing_it(tmp_path: Path, key: str):
    """COMPLIANCE 7 (NESTOR: one-character passwords): any opt_out_secret was taken, "x" too;
    one signed webhook or notification seen let anyone guess a short key offline, and with it
    sign the unsubscription of every address. serve refuses them (tests/e2e/test_serve.py);
    the settings still load, so that the other commands work after an upgrade."""
    from gateway.settings import weak_secrets

    section, _, name = key.partition(".")
    path = tmp_path / "g.toml"
    for weak, why in (("x", "4 bits"), ("Summer-2026!", "78 bits"),
                      ("0123456789abcdef01234567", "124 bits"),
                      ("ab" * 40, "2 characters repeated"),
                      ("abcdefgh" * 4, "8 characters repeated"),
                      ("Summer2026!" * 3, "11 characters repeated"),
                      ("0123456789abcdef 0123456789abcdef", "spaces")):
        path.write_text(f'[{section}]\n{name} = "{weak}"\n')
        [text] = weak_secrets(load_settings(path))
        assert text.startswith(f"{key}: too weak a secret") and why in text, text
        assert (len(weak) < 4 or weak not in text) and "openssl rand -hex 32" in text
    for strong in ("3f9a1c0e7b2d4a6f8e5c1b0d9a7f3e2c", "Zq7-wR2p!x9Lm4Tb8vN3#kD5"):
        path.write_text(f'[{section}]\n{name} = "{strong}"\n')
        assert weak_secrets(load_settings(path)) == []
    path.write_text(f'[{section}]\n{name} = ""\n')  # empty: the feature's own default
    assert weak_secrets(load_settings(path)) == []
    # from the environment, as INTERFACE.md advises for secrets, the same
    path.write_text("")
    assert weak_secrets(load_settings(
        path, {f"GATEWAY_{section.upper()}_{name.upper()}": "short-secret"}))
