#!/usr/bin/env python3
"""Per-copy transform benchmark: what the delivery worker does to each recipient's copy.

Right before a copy is sent, gateway.compose.Composer.prepare runs four steps on it; this
script times each one in this process, without SMTP, store or ledger:

  1. render   `render(choose(templates, "fr", "en"), NoticeFacts(...))`   (transform.notice)
  2. headers  `personalise(content, Personalisation(...))`                (transform.pipeline)
  3. notice   `add_notice(content, notice)`: MIME scan, decode, re-encode (transform.footer)
  4. dkim     `Signer(keys).sign(content, "example.com")`                 (transform.dkim)

for three messages (a ~4 KB and a ~20 KB multipart/alternative with quoted-printable UTF-8
text/plain and text/html parts, and a ~20 KB multipart/mixed with a ~10 KB base64 PDF-like
attachment) and three signing set-ups (RSA-2048 through OpenSSL, the gateway's default;
RSA-2048 with dkimpy's pure-Python arithmetic, for comparison; RSA-2048 + ed25519). Every
(message, set-up) pair runs once per iteration, interleaved, so that all share the machine's
noise. Median and p99 per step and per copy; target: <= 2 ms median per 20 KB copy, signing
included (default set-up). After timing, each signed output is checked once with
`dkim.verify` against DNS records built from the public keys, and the notice and the
attachment are checked in the decoded copy. Figures only: exit 0 whatever PASS/MISS says,
1 when something failed.

    python bench/transform_bench.py                  # 1,000 iterations (~45 s)
    python bench/transform_bench.py --quick          # 200 iterations
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email
import email.policy
import gc
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.header import Header
from importlib import metadata
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.notice_templates import load_templates
from gateway.security.dkim_keys import generate_key, load_keys
from gateway.settings import DkimSettings
from gateway.transform import dkim as gateway_dkim
from gateway.transform.dkim import Signer
from gateway.transform.footer import add_notice
from gateway.transform.notice import NoticeFacts, NoticeTemplate, choose, render
from gateway.transform.pipeline import Personalisation, personalise

from benchlib import load_average

DOMAIN = "example.com"
RSA_SELECTOR = "bench-rsa"
ED25519_SELECTOR = "bench-ed25519"
TARGET_MS = 2.0  # median per 20 KB copy, signing included, default set-up
DEFAULT_ITERATIONS = 1000
QUICK_ITERATIONS = 200
MIN_ITERATIONS = 500  # below this, p99 rests on too few samples (printed as a warning)
STEPS = ("render", "headers", "notice", "dkim")
SEED = 20261125


# --- the messages ---------------------------------------------------------------------------

SENTENCES = (
    "Découvrez notre offre d'été : jusqu'à 30 % de réduction sur les abonnements annuels.",
    "Nos équipes à Lyon et à Montréal préparent une nouvelle version du logiciel de gestion.",
    "Les clients qui ont déjà migré gagnent en moyenne deux heures par semaine.",
    "Inscrivez-vous au webinaire du 3 décembre : démonstration, questions et réponses.",
    "Le prix reste fixé à 49 € HT par mois et par poste, sans engagement de durée.",
    "Vous trouverez ci-dessous le détail des nouveautés, classées par module.",
    "Facturation : l'export comptable accepte désormais les formats FEC et CSV étendu.",
    "Sécurité : l'authentification à deux facteurs devient la règle pour les administrateurs.",
)


def _grow(paragraphs: list[str], rng: random.Random) -> None:
    """One more sentence: a message grows by ~200 bytes (text and HTML) at a time."""
    if not paragraphs or paragraphs[-1].count(". ") >= rng.randint(1, 3):
        paragraphs.append(rng.choice(SENTENCES))
    else:
        paragraphs[-1] += " " + rng.choice(SENTENCES)


def _wrap(text: str, width: int = 72) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def _qp(text: str) -> bytes:
    """UTF-8 quoted-printable with CRLF line ends, as a mailing tool would send it."""
    data = text.replace("\r\n", "\n").encode("utf-8")
    return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")


def _headers(subject: str, content_type: str) -> bytes:
    return ("From: \"ACME Nouvelles\" <news@example.com>\r\n"
            "To: <jeanne.martin@client.example>\r\n"
            f"Subject: {Header(subject, 'utf-8').encode()}\r\n"
            "Date: Wed, 25 Nov 2026 09:30:00 +0100\r\n"
            "Message-ID: <20261125093000.4f2a@mailer.example.com>\r\n"
            "MIME-Version: 1.0\r\n"
            "X-Mailer: bench-mailer 1.0\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode("ascii")


def _alternative(paragraphs: list[str], boundary: str) -> bytes:
    """The body of a multipart/alternative: text/plain and text/html, both QP UTF-8."""
    text = "\r\n\r\n".join("\r\n".join(_wrap(p)) for p in paragraphs) + "\r\n"
    html = ('<!DOCTYPE html>\r\n<html lang="fr"><head><meta charset="utf-8">'
            "<title>ACME Nouvelles</title></head>\r\n"
            '<body style="font-family:Arial,sans-serif;color:#222">\r\n'
            '<table width="600" cellpadding="0" cellspacing="0"><tr><td>\r\n'
            + "".join(f'<p style="margin:0 0 12px 0;line-height:1.4">{p}</p>\r\n'
                      for p in paragraphs)
            + "</td></tr></table>\r\n</body></html>\r\n")
    return (f"--{boundary}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii") + _qp(text) \
        + (f"\r\n--{boundary}\r\n"
           "Content-Type: text/html; charset=utf-8\r\n"
           "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii") + _qp(html) \
        + f"\r\n--{boundary}--\r\n".encode("ascii")


def _pdf_like(size: int, rng: random.Random) -> bytes:
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    tail = b"\n%%EOF\n"
    return head + rng.randbytes(size - len(head) - len(tail)) + tail


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i:i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


@dataclass(frozen=True)
class Message:
    label: str
    content: bytes
    attachment: bytes | None = None  # the decoded attachment, to check it leaves unchanged


def build_alternative(label: str, target: int, rng: random.Random) -> Message:
    paragraphs: list[str] = []
    while True:
        _grow(paragraphs, rng)
        content = _headers("Nouveautés de novembre",
                           'multipart/alternative; boundary="=_alt_7f3a"') \
            + _alternative(paragraphs, "=_alt_7f3a")
        if len(content) >= target:
            return Message(label, content)


def build_mixed(label: str, target: int, attachment_b64: int, rng: random.Random) -> Message:
    pdf = _pdf_like(attachment_b64 * 57 // 78, rng)  # 57 raw bytes -> 76 chars + CRLF
    attachment = (b"--=_mix_91c2\r\n"
                  b'Content-Type: application/pdf; name="tarifs-2027.pdf"\r\n'
                  b"Content-Transfer-Encoding: base64\r\n"
                  b'Content-Disposition: attachment; filename="tarifs-2027.pdf"\r\n\r\n'
                  + _base64_lines(pdf))
    paragraphs: list[str] = []
    while True:
        _grow(paragraphs, rng)
        content = (_headers("Nos tarifs 2027", 'multipart/mixed; boundary="=_mix_91c2"')
                   + b"--=_mix_91c2\r\n"
                   b'Content-Type: multipart/alternative; boundary="=_alt_7f3a"\r\n\r\n'
                   + _alternative(paragraphs, "=_alt_7f3a") + b"\r\n"
                   + attachment + b"--=_mix_91c2--\r\n")
        if len(content) >= target:
            return Message(label, content, pdf)


# --- the signing set-ups ------------------------------------------------------------------

@dataclass
class SetUp:
    label: str
    signer: Signer
    openssl: bool  # use_openssl_rsa(openssl) before each of its copies
    records: dict[str, str]  # selector -> DNS TXT record value


def rsa_record(key_file: Path) -> str:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def ed25519_record(key_file: Path) -> str:
    seed = base64.b64decode(key_file.read_bytes().strip(), validate=True)
    raw = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def make_set_ups(folder: Path) -> list[SetUp]:
    """Keys generated by the gateway's own keygen; the DNS records are built independently
    from the private key files and checked against the p= value keygen returned."""
    rsa_file, ed_file = folder / "rsa.key", folder / "ed25519.key"
    rsa_p = generate_key(rsa_file, "rsa")
    ed_p = generate_key(ed_file, "ed25519")
    records = {RSA_SELECTOR: rsa_record(rsa_file), ED25519_SELECTOR: ed25519_record(ed_file)}
    for selector, p in ((RSA_SELECTOR, rsa_p), (ED25519_SELECTOR, ed_p)):
        if not records[selector].endswith(f"p={p}"):
            raise RuntimeError(f"generate_key returned a p= value for {selector} that does not "
                               "match the key it wrote")
    rsa_only = load_keys((DkimSettings(DOMAIN, RSA_SELECTOR, str(rsa_file)),))
    dual = load_keys((DkimSettings(DOMAIN, RSA_SELECTOR, str(rsa_file)),
                      DkimSettings(DOMAIN, ED25519_SELECTOR, str(ed_file))))
    rsa_records = {RSA_SELECTOR: records[RSA_SELECTOR]}
    return [
        SetUp("RSA-2048 via OpenSSL (default)", Signer(rsa_only), True, rsa_records),
        SetUp("RSA-2048, dkimpy pure-Python arithmetic", Signer(rsa_only), False, rsa_records),
        SetUp("RSA-2048 (OpenSSL) + ed25519", Signer(dual), True, records),
    ]


# --- one copy -------------------------------------------------------------------------------

FACTS = dict(controller="ACME SAS", controller_address="12 rue de la Paix, 75002 Paris",
             privacy_url="https://acme.example/confidentialite", dpo_email="dpo@acme.example",
             retention_years=3, rule="R6", consent_date="2026-01-15")


def copy_inputs(i: int) -> tuple[str, str, str]:
    """A per-copy unsubscribe URL, mailto and Message-ID (39-character tokens, like
    gateway.security.tokens)."""
    token = base64.b32encode(i.to_bytes(24, "big")).decode("ascii").rstrip("=").lower()
    return (f"https://gateway.acme.example/u/{token}",
            f"unsubscribe+{token}@gateway.acme.example", f"<{i}.bench@gateway.acme.example>")


def one_copy(content: bytes, templates: dict[str, NoticeTemplate], signer: Signer,
             inputs: tuple[str, str, str]) -> tuple[list[int], bytes]:
    """The four steps in the worker's order; nanoseconds per step and the signed copy."""
    url, mailto, message_id = inputs
    clock = time.perf_counter_ns
    t0 = clock()
    notice = render(choose(templates, "fr", "en"), NoticeFacts(**FACTS, unsubscribe_url=url))
    t1 = clock()
    content = personalise(content, Personalisation(url, mailto, message_id,
                                                   "Wed, 25 Nov 2026 09:30:00 +0100"))
    t2 = clock()
    content = add_notice(content, notice)
    t3 = clock()
    signed = signer.sign(content, DOMAIN)
    t4 = clock()
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0], signed


