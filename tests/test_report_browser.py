"""The HTML report in a real headless Chromium: every plot is there and has loaded.

Needs Debian's `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`)
and selenium (the `dev` extra); without them the test is skipped and says so. The screenshot is
kept at tests/artifacts/inspect-report.png (git-ignored).
"""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import handmade
from distill.flows.cli import app
from distill.inspection.plots import PLOTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless browser test needs chromium and chromedriver: "
           "apt-get install chromium chromium-driver (README, Development)")


def test_every_plot_loads_in_headless_chromium(tmp_path, monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is missing")
    handmade.scenario(tmp_path)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "cache"), "--html", str(page),
                                      "--labels", str(tmp_path / "labels.jsonl")])
    assert result.exit_code == 0, result.output
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-default-apps", "--disable-sync", "--no-first-run",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must not look for drivers online
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.dataset.plot, i.complete, i.naturalWidth])")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height + 200)  # + the window's own frame
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "inspect-report.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
    assert sorted(name for name, _, _ in images) == sorted(PLOTS)
    assert all(loaded and width > 0 for _, loaded, width in images), images
    assert shot.stat().st_size > 10_000
