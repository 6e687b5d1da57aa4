"""Where no browser can be installed, the labelling-view tests skip and say why (tests/browser.py)."""

from __future__ import annotations

import browser
import pytest


def test_a_missing_browser_that_cannot_be_installed_skips_with_the_reason(tmp_path, monkeypatch):
    installer = tmp_path / "install_browser.sh"
    installer.write_text("echo 'not root and no passwordless sudo' >&2; exit 2\n")
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(browser, "INSTALL", installer)
    with pytest.raises(pytest.skip.Exception, match="exit 2.*not root and no passwordless sudo"):
        browser.browser_or_skip()


def test_the_installer_is_not_run_when_both_binaries_are_there(tmp_path, monkeypatch):
    for name in ("chromium", "chromedriver"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setattr(browser, "CHROMEDRIVER", tmp_path / "chromedriver")
    monkeypatch.setattr(browser, "INSTALL", tmp_path / "missing-installer.sh")
    browser.browser_or_skip()  # no skip, and the (missing) installer was never called