@dataclass
class Samples:
    ns: list[list[int]] = field(default_factory=lambda: [[] for _ in range(len(STEPS) + 1)])

    def add(self, times: list[int]) -> None:
        for column, value in zip(self.ns, times, strict=True):
            column.append(value)


def median_ms(values: list[int]) -> float:
    return statistics.median(values) / 1e6


def p99_ms(values: list[int]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] / 1e6


# --- run, report, verify ----------------------------------------------------------------------

def measure(messages: list[Message], set_ups: list[SetUp],
            templates: dict[str, NoticeTemplate], iterations: int,
            warmup: int) -> dict[tuple[int, int], Samples]:
    samples = {(m, s): Samples() for m in range(len(messages)) for s in range(len(set_ups))}
    gc.collect()
    for i in range(warmup + iterations):
        inputs = copy_inputs(i)
        for m, message in enumerate(messages):
            for s, set_up in enumerate(set_ups):
                gateway_dkim.use_openssl_rsa(set_up.openssl)
                times, _ = one_copy(message.content, templates, set_up.signer, inputs)
                if i >= warmup:
                    samples[(m, s)].add(times)
    gateway_dkim.use_openssl_rsa()
    return samples


def report(messages: list[Message], set_ups: list[SetUp],
           samples: dict[tuple[int, int], Samples]) -> None:
    width = max(len(m.label) for m in messages) + 2
    for s, set_up in enumerate(set_ups):
        print(f"\nSet-up: {set_up.label}")
        print(f"{'message':<{width}}{'step':<16}{'median ms':>10}{'p99 ms':>10}{'share %':>10}")
        for m, message in enumerate(messages):
            ns = samples[(m, s)].ns
            medians = [median_ms(column) for column in ns[:len(STEPS)]]
            whole = sum(medians)
            for k, step in enumerate(STEPS):
                label = message.label if k == 0 else ""
                print(f"{label:<{width}}{step:<16}{medians[k]:>10.3f}{p99_ms(ns[k]):>10.3f}"
                      f"{100 * medians[k] / whole:>10.1f}")
            print(f"{'':<{width}}{'total per copy':<16}{median_ms(ns[-1]):>10.3f}"
                  f"{p99_ms(ns[-1]):>10.3f}{100.0:>10.1f}")


