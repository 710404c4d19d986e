"""The HTML report in a real headless Chromium: it renders offline, every figure decodes, the
console stays clean. Leaves a full-page screenshot in $TESTBED_ARTIFACTS (or tests/artifacts/)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testbed.report import write_report
from tests.unit.test_report import build_study

pytestmark = pytest.mark.timeout(180)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("TESTBED_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")


@pytest.fixture
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium keeps a profile folder in TMPDIR (org.chromium.Chromium.*) that it leaves behind:
    # in the test's own temporary folder, not the machine's /tmp
    scratch = tmp_path_factory.mktemp("chromium")
    service = Service(executable_path=CHROMEDRIVER, env={**os.environ, "TMPDIR": str(scratch)})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_renders_offline_with_every_figure_and_a_clean_console(tmp_path, browser):
    report = write_report(build_study(tmp_path / "out"))
    browser.get(report.index.as_uri())

    assert browser.title == "Testbed report: bandwidth-study"
    assert browser.find_element("tag name", "h1").text == "Testbed report: bandwidth-study"
    images = browser.find_elements("css selector", "figure img")
    assert len(images) == len(report.figures) > 0
    for img in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
    severe = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert severe == []

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(height, 16000))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
