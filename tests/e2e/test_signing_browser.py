"""A person signs in a real browser: Debian's chromium driven by Selenium through chromedriver.

`test_a_person_signs_from_the_invitation_mail_in_chromium` goes the whole way through `run_daemon`: the stage
change sends the invitation through the daemon's relay into the embedded mailbox, and the person opens its link
and types the code from the next .eml. `test_a_person_signs_in_chromium` walks every page state against the
signing pages over a real outbox (codes read from the queued code mail through the library): two signers, the
second at a phone's width with the keyboard only (Tab order, no sideways scrolling).

Each page state is saved as a screenshot under the test's tmp dir so a person can look at them; with
SFSIGN_WRITE_SCREENSHOTS=1 they are copied to docs/screenshots/ too. CI installs chromium and chromium-driver
(.ci/run) and sets SFSIGN_REQUIRE_CHROMIUM=1, so there a missing browser fails instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest
import test_customer_signing_jobs as job_tests
from e2e_support import REP, record_id, run_daemon
from signer_support import completed
from signing_site import ABOUT, ANNA, CARA, KEYS, T0, Site, contract_pdf, signing_site
from test_customer_signing_jobs import ACME, ONE_SIGNER_OTP_SEALED_AFTER, STAGE

from sfsign.commands.demo import MAILBOX
from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices
from sfsign.outbox import NewJob
from sfsign.signing.lifecycle import EnvelopePolicy
from sfsign.signing.listener import write_about
from sfsign.signing.model import AuthMethod, ResolvedSigner

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("SFSIGN_REQUIRE_CHROMIUM"):
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver; "
                ".ci/run installs them)", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only once the browser is known to be there)
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}",
                 "--window-size=800,1000", "--lang=en-GB"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _document_swapped(error: Exception) -> bool:
    """Chromium replaced the document between finding the button and pressing it: the press never landed."""
    return isinstance(error, StaleElementReferenceException) or "does not belong to the document" in str(error)


def _replaced(old: WebElement) -> Callable[[WebDriver], bool]:
    """Selenium's `staleness_of`, also when Chromium reports the swap as "does not belong to the document"
    instead of a stale reference (CI saw that while the next page replaced this one)."""
    def gone(_driver: WebDriver) -> bool:
        try:
            old.is_enabled()
        except WebDriverException as e:
            if _document_swapped(e):
                return True
            raise
        return False
    return gone


T = TypeVar("T")

# The daemon with a signer rule, as the job tests run it (their fixtures, used here by name).
rules, settings = job_tests.rules, job_tests.settings  # services_pki: tests/e2e/conftest.py


class Person:
    """What a person does in the browser; each call runs in a thread, so the listener's loop keeps serving."""

    def __init__(self, driver: WebDriver, site: Site, shots: Path) -> None:
        self.driver, self.site, self.shots = driver, site, shots

    async def open(self, link: str) -> None:
        def go() -> None:
            self.driver.get(self.site.url + link)
            self._loaded()
        await asyncio.to_thread(go)

    async def click(self, text: str) -> None:
        """Press a button and wait until the next page replaced this one (a form always answers with a page)
        and has loaded. Chromium may still be swapping documents when a click comes right after the last page
        (CI saw "Node with given id does not belong to the document"): the button is looked up again and
        pressed once the page is steady, and only a press that did not reach the page is tried again."""
        def go() -> None:
            for attempt in range(5):
                self._loaded()
                old = self.driver.find_element(By.TAG_NAME, "html")
                try:
                    self.driver.find_element(By.XPATH, f"//button[normalize-space()='{text}']").click()
                except (StaleElementReferenceException, WebDriverException) as e:
                    if attempt == 4 or not _document_swapped(e):
                        raise
                    time.sleep(0.1)
                    continue
                WebDriverWait(self.driver, 10, poll_frequency=0.05).until(_replaced(old))
                self._loaded()
                return
        await asyncio.to_thread(go)

    def _loaded(self) -> None:
        WebDriverWait(self.driver, 10, poll_frequency=0.05).until(
            lambda d: d.execute_script("return document.readyState") == "complete")

    def _steady(self, action: Callable[[], T]) -> T:
        """Run `action` on the loaded page, again if Chromium swapped the document under it (the same race
        as in `click`: an element found in the old document). Typing and reading are safe to repeat."""
        for attempt in range(5):
            self._loaded()
            try:
                return action()
            except (StaleElementReferenceException, WebDriverException) as e:
                if attempt == 4 or not _document_swapped(e):
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    async def type(self, field_id: str, text: str) -> None:
        def go() -> None:
            box = self.driver.find_element(By.ID, field_id)
            box.clear()
            box.send_keys(text)
        await asyncio.to_thread(self._steady, go)

    async def tick(self, field_id: str) -> None:
        await asyncio.to_thread(self._steady, lambda: self.driver.find_element(By.ID, field_id).click())

    async def state(self) -> str:
        """The page's state (never asked from the loop's own thread: chromedriver answers once the page has
        loaded, which needs the loop to serve its images)."""
        return await asyncio.to_thread(self._steady, lambda: str(
            self.driver.find_element(By.CSS_SELECTOR, "[data-state]").get_attribute("data-state")))

    async def text(self) -> str:
        return await asyncio.to_thread(self._steady,
                                       lambda: str(self.driver.find_element(By.TAG_NAME, "main").text))

    async def press(self, keys: str, submits: bool = False) -> str:
        """Keys as a keyboard user presses them, into whatever has the focus; with `submits`, wait for the page
        the form answers with. Returns what has the focus afterwards (see `focused`)."""
        def go() -> str:
            self._loaded()
            old = self.driver.find_element(By.TAG_NAME, "html")
            ActionChains(self.driver).send_keys(keys).perform()
            if submits:
                WebDriverWait(self.driver, 10, poll_frequency=0.05).until(_replaced(old))
                self._loaded()
            return self._focused()
        return await asyncio.to_thread(go)

    async def tab_until(self, target: str, limit: int = 12) -> list[str]:
        """Press Tab until `target` has the focus: the focus order a keyboard user goes through, in order."""
        order: list[str] = []
        while target not in order:
            assert len(order) < limit, f"Tab never reached {target}: {order}"
            order.append(await self.press(Keys.TAB))
        return order

    async def focused(self) -> str:
        return await asyncio.to_thread(self._steady, self._focused)

    def _focused(self) -> str:
        """The focused element as a test names it: its id, or tag and text ("button:Sign", "a:Skip…")."""
        return str(self.driver.execute_script(
            "const e = document.activeElement;"
            "return e.id || (e.tagName.toLowerCase() + ':' + e.textContent.trim());"))

    async def fits_the_width(self) -> tuple[int, int]:
        """The page's width and the window's: a page wider than the window scrolls sideways on a phone."""
        widths = await asyncio.to_thread(self._steady, lambda: self.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth];"))
        return int(widths[0]), int(widths[1])

    async def shot(self, name: str, scroll_to: str | None = None) -> None:
        def go() -> None:
            if scroll_to:
                self.driver.execute_script("arguments[0].scrollIntoView()",
                                           self.driver.find_element(By.ID, scroll_to))
            self.driver.save_screenshot(str(self.shots / f"signing-{name}.png"))
        await asyncio.to_thread(go)


