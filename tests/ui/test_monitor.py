"""The console's Monitor page in a real Chromium: a shadow's matrix, a drifting version's charts.

Its own server (2 workers, Redis) and two tiny bundles; with PISTON_UI_SCREENSHOTS=docs it
saves docs/console-shadow.png and docs/console-monitor.png.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from piston.live import connect
from tests.conftest import Trained, own_redis
from tests.service.conftest import running_server
from tests.service.test_drift_watch import darkened
from tests.ui.browser import chromium, wait_for
from tests.ui.conftest import screenshot, tiny_registry

pytestmark = pytest.mark.slow
REDIS = own_redis(10)  # its own database: the fixture empties it
TOKEN = "monitor-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Served:
    url: str
    production: str
    candidate: str


@pytest.fixture(scope="module")
def served(trained: Trained) -> Iterator[Served]:
    with tiny_registry(trained, "piston-monitor-") as (root, first, second):
        connect(REDIS).flushdb()
        env = {"PISTON_REGISTRY": str(root / "registry"), "PISTON_POLL_INTERVAL_S": "0.5",
               "PISTON_ADMIN_TOKEN": TOKEN, "PISTON_REDIS_URL": REDIS,
               "PISTON_LIVE_FLUSH_S": "0.3", "PISTON_DRIFT_WINDOW_S": "60",
               "PISTON_DRIFT_MIN_IMAGES": "10", "PISTON_SHADOW_MAX_WAIT_S": "5"}
        with running_server("source", env, root / "server.log", workers=2) as url:
            yield Served(url, first, second)
        connect(REDIS).flushdb()


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    with chromium() as driver:
        driver.get(f"{served.url}/ui/")
        driver.execute_script("sessionStorage.setItem('piston-admin-token', arguments[0])", TOKEN)
        yield driver


def classify(url: str, images: list[bytes]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for data in images:
            response = client.post("/classify", content=data,
                                   headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text


def test_shadow_started_from_the_models_page_shows_its_matrix(
        browser: Any, served: Served, piston_data: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{served.url}/ui/#models")
    browser.refresh()  # the token set after the first load: shown as set
    button = wait_for(browser, lambda d: d.find_element(
        By.CSS_SELECTOR, f'tr[data-version="{served.candidate}"] button[data-action="shadow"]'),
        what="the Shadow button")
    button.click()
    share = browser.find_element(By.ID, "shadow-share")
    share.clear()
    share.send_keys("1")
    browser.find_element(By.ID, "shadow-go").click()
    wait_for(browser, lambda d: "#monitor" in d.current_url, what="the Monitor page")

    def loaded_everywhere() -> bool:
        return all(httpx.get(f"{served.url}/model", timeout=10).json()["shadow"]["loaded"]
                   for _ in range(16))
    deadline = time.monotonic() + 90
    while not loaded_everywhere():
        assert time.monotonic() < deadline, "the candidate never loaded on both workers"
        time.sleep(0.3)
    images = [p.read_bytes() for cls in ("normal", "defect_1", "defect_2")
              for p in sorted((piston_data / cls).glob("*.jp*g"))[:8]]
    classify(served.url, images)
    headline = wait_for(browser, lambda d: (t := d.find_element(By.ID, "shadow-headline").text)
                        .startswith("agreement") and t.endswith(f"on {len(images)} live images")
                        and t, timeout=60, what="the headline to count every image")
    cells = browser.find_elements(By.CSS_SELECTOR, "#shadow-matrix tbody td")
    assert sum(int(c.text) for c in cells) == len(images), headline
    screenshot(browser, "shadow")


def test_a_darkened_feed_is_marked_drifting_on_the_monitor_page(
        browser: Any, served: Served, piston_data: Path) -> None:
    from selenium.webdriver.common.by import By

    httpx.post(f"{served.url}/admin/shadow/stop", headers=AUTH, timeout=30).raise_for_status()
    dark = [darkened(p, 0.3) for p in sorted((piston_data / "normal").glob("*.jp*g"))[:40]]
    classify(served.url, dark)
    browser.get(f"{served.url}/ui/#monitor")
    browser.refresh()
    wait_for(browser, lambda d: d.find_element(
        By.CSS_SELECTOR, f'.monitor-card[data-version="{served.production}"] [data-drift]')
        .get_attribute("data-drift") == "drifting", timeout=60, what="the drifting mark")
    # the header asks /model, which a worker answers from its own drift tick: wait for it
    wait_for(browser, lambda d: [e.text for e in d.find_elements(By.ID, "serving-drift")]
             == ["drifting"], timeout=60, what="the header's drifting mark")
    charts = browser.find_elements(By.CSS_SELECTOR,
                                   f'.monitor-card[data-version="{served.production}"] svg.chart')
    assert len(charts) == 8
    browser.execute_script("const top = document.getElementById('monitor-bounds')"
                           ".getBoundingClientRect().top; window.scrollTo(0, top + scrollY - 110)")
    screenshot(browser, "monitor")
