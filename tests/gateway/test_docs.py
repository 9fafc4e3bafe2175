"""`GET /docs`: Swagger UI over the node's OpenAPI document, every file from the node.

The browser test needs Debian's `chromium` and `chromium-driver`; without them it is
skipped (CI installs them).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from gateway_fixtures import GatewayNode, gateway  # noqa: F401

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
RENDER_TIMEOUT = 60.0

TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


class _Links(HTMLParser):
    """The URLs a page loads: style sheets and icons (`href`), scripts (`src`)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"link": "href", "script": "src"}.get(tag)
        self.urls += [v for k, v in attrs if k == wanted and v]


def _loaded_by(page: str) -> list[str]:
    links = _Links()
    links.feed(page)
    return links.urls


def test_the_page_and_every_file_it_loads_answer_without_a_key(
        gateway: GatewayNode) -> None:  # noqa: F811
    page = requests.get(f"{gateway.url}/docs", timeout=30)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    assert page.headers["ETag"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    urls = _loaded_by(page.text)
    assert sorted(urljoin("/docs", url) for url in urls) == [
        "/docs/favicon-16x16.png", "/docs/favicon-32x32.png", "/docs/index.css",
        "/docs/swagger-initializer.js", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"]
    for url in urls:
        answer = requests.get(urljoin(f"{gateway.url}/docs", url), timeout=30)
        assert answer.status_code == 200, url
        suffix = Path(url).suffix
        assert answer.headers["Content-Type"].split(";")[0] == TYPES[suffix], url
        assert answer.headers["Cache-Control"] == "no-cache", url
        assert answer.headers["X-Content-Type-Options"] == "nosniff", url
        assert len(answer.content) > 100, url


def test_the_initializer_reads_the_nodes_own_document(gateway: GatewayNode) -> None:  # noqa: F811
    script = requests.get(f"{gateway.url}/docs/swagger-initializer.js", timeout=30).text
    assert 'url: "openapi.json"' in script  # from /docs: /openapi.json
    assert "validatorUrl: null" in script  # else Swagger UI sends the document away


def test_a_file_the_browser_already_holds_is_answered_304(gateway: GatewayNode) -> None:  # noqa: F811
    first = requests.get(f"{gateway.url}/docs/swagger-ui.css", timeout=30)
    again = requests.get(f"{gateway.url}/docs/swagger-ui.css", timeout=30,
                         headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    changed = requests.get(f"{gateway.url}/docs/swagger-ui.css", timeout=30,
                           headers={"If-None-Match": '"another-version"'})
    assert changed.status_code == 200


@pytest.mark.parametrize("name", ["nope.js", "index.html", "swagger-ui-es-bundle.js"])
def test_a_file_the_page_does_not_load_is_a_json_404(gateway: GatewayNode,  # noqa: F811
                                                     name: str) -> None:
    answer = requests.get(f"{gateway.url}/docs/{name}", timeout=30)
    assert answer.status_code == 404
    assert answer.json() == {"type": "not_found", "message": f"no route for /docs/{name}",
                             "resource": "route", "resource_id": f"/docs/{name}"}


def test_the_document_leaves_the_pages_out(gateway: GatewayNode) -> None:  # noqa: F811
    paths = requests.get(f"{gateway.url}/openapi.json", timeout=30).json()["paths"]
    assert [p for p in paths if p.startswith("/docs")] == []
    assert "/ipam/v1/regions/{region}/ips" in paths


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by Debian's chromedriver, logging the network and console."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver packages "
                    "(apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path: no Selenium Manager download
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--no-proxy-server", "--window-size=1280,1600",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_by(driver: Any, page: str) -> list[str]:
    """Every URL `page` made the browser request (the browser's own tabs left out)."""
    events = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return [e["params"]["request"]["url"] for e in events
            if e["method"] == "Network.requestWillBeSent" and e["params"]["documentURL"] == page]


def test_a_browser_renders_the_api_from_the_node_alone(gateway: GatewayNode,  # noqa: F811
                                                       browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    page = f"{gateway.url}/docs"
    browser.get(page)
    wait = WebDriverWait(browser, RENDER_TIMEOUT)
    title = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".info .title")))
    assert title.text.startswith("ipam")
    operation = wait.until(ec.visibility_of_element_located(
        (By.CSS_SELECTOR, '.opblock-summary-path[data-path^="/ipam/v1/"]')))
    assert operation.text.startswith("/ipam/v1/regions/")
    screenshot = tmp_path / "docs.png"  # kept by pytest under its basetemp, for a person
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # a rendered page, not a blank one

    requested = _requested_by(browser, page)
    assert f"{gateway.url}/openapi.json" in requested
    assert f"{gateway.url}/docs/swagger-ui-bundle.js" in requested
    assert [u for u in requested if not u.startswith((gateway.url + "/", "data:"))] == []
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []  # a blocked file or a Content-Security-Policy violation shows here