async def _other_envelope(site: Site, tx: str, policy: EnvelopePolicy, at: float = T0) -> tuple[int, str]:
    """A second envelope in the same outbox (another state to look at): its one recipient's id and link."""
    job = (await site.outbox.call(lambda s: s.commit_event(
        None, None, [NewJob(tx, "quote", "Quote", f"0Q0{tx[-1]}00000000001AAA", "cdc")]))).created[0]
    signer = ResolvedSigner(1, "Dana Buyer", "dana@example.com", ANNA.source)
    envelope = await site.outbox.create_envelope(job, [signer], policy, at, KEYS)
    (site.artifacts / f"{tx}.signed.pdf").write_bytes(contract_pdf())
    write_about(site.artifacts, tx, ABOUT)
    [recipient] = await site.outbox.recipients(envelope.id)
    return recipient.id, f"/s/{KEYS.link_token(tx, recipient.id, 1)}"


async def test_a_person_signs_in_chromium(tmp_path: Path, chrome: WebDriver) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with signing_site(tmp_path, contract_pdf(), signers=(ANNA, CARA)) as site:
        person = Person(chrome, site, shots)
        await person.open(site.links["Cara"])
        assert await person.state() == "waiting"
        await person.shot("not-your-turn")

        await person.open(site.links["Anna"])
        assert "Nordlicht Software GmbH asks you to sign" in await person.text()
        await person.shot("start")
        await person.click("Send me a code")
        await person.type("code", "000000" if await site.code("Anna") != "000000" else "111111")
        await person.click("Confirm code")
        assert "4 tries left" in await person.text()
        await person.shot("wrong-code")
        await person.type("code", await site.code("Anna"))
        await person.click("Confirm code")
        assert await person.state() == "sign"
        await person.shot("document")
        await person.type("name", "Anna Buyer")
        await person.tick("consent")
        await person.shot("sign-form", scroll_to="sign-heading")
        await person.click("Sign")
        assert await person.state() == "signed"
        await person.shot("signed")

        await _cara_signs_by_keyboard_on_a_phone(person, site)
        (site.artifacts / f"{site.envelope.transaction_id}.ltv.pdf").write_bytes(contract_pdf())
        await person.open(site.links["Cara"])
        assert await person.state() == "completed" and "Download the signed document" in await person.text()
        await person.shot("completed")

        await _more_states(person, site)
    assert len(list(shots.glob("*.png"))) == 13
    if os.environ.get("SFSIGN_WRITE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, DOCS / png.name)


async def _cara_signs_by_keyboard_on_a_phone(person: Person, site: Site) -> None:
    """Cara's turn, in the same browser (her own session), at a phone's width and with the keyboard only:
    Tab from the top of each page reaches the controls in reading order, Enter and Space work them, and no page
    is wider than the phone (scrolling sideways loses the text's line ends)."""
    await asyncio.to_thread(person.driver.set_window_size, 390, 844)
    await person.open(site.links["Cara"])
    scroll_width, inner_width = await person.fits_the_width()
    assert inner_width == 390 and scroll_width <= inner_width
    order = await person.tab_until("button:Send me a code")
    assert order[0].startswith("a:") and order.count("button:Send me a code") == 1  # the skip link comes first
    await person.press(Keys.ENTER, submits=True)
    assert await person.focused() == "code"  # the code field takes the focus when the page opens
    scroll_width, inner_width = await person.fits_the_width()
    assert scroll_width <= inner_width
    await person.press(await site.code("Cara"))
    await person.press(Keys.ENTER, submits=True)  # Enter in the field sends its form
    assert await person.state() == "sign"
    scroll_width, inner_width = await person.fits_the_width()
    assert scroll_width <= inner_width
    order = await person.tab_until("name")
    assert order[0].startswith("a:") and "consent" not in order and "button:Sign" not in order
    await person.press("Cara Seller")
    assert await person.press(Keys.TAB) == "consent"
    await person.press(Keys.SPACE)
    assert await person.press(Keys.TAB) == "button:Sign"
    await person.press(Keys.ENTER, submits=True)
    assert await person.state() == "completed"  # hers was the last signature
    await asyncio.to_thread(person.driver.set_window_size, 800, 1000)


async def _more_states(person: Person, site: Site) -> None:
    """The pages a person meets when something else happened: declined, expired, voided, locked, unknown."""
    _, link = await _other_envelope(site, "tx-voided-2", EnvelopePolicy())
    await site.outbox.void("tx-voided-2", "prices changed", T0)
    await person.open(link)
    assert await person.state() == "voided"
    await person.shot("voided")

    _, link = await _other_envelope(site, "tx-expired-3", EnvelopePolicy(expires_after_s=60), at=T0 - 120)
    await person.open(link)
    assert await person.state() == "expired"
    await person.shot("expired")

    rid, link = await _other_envelope(site, "tx-declined-4", EnvelopePolicy(auth=AuthMethod.NONE, language="de"))
    await asyncio.to_thread(person.driver.set_window_size, 390, 844)  # a phone
    await person.open(link)
    scroll_width, inner_width = await person.fits_the_width()
    assert inner_width == 390 and scroll_width <= inner_width  # the German page's long words wrap too
    await person.shot("document-de-phone")
    await asyncio.to_thread(person.driver.set_window_size, 800, 1000)
    await site.outbox.mark_recipient_refused(rid, "Der Preis ist zu hoch.", T0)
    await person.open(link)
    assert await person.state() == "you_declined"
    await person.shot("declined-de")

    rid, link = await _other_envelope(site, "tx-locked-5", EnvelopePolicy())
    await site.outbox.issue_code(rid, T0, KEYS)
    for _ in range(5):
        await site.outbox.check_code(rid, "not-it", T0, KEYS)
    await person.open(link)
    assert await person.state() == "locked"
    await person.shot("locked")

    await person.open("/s/this-is-not-a-link")
    assert await person.state() == "unknown"
    await person.shot("unknown-link")


@pytest.mark.parametrize("rules", [ONE_SIGNER_OTP_SEALED_AFTER], indirect=True)
async def test_a_person_signs_from_the_invitation_mail_in_chromium(
    tmp_path: Path, chrome: WebDriver, settings: Settings, rules: Rules, control: ControlClient,
    services_pki: tuple[DemoPki, PkiServices, str],
) -> None:
    """The whole way a customer goes, in the browser: the stage change sends the invitation through the
    daemon's relay; the person opens the link in the stored .eml, asks for a code, types the one from the next
    .eml, signs; the page says completed, and the record shows it."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    opportunity = await record_id(control, "Opportunity", ACME)
    claire = "claire.lefevre@acme-industries.example"
    async with run_daemon(settings, rules) as daemon:
        mailbox = Mailbox(daemon.settings.data_dir / MAILBOX)
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        invitation = await asyncio.to_thread(mailbox.wait_for, lambda m: claire in m.recipients, timeout_s=90)
        [link] = [u for u in invitation.links if "/s/" in u]
        person = Person(chrome, SimpleNamespace(url=""), shots)  # full links: no base to prepend
        await person.open(link)
        assert await person.state() == "code"
        await person.click("Send me a code")
        code_mail = await asyncio.to_thread(
            mailbox.wait_for, lambda m: claire in m.recipients and m.one_time_code is not None, timeout_s=30)
        await person.type("code", str(code_mail.one_time_code))
        await person.click("Confirm code")
        assert await person.state() == "sign"
        await person.type("name", "Claire Lefèvre")
        await person.tick("consent")
        await person.click("Sign")
        assert await person.state() == "completed"
        await person.shot("from-mail-completed")
        record = await completed(control, opportunity)
        assert record["Sign_Progress__c"] == "1 of 1 signed"