def report_target(messages: list[Message], samples: dict[tuple[int, int], Samples]) -> None:
    print(f"\nTarget: <= {TARGET_MS:g} ms median per 20 KB copy, signing included "
          f"(set-up: RSA-2048 via OpenSSL, the default)")
    verdicts = []
    for m, message in enumerate(messages):
        if len(message.content) < 10_000:
            continue
        total = median_ms(samples[(m, 0)].ns[-1])
        verdicts.append("PASS" if total <= TARGET_MS else "MISS")
        print(f"  {message.label}: {total:.3f} ms median per copy  {verdicts[-1]}")
    print(f"  overall: {'PASS' if all(v == 'PASS' for v in verdicts) else 'MISS'} "
          f"({verdicts.count('PASS')} of {len(verdicts)} 20 KB messages within the target)")


def dns_lookup(records: dict[str, str]) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii").rstrip(".")
        for selector, record in records.items():
            if text == f"{selector}._domainkey.{DOMAIN}":
                return record.encode("ascii")
        return None
    return lookup


def check_copy(message: Message, set_up: SetUp, templates: dict[str, NoticeTemplate]) -> list[str]:
    """Problems of one signed copy (empty: fine): every signature verifies against its DNS
    record, both text parts carry the notice, the attachment is unchanged."""
    gateway_dkim.use_openssl_rsa(set_up.openssl)
    try:
        inputs = copy_inputs(10**9)
        _, signed = one_copy(message.content, templates, set_up.signer, inputs)
    finally:
        gateway_dkim.use_openssl_rsa()
    problems = []
    dnsfunc = dns_lookup(set_up.records)
    if not dkim.verify(signed, dnsfunc=dnsfunc):
        problems.append("dkim.verify failed on the first signature")
    verifier = dkim.DKIM(signed)
    for idx in range(len(set_up.records)):
        if not verifier.verify(idx=idx, dnsfunc=dnsfunc):
            problems.append(f"DKIM signature {idx + 1} of {len(set_up.records)} does not verify")
    selectors = {s.decode() for s in (dkim.util.parse_tag_value(v)[b"s"] for k, v in
                 verifier.headers if k.lower() == b"dkim-signature")}
    if selectors != set(set_up.records):
        problems.append(f"signed with selectors {sorted(selectors)}, expected "
                        f"{sorted(set_up.records)}")
    parsed = email.message_from_bytes(signed, policy=email.policy.default)
    texts = [part for part in parsed.walk()
             if part.get_content_type() in ("text/plain", "text/html")]
    if len(texts) != 2:
        problems.append(f"{len(texts)} text parts, expected 2")
    for part in texts:
        if inputs[0] not in part.get_content():
            problems.append(f"{part.get_content_type()} part without the notice")
    if message.attachment is not None:
        pdfs = [part.get_payload(decode=True) for part in parsed.walk()
                if part.get_content_type() == "application/pdf"]
        if pdfs != [message.attachment]:
            problems.append("the attachment changed")
    return problems


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int,
                        help=f"timed copies per message and set-up (default "
                             f"{DEFAULT_ITERATIONS:,}; --quick {QUICK_ITERATIONS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ITERATIONS} iterations (p99 on few samples)")
    args = parser.parse_args(argv)
    iterations = args.iterations
    if iterations is None:
        iterations = QUICK_ITERATIONS if args.quick else DEFAULT_ITERATIONS
    if iterations < 1:
        parser.error("--iterations must be at least 1")
    warmup = max(20, iterations // 10)

    rng = random.Random(SEED)
    messages = [build_alternative("4 KB alternative", 4 * 1024, rng),
                build_alternative("20 KB alternative", 20 * 1024, rng),
                build_mixed("20 KB mixed + PDF", 20 * 1024, 10 * 1024, rng)]
    print("transform bench: per-copy cost of render, headers, notice, dkim "
          "(gateway.compose.Composer.prepare's steps), in-process")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); Python "
          f"{sys.version.split()[0]}, dkimpy {metadata.version('dkimpy')}, cryptography "
          f"{metadata.version('cryptography')}; load average at start: {load_average()}")
    print("Note: this 2-core machine is noisy (~30% between runs): compare figures of one run "
          "only.")
    print("Messages: " + "; ".join(f"{m.label} = {len(m.content):,} bytes" for m in messages)
          + f" (attachment {len(_base64_lines(messages[2].attachment or b'')):,} bytes base64)")
    print(f"Iterations: {iterations:,} per message and set-up after {warmup} warm-up, "
          "interleaved; share % = step median / sum of step medians")
    if iterations < MIN_ITERATIONS:
        print(f"(fewer than {MIN_ITERATIONS} iterations: p99 is a rough figure)")
    sys.stdout.flush()

    try:
        with tempfile.TemporaryDirectory(prefix="transform-bench-") as tmp:
            set_ups = make_set_ups(Path(tmp))
        templates = load_templates()
        gateway_dkim.use_openssl_rsa()
        started = time.perf_counter()
        samples = measure(messages, set_ups, templates, iterations, warmup)
        elapsed = time.perf_counter() - started
        report(messages, set_ups, samples)
        report_target(messages, samples)
        print(f"\nTimed in {elapsed:.1f} s; load average at end: {load_average()}")

        problems = [f"{message.label}, {set_up.label}: {problem}"
                    for set_up in set_ups for message in messages
                    for problem in check_copy(message, set_up, templates)]
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # any failure of a gateway step is a failed run
        print(f"\nFAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(f"NOT VERIFIED: {problem}")
        return 1
    print(f"VERIFIED: every signature of the {len(messages) * len(set_ups)} signed copies "
          "verifies (dkim.verify, DNS records built from the public keys), the notice is in "
          "every text part, the attachment is unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
