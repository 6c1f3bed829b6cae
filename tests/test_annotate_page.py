"""The labelling page in a real headless Chromium (Debian's chromium + chromedriver, via selenium).

A person accepts a suggested label, types an edited label and submits; the server process is killed
and started again; the labels are on disk and the page resumes at the next unlabelled record.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [pytest.mark.slow,  # a real browser
              pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                 reason="needs Debian's chromium and chromium-driver packages")]

QUEUE = [
    {"id": "r1", "text": "I want my money back for order 17", "label": "refund"},
    {"id": "r2", "text": "My card was declined at checkout", "label": "refund"},
    {"id": "r3", "text": "Where is the nearest store?"},
    {"id": "r4", "text": "Refund the duplicate charge please"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(queue: Path, labels: Path, port: int) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.cli.main", "annotate", str(queue), "--out", str(labels),
         "--labels", "refund,card,other", "--annotator", "ana", "--suggest-model", "none", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not start within 30 s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chrome-profile", ignore_errors=True)


def _showing(driver, record_id: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(
        lambda d: d.find_element("id", "card").get_attribute("data-record-id") == record_id
        and d.find_element("id", "card").is_displayed())


def test_page_labels_records_and_resumes_after_restart(tmp_path, browser):
    queue, labels = tmp_path / "queue.jsonl", tmp_path / "out" / "labels.jsonl"
    queue.write_text("".join(json.dumps(r) + "\n" for r in QUEUE))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    server = _start_server(queue, labels, port)
    try:
        browser.get(url)
        _showing(browser, "r1")
        assert browser.find_element("id", "suggestion-text").text == "refund"
        browser.find_element("id", "accept").click()  # accept the suggestion
        _showing(browser, "r2")
        value = browser.find_element("id", "value")
        assert value.get_attribute("value") == "refund"  # the editor starts from the suggestion
        value.clear()
        value.send_keys("card")  # edit the label
        browser.find_element("id", "submit").click()
        _showing(browser, "r3")
        assert "done 2/4" in browser.find_element("id", "progress").text
    finally:
        _stop(server)

    saved = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [(e["record_id"], e["annotator"], e["value"], e["accepted"]) for e in saved] == [
        ("r1", "ana", "refund", True), ("r2", "ana", "card", False)]

    server = _start_server(queue, labels, port)
    try:
        browser.get(url)
        _showing(browser, "r3")  # resumes at the first unlabelled record
        browser.find_element("css selector", "button.label-choice[data-label='other']").click()
        browser.find_element("id", "submit").click()
        _showing(browser, "r4")
        value = browser.find_element("id", "value")
        value.send_keys("refnd")  # a typo is refused with a did-you-mean, nothing saved
        browser.find_element("id", "submit").click()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 10).until(lambda d: "did you mean 'refund'" in d.find_element("id", "message").text)
        assert len(labels.read_text().splitlines()) == 3
    finally:
        _stop(server)
    saved = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [(e["record_id"], e["value"]) for e in saved] == [("r1", "refund"), ("r2", "card"), ("r3", "other")]
