"""The playground page (``GET /``) in a real headless Chromium against a real server on loopback.

The server is the one the other server tests run (uvicorn, real sandbox kernels, a scripted
model); the browser is Debian's ``chromium`` driven through ``chromedriver`` by selenium.  Every
wait is a ``WebDriverWait`` on the page's DOM (or on the server's pool), never a sleep.  Without
chromium, chromedriver or selenium the browser tests skip, saying which is missing; the HTTP
checks of the routes run regardless.

``MATHCODER_PLAYGROUND_SCREENSHOT=docs/playground.png`` saves the page after the solve test's
solve (how docs/playground.png is made).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.server import (
    SOLVE_KEY,
    LiveServer,
    Say,
    ScriptBook,
    cell,
    leased_drops_to_zero,
    sandbox,
    settings,
)

from benchmarks.procs import pids_of_uids
from runtime.server import create_app
from sandbox.pool import KernelPool

UIDS = range(68300, 68304)
SANDBOX = sandbox(UIDS.start, pool_size=1, max_kernels=len(UIDS))
CHROMIUM = os.environ.get("MATHCODER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MATHCODER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 60

MUFFINS = (
    "A bakery packs muffins in boxes of 6. Priya buys 7 boxes and gives 15 muffins to her "
    "neighbours. How many muffins does she have left?"
)
MUFFIN_CODE = "boxes = 7\nper_box = 6\ngiven_away = 15\nleft = boxes * per_box - given_away\nprint(left)"
HOSTILE_PROSE = (
    '<img src=x onerror="document.body.dataset.pwned = 1"> <script>document.body.dataset.pwned = 2</script>'
)
HOSTILE_OUTPUT = "<b id='injected'>bold</b>"
SCRIPTS = {
    MUFFINS: [
        cell(MUFFIN_CODE, prose="Priya starts with 7 boxes of 6 muffins and gives 15 away. Let me compute."),
        Say("She has 27 muffins left, so the answer is \\boxed{27}.", eos=True),
    ],
    "Be hostile": [
        cell(f'print("{HOSTILE_OUTPUT}")\n1 / 0', prose=HOSTILE_PROSE),
        Say("The answer is \\boxed{5}.", eos=True),
    ],
    "Hold after one cell": [cell("y = 1\nprint(y)"), Say("never sent", gate="held")],
}


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            return f"{path} not found: install Debian's {package} (`make test` does, as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the dev extra)"
    return None


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    book = ScriptBook(SCRIPTS)
    server = LiveServer(create_app(settings(), backend=book, pool=KernelPool(SANDBOX))).start()
    yield server
    server.stop()
    assert pids_of_uids(UIDS) == []


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's own sandbox refuses to run as root
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield browser
    browser.quit()


# -- helpers ----------------------------------------------------------------------------------------
def wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message=f"the page never showed {what}")


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return str(found[0].text) if found else ""


def state(driver: Any) -> str:
    return str(driver.execute_script("return document.body.dataset.state || ''"))


def open_page(driver: Any, live: LiveServer) -> None:
    driver.get(f"{live.url}/")
    wait(driver, lambda d: state(d) == "idle", "its idle state (did the script load?)")


def solve(driver: Any, problem: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    key_field = driver.find_element(By.ID, "api-key")
    key_field.clear()
    key_field.send_keys(key)
    driver.find_element(By.ID, "problem").send_keys(problem)
    driver.find_element(By.ID, "solve").click()


def save_screenshot(driver: Any, path: Path) -> None:
    """The whole page, not only the window (Chromium's DevTools capture beyond the viewport)."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


# -- the routes, over HTTP ---------------------------------------------------------------------------
def test_the_page_and_its_assets_are_served_without_a_key(live: LiveServer) -> None:
    page = httpx.get(f"{live.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/playground.js"' in page.text
    for name, media in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = httpx.get(f"{live.url}/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media), name
    for name in ("playground.py", "..%2Fapp.py", "playground.html"):
        assert httpx.get(f"{live.url}/static/{name}").status_code == 404, name
    paths = httpx.get(f"{live.url}/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


# -- the page, in a browser -------------------------------------------------------------------------
def test_a_solve_shows_prose_code_output_answer_and_numbers(driver: Any, live: LiveServer) -> None:
    open_page(driver, live)
    solve(driver, MUFFINS, SOLVE_KEY)
    wait(driver, lambda d: text_of(d, ".cell pre.code") == MUFFIN_CODE, "the cell's code")
    wait(driver, lambda d: text_of(d, ".cell pre.output") == "27", "the cell's output")
    wait(driver, lambda d: text_of(d, "#answer") == "27", "the answer")
    wait(driver, lambda d: state(d) == "done", "the end of the stream")

    prose = [p.text for p in driver.find_elements("css selector", "#transcript .prose")]
    assert prose == [
        "Priya starts with 7 boxes of 6 muffins and gives 15 away. Let me compute.",
        "She has 27 muffins left, so the answer is \\boxed{27}.",
    ]
    assert driver.find_element("css selector", ".cell pre.output").get_attribute("data-status") == "ok"
    assert text_of(driver, ".cell .badge") == "OK"  # upper-cased by the style sheet
    assert text_of(driver, "#stop-reason") == "stopped: eos"
    stats = {
        s.get_attribute("data-key"): s.find_element("css selector", "dd").text
        for s in driver.find_elements("css selector", "#stats .stat")
    }
    assert stats["cells"] == "1" and int(stats["completion_tokens"]) > 0 and int(stats["prompt_tokens"]) > 0
    assert {"queue_s", "generate_s", "execute_s", "total_s"} <= set(stats)  # done's timings joined final's
    assert all(stats[k].endswith(" s") for k in ("generate_s", "execute_s", "total_s"))
    assert driver.find_element("id", "error").get_attribute("hidden") is not None

    if target := os.environ.get("MATHCODER_PLAYGROUND_SCREENSHOT"):
        save_screenshot(driver, Path(target))

    # The key is kept in the browser, so a reload does not ask for it again.
    driver.refresh()
    wait(driver, lambda d: state(d) == "idle", "its idle state after a reload")
    assert driver.find_element("id", "api-key").get_attribute("value") == SOLVE_KEY


def test_without_prose_deltas_the_prose_comes_from_the_final_trace(driver: Any, live: LiveServer) -> None:
    # A loop that reports raw text, cells and outputs but no prose/code deltas (the stream before
    # they existed): the page's fetch is wrapped to drop those frames.
    open_page(driver, live)
    driver.execute_script(
        """
        const original = window.fetch;
        window.fetch = async (...args) => {
          const response = await original(...args);
          const frames = (await response.text()).split("\\n\\n");
          const kept = frames.filter((f) => !/^event: (prose|code)_delta\\n/.test(f)).join("\\n\\n");
          return new Response(kept, {status: response.status, headers: response.headers});
        };
        """
    )
    solve(driver, MUFFINS, SOLVE_KEY)
    wait(driver, lambda d: state(d) == "done", "the end of the stream")
    assert [p.text for p in driver.find_elements("css selector", "#transcript .prose")] == [
        "Priya starts with 7 boxes of 6 muffins and gives 15 away. Let me compute.",
        "She has 27 muffins left, so the answer is \\boxed{27}.",
    ]
    assert (text_of(driver, ".cell pre.code"), text_of(driver, ".cell pre.output")) == (MUFFIN_CODE, "27")
    assert text_of(driver, "#answer") == "27"


def test_model_output_is_shown_as_text_never_run_as_html(driver: Any, live: LiveServer) -> None:
    open_page(driver, live)
    solve(driver, "Be hostile", SOLVE_KEY)
    wait(driver, lambda d: state(d) in {"done", "failed"}, "the end of the stream")
    assert state(driver) == "done" and text_of(driver, "#answer") == "5"
    output = driver.find_element("css selector", ".cell pre.output")
    assert output.get_attribute("data-status") == "error" and "failed" in str(output.get_attribute("class"))
    assert HOSTILE_OUTPUT in output.text and "ZeroDivisionError" in output.text
    assert HOSTILE_PROSE in text_of(driver, "#transcript .prose")
    assert driver.execute_script("return document.body.dataset.pwned") is None
    assert driver.find_elements("css selector", "#transcript img, #transcript script, #injected") == []


def test_a_wrong_key_shows_the_servers_refusal(driver: Any, live: LiveServer) -> None:
    open_page(driver, live)
    solve(driver, MUFFINS, "sk-not-a-key")
    wait(driver, lambda d: state(d) == "failed", "the refusal")
    message = text_of(driver, "#error")
    assert message.startswith("401: ") and "set the API key above" in message
    assert driver.find_element("id", "result").get_attribute("hidden") is not None


def test_stop_aborts_the_stream_and_the_server_cancels_the_trajectory(driver: Any, live: LiveServer) -> None:
    open_page(driver, live)
    solve(driver, "Hold after one cell", SOLVE_KEY)
    wait(driver, lambda d: text_of(d, ".cell pre.output") == "1", "the first cell's output")
    assert state(driver) == "running" and live.services.pool.stats().leased >= 1
    driver.find_element("id", "stop").click()
    wait(driver, lambda d: state(d) == "stopped", "the stopped state")
    assert driver.find_element("id", "stop").get_attribute("disabled") is not None
    assert driver.find_element("id", "solve").get_attribute("disabled") is None
    asyncio.run(leased_drops_to_zero(live))  # the disconnect cancelled the job; its kernel went back
