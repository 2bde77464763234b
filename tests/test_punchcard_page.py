"""Punchcard's web page in headless Chromium (Debian's chromium and chromium-driver packages),
driven as a person would: open it, give the token, see the jobs."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from punchcard_daemon import stub_daemon, submit, wait_for

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "CI installs chromium and chromium-driver in .ci/run"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    # The Debian driver, named: Selenium must not go looking for (or downloading) one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_lists_my_jobs_with_their_state(browser: object, model_file: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    daemon = stub_daemon(tmp_path, "--kill-grace=2")
    try:
        alice, bob = daemon.add_user("alice"), daemon.add_user("bob")
        with daemon.client(alice) as c:
            done = wait_for(
                c, submit(c, {"data": str(tmp_path), "name": "finished one"}, model_file).json()["id"]
            )
            sneaky = "<img src=x onerror=\"document.title='owned'\">"
            running = submit(c, {"data": str(tmp_path), "seed": 2, "name": sneaky}, model_file).json()["id"]
            wait_for(c, running, {"running"})
        with daemon.client(bob) as c:
            theirs = submit(c, {"data": str(tmp_path), "name": "bob's"}, model_file).json()["id"]

        browser.get(daemon.url + "/")
        wait = WebDriverWait(browser, 30)
        # No token yet: the page asks for one and shows no jobs.
        wait.until(ec.visibility_of_element_located((By.ID, "login")))
        assert not browser.find_elements(By.CSS_SELECTOR, "#jobs tr")

        token_input = browser.find_element(By.ID, "token")
        token_input.send_keys("dkp_wrong")
        browser.find_element(By.ID, "sign-in").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "did not accept that token"))

        browser.find_element(By.ID, "token").send_keys(alice)
        browser.find_element(By.ID, "sign-in").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"tr[data-job-id='{running}']")))
        # The page polls: the running job shows the stub's progress once it has some.
        wait.until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, f"tr[data-job-id='{running}'] .progress"), "samples"
            )
        )
        rows = {r.get_attribute("data-job-id"): r for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tr")}
        assert set(rows) == {done["id"], running}  # not bob's
        assert theirs not in browser.page_source
        assert rows[done["id"]].get_attribute("data-state") == "succeeded"
        assert "test accuracy 0.7500" in rows[done["id"]].find_element(By.CLASS_NAME, "progress").text
        assert rows[running].find_element(By.CLASS_NAME, "state").text == "running"
        # A job name is text, never markup.
        assert rows[running].find_element(By.CLASS_NAME, "name").text == sneaky
        assert browser.title == "Punchcard jobs"
        assert browser.find_element(By.ID, "who").text == "Jobs of alice."
        # The token lives in this tab's sessionStorage only: not in the URL, not in a cookie.
        assert browser.execute_script("return sessionStorage.getItem('punchcard-token')") == alice
        assert alice not in browser.current_url and not browser.get_cookies()
        browser.save_screenshot(str(tmp_path / "page.png"))

        with daemon.client(alice) as c:
            c.post(f"/jobs/{running}/cancel")
        wait.until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, f"tr[data-job-id='{running}'] .state"), "cancelled"
            )
        )

        browser.find_element(By.ID, "sign-out").click()
        wait.until(ec.visibility_of_element_located((By.ID, "login")))
        assert browser.execute_script("return sessionStorage.getItem('punchcard-token')") is None
        time.sleep(2.5)  # past a refresh: signed out, it shows nothing again
        assert not browser.find_element(By.ID, "jobs-view").is_displayed()
    finally:
        daemon.stop()
