"""`gateway dkim`: DKIM signing keys and the DNS records that publish them."""

from __future__ import annotations

import re
from pathlib import Path

import click

from gateway.addresses import normalize_domain
from gateway.cli import EXIT_REFUSED, EXIT_USAGE, CliState, errors_to_exit_codes, fail
from gateway.security.dkim_keys import dns_record, generate_key

SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}"
                      r"[a-z0-9])?)*$")


@click.group()
def dkim() -> None:
    """DKIM keys: every copy is signed for its From domain, after every change."""


@dkim.command()
@click.option("--domain", required=True, help="The From domain the key signs for.")
@click.option("--selector", required=True, help='The selector, e.g. "gw2026".')
@click.option("--algorithm", type=click.Choice(["rsa", "ed25519"]), default="rsa",
              show_default=True, help="RSA-2048 (every receiver) or ed25519 (RFC 8463, as a "
              "second signature beside RSA).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Key file to write (default: dkim/<domain>.<selector>.<algorithm>.key "
                   "beside the store). Never overwritten.")
@click.pass_obj
def keygen(state: CliState, domain: str, selector: str, algorithm: str,
           out: Path | None) -> None:
    """Write a new private key (owner-only) and print its DNS TXT record and config lines."""
    try:
        domain = normalize_domain(domain)
    except ValueError as exc:
        fail(f"--domain: {exc}", EXIT_USAGE)
    selector = selector.lower()
    if not SELECTOR.match(selector):
        fail(f"--selector: not a DNS label: {selector!r}", EXIT_USAGE)
    folder = state.settings.store.path.parent / "dkim"
    other = "ed25519" if algorithm == "rsa" else "rsa"
    # a configured key only once its file exists (the config may be written first)
    taken = [str(entry.key_file) for entry in state.settings.dkim
             if _domain(entry.domain) == domain and entry.selector.lower() == selector
             and Path(entry.key_file).exists()]
    if (folder / f"{domain}.{selector}.{other}.key").exists():
        taken.append(str(folder / f"{domain}.{selector}.{other}.key"))
    if taken:
        # one TXT record per selector: a second key under it breaks the first signature
        fail(f"--selector: {selector}._domainkey.{domain} already has a key ({taken[0]}); "
             f"give this {algorithm} key a selector of its own, e.g. {selector}"
             f"{'e' if algorithm == 'ed25519' else 'r'}", EXIT_REFUSED)
    if out is not None and not out.parent.is_dir():
        fail(f"--out: the folder {out.parent} does not exist", EXIT_USAGE)
    with errors_to_exit_codes():
        path = out or folder / f"{domain}.{selector}.{algorithm}.key"
        public = generate_key(path, algorithm)
    click.echo(f"wrote {path} (owner-only)\n\nPublish this DNS record:\n"
               f"{dns_record(domain, selector, algorithm, public)}\n\n"
               "Then add to the config:\n"
               f'[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\n'
               f'key_file = "{path.resolve()}"')


def _domain(name: str) -> str:
    try:
        return normalize_domain(name)
    except ValueError:
        return name.lower()


COMMANDS = [dkim]
