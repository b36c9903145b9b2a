"""The unsubscribe confirmation page in a real headless browser (Debian's Chromium through
Selenium and Debian's chromedriver): it renders in the contact's language under its own strict
CSP, its one button opts the contact out, and the next RCPT is refused.

Chromium and chromedriver are required, never downloaded: .ci/run installs them with apt-get.
Without them this test fails, it does not skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

from conftest import CSV_HEADER, GatewayProcess, Sink
from mailflow import deliver, rcpt, suppressed

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts/, git-ignored
SECRET = "webhook-secret-for-tests-0123456789"
ADDRESS = "jane@example.net"
DONE_FR = "C'est fait : ACME SAS ne vous écrira plus à cette adresse."


@pytest.fixture
def gw(make_gateway, tmp_path) -> GatewayProcess:
    ledger = tmp_path / "ledger.csv"
    ledger.write_text(CSV_HEADER + "\n" + f"{ADDRESS},person,b2c,prospect,fr,,,,,,granted,"
                      "2026-01-05,web form,v1,signup form,direct,,2026-01-05,,,\n")
    return make_gateway(contacts=ledger, extra=f'[webhooks]\nopt_out_secret = "{SECRET}"\n'
                        '[controller]\nname = "ACME SAS"\n')


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    # Fail (not skip) without the browser: CI must install it (see .ci/run).
    assert CHROMIUM.is_file(), f"{CHROMIUM} missing: apt-get install chromium"
    assert CHROMEDRIVER.is_file(), f"{CHROMEDRIVER} missing: apt-get install chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # The machine has no network: nothing in the background may try to reach out.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--window-size=800,600", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager is never asked to download anything.
    driver = webdriver.Chrome(options=options,
                              service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


def csp_violations(driver: webdriver.Chrome) -> list[dict] | None:
    """CSP violations in the browser console since the last call (Chromium logs each as a
    SEVERE entry from source "security"), or None if this driver cannot give its console."""
    try:
        logs = driver.get_log("browser")
    except (AttributeError, WebDriverException):
        return None
    return [entry for entry in logs if entry.get("source") == "security"
            or "Content Security Policy" in entry.get("message", "")]


def screenshot(driver: webdriver.Chrome, name: str, tmp_path: Path) -> bytes:
    png = driver.get_screenshot_as_png()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for folder in (ARTIFACTS, tmp_path):
        (folder / name).write_bytes(png)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2048, len(png)
    return png


def test_the_page_in_a_real_browser_opts_the_contact_out(gw, sink: Sink, browser, tmp_path):
    url = deliver(gw, sink, ADDRESS)

    browser.get(url)
    assert browser.execute_script("return document.documentElement.lang") == "fr"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "fr"
    question = browser.find_element(By.CSS_SELECTOR, "main p")
    assert question.is_displayed() and "ACME SAS" in question.text
    assert "ACME SAS" in browser.find_element(By.TAG_NAME, "body").text
    buttons = browser.find_elements(By.TAG_NAME, "button")
    assert len(buttons) == 1 and buttons[0].text == "Me désabonner"
    assert buttons[0].is_displayed() and buttons[0].is_enabled()
    assert len(browser.find_elements(By.TAG_NAME, "form")) == 1
    assert browser.find_elements(By.TAG_NAME, "script") == []
    # The page's own style passed its CSP hash (32rem wide), and the console shows no violation.
    assert browser.execute_script("return getComputedStyle(document.body).maxWidth") == "512px"
    violations = csp_violations(browser)
    if violations is not None:  # chromedriver gives the console; were it unable to: skip this
        assert violations == [], violations
    screenshot(browser, "unsubscribe-page.png", tmp_path)

    assert suppressed(gw) == []  # showing the page (a GET) unsubscribes nobody
    buttons[0].click()
    WebDriverWait(browser, 10).until(ec.staleness_of(buttons[0]))
    status = WebDriverWait(browser, 10).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, '[role="status"]')))
    assert status.text == DONE_FR
    assert browser.execute_script("return document.documentElement.lang") == "fr"
    assert browser.find_elements(By.TAG_NAME, "button") == []
    violations = csp_violations(browser)
    if violations is not None:
        assert violations == [], violations
    screenshot(browser, "unsubscribe-done.png", tmp_path)

    code, text = rcpt(gw, ADDRESS)
    assert (code, text.split()[1]) == (550, "R1"), (code, text)
    assert suppressed(gw) == ["link"]


@pytest.mark.parametrize("hostile", [
    "<style>div[lang]{display:none}</style>",
    "<style>body > div:last-child{display:none !important}</style>",
    '<style>a[href*="/u/"]{display:none !important;visibility:hidden}</style>',
    "<style>body>div{font-size:0!important;max-height:0;overflow:hidden}</style>",
    '<div style="position:fixed;top:0;left:0;width:100%;height:100%;background:#fff;'
    'z-index:99"></div>',
])
def test_the_messages_own_stylesheet_cannot_hide_the_notice(browser, tmp_path, hostile):
    """The tool's HTML could hide the whole notice, unsubscribe link included, with one CSS
    rule or a covering block (compliance audit): the notice's inline !important styles win,
    and it sits above an overlay. Rendered in the real browser."""
    import email
    import email.policy

    from gateway.notice_templates import load_templates
    from gateway.transform.footer import add_notice
    from gateway.transform.notice import NoticeFacts, choose, render

    notice = render(choose(load_templates(), "en", "en"), NoticeFacts(
        "ACME SAS", "https://acme.example", "https://acme.example/privacy", "dpo@acme.example",
        3, "https://gw.example/u/abcdef", "R6", "2026-01-05"))
    message = (b"From: a@example.com\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><head>"
               + hostile.encode() + b"</head><body><p>CRM offer</p></body></html>\r\n")
    copy = email.message_from_bytes(add_notice(message, notice), policy=email.policy.default)
    page = tmp_path / "copy.html"
    page.write_text(copy.get_content())
    browser.get(page.as_uri())
    link = browser.find_element(By.CSS_SELECTOR, 'a[href="https://gw.example/u/abcdef"]')
    assert link.is_displayed() and link.size["height"] > 0 and link.size["width"] > 0
    at = link.location
    on_top = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return document.elementFromPoint(r.left + 2, r.top + r.height / 2) === arguments[0];",
        link)
    assert on_top, (hostile, at)
