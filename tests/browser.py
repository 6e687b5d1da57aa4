"""Driving Label Studio's labelling view in headless Chromium (Debian's ``chromium`` and
``chromium-driver``) with Selenium, as a person would: log in, open a task, paint, choose, submit.

The browser is installed by ``scripts/install_browser.sh`` (apt) when missing; where that is
impossible (no root, no apt) the tests skip and say why. Nothing is downloaded by Selenium itself:
the driver is Debian's, named explicitly, so Selenium Manager never runs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("BLURSET_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BLURSET_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL = Path(__file__).resolve().parents[1] / "scripts" / "install_browser.sh"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000", "--force-device-scale-factor=1")


def browser_or_skip() -> None:
    """Chromium and its driver, installed through apt if missing; skip (saying why) if not."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    r = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"no browser for the labelling-view tests: {INSTALL} failed "
                    f"(exit {r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")


def start_chromium(profile: Path):
    """A headless Chromium with a fresh profile (``profile`` must not exist yet)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(90)
    return driver


def wait_for(driver, what: str, probe: Callable[[Any], Any], timeout: float = 60.0) -> Any:
    """Poll ``probe(driver)`` until it returns something truthy; fail naming ``what``."""
    from selenium.common.exceptions import WebDriverException
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = probe(driver)
        except WebDriverException:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what} in {driver.current_url}")
        time.sleep(0.25)


class LabellingView:
    """Label Studio's labelling view of one project, in a browser logged in as one user."""

    def __init__(self, driver, url: str):
        self.driver, self.url = driver, url.rstrip("/")

    def login(self, email: str, password: str) -> None:
        from selenium.webdriver.common.by import By
        d = self.driver
        d.get(f"{self.url}/user/login/")
        wait_for(d, "the login form", lambda d: d.find_elements(By.NAME, "email"))
        d.find_element(By.NAME, "email").send_keys(email)
        d.find_element(By.NAME, "password").send_keys(password)
        d.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        wait_for(d, "the login to finish", lambda d: "/user/login" not in d.current_url)

    def open_task(self, project_id: int, task_id: int) -> None:
        """The task in the Data Manager's labelling view, its image loaded and drawn."""
        from selenium.webdriver.common.by import By
        self.driver.get(f"{self.url}/projects/{project_id}/data?task={task_id}")
        wait_for(self.driver, f"task {task_id}'s image", lambda d: [
            e for e in d.find_elements(By.CSS_SELECTOR, ".konvajs-content")
            if e.size["width"] > 50 and e.size["height"] > 50])
        time.sleep(1.0)  # the first frame of the stage

    def stage(self):
        """The image's drawing stage (Konva), which has the image's displayed size."""
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, ".konvajs-content")

    def image_box(self) -> dict:
        """Where the image is drawn in the page, in CSS pixels: x, y, width, height."""
        st = self.stage()
        return {**st.location, **st.size}

    def paint(self, start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> None:
        """Drag the mouse from ``start`` to ``end``, in fractions (x, y) of the image's size."""
        from selenium.webdriver.common.action_chains import ActionChains
        st = self.stage()
        w, h = st.size["width"], st.size["height"]

        def offset(fx: float, fy: float) -> tuple[int, int]:  # from the stage's centre
            return round(fx * w - w / 2), round(fy * h - h / 2)

        x0, y0 = offset(*start)
        x1, y1 = offset(*end)
        chain = ActionChains(self.driver).move_to_element_with_offset(st, x0, y0).click_and_hold()
        px, py = x0, y0
        for k in range(1, steps + 1):
            nx, ny = x0 + round((x1 - x0) * k / steps), y0 + round((y1 - y0) * k / steps)
            chain.move_by_offset(nx - px, ny - py)
            px, py = nx, ny
        chain.release().perform()
        time.sleep(0.5)

    def _choice(self, section: str, value: str):
        from selenium.webdriver.common.by import By
        xpath = (f"//*[contains(normalize-space(text()), {section!r})]"
                 f"/following::label[starts-with(normalize-space(.), {value!r})][1]")
        return wait_for(self.driver, f"the {value!r} choice under {section!r}",
                        lambda d: d.find_element(By.XPATH, xpath))

    def choose(self, section: str, value: str) -> None:
        """Click the choice ``value`` under the header that starts with ``section``."""
        element = self._choice(section, value)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        time.sleep(0.3)
        element.click()
        time.sleep(0.3)

    def is_checked(self, section: str, value: str) -> bool:
        from selenium.webdriver.common.by import By
        box = self._choice(section, value).find_element(By.CSS_SELECTOR, "input")
        return bool(box.is_selected())

    def label_selected(self, label: str) -> bool:
        from selenium.webdriver.common.by import By
        return any(label in e.text and "selected" in (e.get_attribute("class") or "")
                   for e in self.driver.find_elements(By.CSS_SELECTOR, ".lsf-label"))

    def label_above_image(self, label: str) -> bool:
        """The label's button is drawn above the image, within the first screen."""
        from selenium.webdriver.common.by import By
        buttons = [e for e in self.driver.find_elements(By.CSS_SELECTOR, ".lsf-label")
                   if label in e.text]
        top = self.image_box()["y"]
        return bool(buttons) and all(b.location["y"] + b.size["height"] <= top
                                     and b.location["y"] >= 0 for b in buttons)

    def submit(self) -> None:
        from selenium.webdriver.common.by import By
        button = wait_for(self.driver, "the Submit button", lambda d: [
            b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit"])
        button[0].click()
        time.sleep(1.5)

    def warning(self) -> str:
        """The text of the modal warning Label Studio shows, or ''."""
        from selenium.webdriver.common.by import By
        return " ".join(e.text for e in self.driver.find_elements(
            By.CSS_SELECTOR, ".ant-modal-content, .lsf-modal__content, [role=dialog]")).strip()

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path


def keep_screenshot_on_failure(request: pytest.FixtureRequest, driver, folder: Path) -> None:
    """At teardown: when the test failed, save what the browser showed and print where."""
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        shot = folder / f"{request.node.name}-failure.png"
        try:
            driver.save_screenshot(str(shot))
            (folder / f"{request.node.name}-failure.html").write_text(driver.page_source)
            print(f"\nbrowser screenshot of the failure: {shot}")
        except Exception as e:  # noqa: BLE001 - a dead browser must not hide the test's failure
            print(f"\nno screenshot of the failure ({type(e).__name__}: {e})")
