"""The console in a real browser (Debian's Chromium) against a real `bentoml serve` and worker.

The tests share one server and run in order; each reads where production is before it acts.
"""

from __future__ import annotations

import base64
import csv
import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from piston.registry import Registry
from piston.storage import open_storage
from tests.ui.browser import wait_for
from tests.ui.conftest import Console, screenshot

pytestmark = pytest.mark.slow


def registry(console: Console) -> Registry:
    return Registry(open_storage(console.registry))


def open_view(driver: Any, console: Console, view: str) -> None:
    driver.get(f"{console.url}/ui/#{view}")
    driver.refresh()  # a hash change alone does not reload the page
    wait_for(driver, lambda d: d.find_element(By.ID, f"view-{view}").is_displayed(), what=view)


def rows(driver: Any) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#models-table tbody tr[data-version]")


def production_row(driver: Any) -> str | None:
    marked = driver.find_elements(By.CSS_SELECTOR, "#models-table tr.production")
    return marked[0].get_attribute("data-version") if marked else None


def toast(driver: Any) -> str:
    return wait_for(driver, lambda d: d.find_element(By.ID, "toast").is_displayed()
                    and d.find_element(By.ID, "toast").text, what="a message")


def move_from_page(driver: Any, version: str, action: str, reason: str) -> None:
    """Click Promote / Roll back on a bundle's row, give a reason, confirm."""
    row = driver.find_element(By.CSS_SELECTOR, f'#models-table tr[data-version="{version}"]')
    row.find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()
    wait_for(driver, lambda d: d.find_element(By.ID, "move-dialog").is_displayed(), what="dialog")
    driver.find_element(By.ID, "move-reason").send_keys(reason)
    driver.find_element(By.ID, "move-go").click()


def serving(console: Console) -> str:
    return str(httpx.get(f"{console.url}/model", timeout=10).json().get("version"))


def wait_serving(console: Console, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while serving(console) != version:
        assert time.monotonic() < deadline, f"still serving {serving(console)}, not {version}"
        time.sleep(0.2)


def test_models_table_shows_both_bundles_and_marks_production(browser: Any,
                                                              console: Console) -> None:
    open_view(browser, console, "models")
    wait_for(browser, lambda d: len(rows(d)) == 2, what="two bundles")
    assert {r.get_attribute("data-version") for r in rows(browser)} == {console.first,
                                                                       console.second}
    assert production_row(browser) == console.first
    marked = browser.find_element(By.CSS_SELECTOR, "#models-table tr.production")
    assert "production" in marked.text
    assert marked.find_elements(By.CSS_SELECTOR, 'button[data-action="rollback"]')
    other = browser.find_element(By.CSS_SELECTOR, f'tr[data-version="{console.second}"]')
    assert other.find_elements(By.CSS_SELECTOR, 'button[data-action="promote"]')
    assert "input 80\u00d780 px" in marked.text and "pass" in marked.text
    assert "console tests: start" in browser.find_element(By.ID, "history").text


def test_promote_and_roll_back_from_the_page(browser: Any, console: Console) -> None:
    store = registry(console)
    assert store.current() == console.first
    open_view(browser, console, "models")
    wait_for(browser, lambda d: production_row(d) == console.first, what="the table")

    move_from_page(browser, console.second, "promote", "better on line 2")
    wait_for(browser, lambda d: production_row(d) == console.second, what="the promote")
    assert store.current() == console.second
    wait_serving(console, console.second)

    move_from_page(browser, console.second, "rollback", "operators saw false alarms")
    wait_for(browser, lambda d: production_row(d) == console.first, what="the rollback")
    assert store.current() == console.first
    wait_serving(console, console.first)
    last = store.history()[-2:]
    assert [(m.action, m.version, m.reason) for m in last] == [
        ("promote", console.second, "better on line 2"),
        ("rollback", console.first, "operators saw false alarms")]
    assert "operators saw false alarms" in browser.find_element(By.ID, "history").text


def test_a_stale_move_is_refused(browser: Any, console: Console) -> None:
    store = registry(console)
    open_view(browser, console, "models")
    wait_for(browser, lambda d: production_row(d) == console.first, what="the table")
    # Someone else moves production while this page shows the old state.
    store.promote(console.second, "moved from another desk", expected=console.first)
    moves = len(store.history())

    move_from_page(browser, console.first, "rollback", "from a stale page")
    message = toast(browser)
    assert "Refused: production moved" in message, message
    assert store.current() == console.second
    assert len(store.history()) == moves
    wait_for(browser, lambda d: production_row(d) == console.second, what="the refreshed table")
    store.rollback("back to the start", expected=console.second)
    wait_serving(console, console.first)  # the next test expects the first bundle serving
    open_view(browser, console, "models")
    wait_for(browser, lambda d: production_row(d) == console.first, what="the table")
    screenshot(browser, "models")


def drop(driver: Any, data: bytes, name: str, mime: str) -> None:
    """Drop a file on the drop zone the way a browser does (a DataTransfer on a drop event)."""
    driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], arguments[1], { type: arguments[2] }));
        const zone = document.getElementById("drop");
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true,
                                                   cancelable: true }));
    """, base64.b64encode(data).decode(), name, mime)


def test_a_dropped_image_shows_its_label(browser: Any, console: Console,
                                         piston_data: Path) -> None:
    image = sorted((piston_data / "defect_2").glob("*.jp*g"))[0].read_bytes()
    wait_serving(console, registry(console).current())  # not mid-swap after an earlier move
    expected = httpx.post(f"{console.url}/classify", content=image, timeout=30,
                          headers={"content-type": "image/jpeg"}).json()
    open_view(browser, console, "try")

    drop(browser, image, "part.jpeg", "image/jpeg")
    wait_for(browser, lambda d: d.find_element(By.ID, "try-result").is_displayed(), what="label")
    assert browser.find_element(By.ID, "try-label").text == expected["label"]
    assert browser.find_element(By.ID, "try-version").text == expected["model_version"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#try-bars .track")
    assert len(bars) == len(expected["probabilities"])
    review = browser.find_element(By.ID, "try-review").text
    assert review == ("needs review" if expected["needs_review"] else "confident")
    model = httpx.get(f"{console.url}/model", timeout=30).json()
    limit = (model["class_thresholds"] or {}).get(expected["label"], model["threshold"])
    assert browser.find_element(By.ID, "try-threshold").text.startswith(f"{100 * limit:.1f}%")
    screenshot(browser, "try")

    drop(browser, b"%PDF-1.4 a drawing, not a photo", "drawing.pdf", "application/pdf")
    wait_for(browser, lambda d: d.find_element(By.ID, "try-error").is_displayed(), what="error")
    assert "not a recognised image" in browser.find_element(By.ID, "try-error").text
    assert not browser.find_element(By.ID, "try-result").is_displayed()


def newest_job(driver: Any) -> str:
    """The newest job card's text, read in one go (the list re-renders every 2 s)."""
    return str(driver.execute_script("const card = document.querySelector('#jobs-list .job');"
                                     " return card ? card.innerText : '';"))


def test_a_scoring_job_started_from_the_page_runs_to_the_end(browser: Any,
                                                             console: Console) -> None:
    open_view(browser, console, "jobs")
    form = browser.find_element(By.ID, "score-form")
    form.find_element(By.NAME, "src").send_keys(str(console.batch))
    form.find_element(By.NAME, "out").send_keys(str(console.results))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert "queued" in toast(browser)
    card = wait_for(browser, lambda d: "SUCCESS" in newest_job(d) and newest_job(d),
                    timeout=120, what="the job to succeed")
    files = sum(1 for f in console.batch.rglob("*") if f.is_file())
    assert f"scored {files} / {files}" in card, card
    assert f"{console.batch} \u2192 {console.results}" in card
    screenshot(browser, "jobs")


def reviewed_rows(console: Console) -> list[dict[str, str]]:
    path = console.results / "labels" / "reviewed.csv"
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []


def test_reviewing_two_images_writes_two_rows(browser: Any, console: Console) -> None:
    flagged = list(csv.DictReader(io.StringIO(
        (console.results / "labels" / "review.csv").read_text())))
    assert len(flagged) >= 2  # the two non-images at least
    open_view(browser, console, "review")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".thumb")) == len(flagged),
             what="the queue")
    cards = browser.find_elements(By.CSS_SELECTOR, ".thumb")
    classes = [b.get_attribute("data-class")
               for b in cards[0].find_elements(By.CSS_SELECTOR, ".choices button")]
    assert classes == ["defect_1", "defect_2", "normal"]

    first, second = cards[0].get_attribute("data-key"), cards[1].get_attribute("data-key")
    browser.find_element(By.TAG_NAME, "body").send_keys("3")  # key 3: the third class
    wait_for(browser, lambda d: "1 of" in d.find_element(By.ID, "review-progress").text,
             what="the first answer")
    cards[1].find_element(By.CSS_SELECTOR, 'button[data-class="defect_2"]').click()
    wait_for(browser, lambda d: "2 of" in d.find_element(By.ID, "review-progress").text,
             what="the second answer")
    assert reviewed_rows(console) == [{"image_path": first, "target": "normal"},
                                      {"image_path": second, "target": "defect_2"}]
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".thumb img"), what="thumbnails")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    screenshot(browser, "review")


def heat_shown(driver: Any, scope: str) -> bool:
    """Whether a heatmap and its box are laid over an image under `scope`, and visible."""
    return bool(driver.execute_script("""
        const heat = document.querySelector(arguments[0] + ' .stage .heat');
        const box = document.querySelector(arguments[0] + ' .stage .heat-box');
        if (!heat || !box || !heat.complete || heat.naturalWidth === 0) return false;
        const img = heat.parentElement.querySelector('img');
        const a = heat.getBoundingClientRect(), b = img.getBoundingClientRect();
        const over = Math.abs(a.width - b.width) < 2 && Math.abs(a.height - b.height) < 2;
        return over && getComputedStyle(heat).display !== 'none'
          && getComputedStyle(box).display !== 'none';""", scope))


def test_the_heatmap_overlay_toggles_in_try_it_and_in_the_review_queue(
        browser: Any, console: Console, piston_data: Path) -> None:
    image = (piston_data / "defect_1" / "defect_30.jpeg").read_bytes()
    open_view(browser, console, "try")
    toggle = browser.find_element(By.ID, "try-heatmap")
    assert toggle.is_selected()  # on by default: a person asked about one image
    drop(browser, image, "holed.jpeg", "image/jpeg")
    wait_for(browser, lambda d: heat_shown(d, "#drop"), what="the heatmap over the image")
    assert "of 80\u00d780" in browser.find_element(By.ID, "try-box-text").text
    screenshot(browser, "try-heatmap")
    toggle.click()
    wait_for(browser, lambda d: not heat_shown(d, "#drop"), what="the heatmap to hide")
    toggle.click()
    wait_for(browser, lambda d: heat_shown(d, "#drop"), what="the heatmap back")

    open_view(browser, console, "review")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".thumb .stage img"),
             what="thumbnails")
    assert not heat_shown(browser, "#review-grid")  # off until asked for
    browser.find_element(By.ID, "review-heatmaps").click()
    wait_for(browser, lambda d: heat_shown(d, "#review-grid"), timeout=60,
             what="heatmaps over the flagged images")
    readable = browser.find_elements(By.CSS_SELECTOR, ".thumb .stage")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".thumb .stage .heat"))
             == len(readable), timeout=90, what="a heatmap on every readable image (messages:"
             f" {browser.find_element(By.ID, 'toast').get_attribute('textContent')!r})")
    screenshot(browser, "review-heatmap")
    browser.find_element(By.ID, "review-heatmaps").click()
    wait_for(browser, lambda d: not heat_shown(d, "#review-grid"), what="the heatmaps to hide")


def test_retrain_with_reviewed_labels_is_one_button(browser: Any, console: Console,
                                                    piston_data: Path) -> None:
    from piston.jobs import cancel, job_status

    answered = {r["image_path"]: r["target"] for r in reviewed_rows(console)}
    assert len(answered) == 2  # from the test before
    open_view(browser, console, "review")
    button = browser.find_element(By.ID, "review-retrain")
    wait_for(browser, lambda d: button.is_enabled(), what="the retrain button")
    button.click()
    wait_for(browser, lambda d: d.switch_to.alert, what="the confirmation").accept()
    message = toast(browser)
    assert "Retraining job" in message, message
    job_id = message.split("Retraining job ")[1].split()[0]
    status = job_status(console.redis_url, job_id)
    assert status["kind"] == "retrain"
    training = Path(status["dataset"])
    assert training.parent == console.results / "_retrain"
    deadline = time.monotonic() + 120
    while "progress" not in status:  # the worker accepted the set and trains on it
        assert status["state"] not in ("FAILURE", "REVOKED"), status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
        status = job_status(console.redis_url, job_id)
    cancel(console.redis_url, job_id)  # no need to wait for the whole training
    copied = {p.relative_to(training).as_posix() for p in training.rglob("*") if p.is_file()}
    originals = {p.relative_to(piston_data).as_posix().replace("/", "__")
                 for p in piston_data.glob("*/*.jp*g")}
    assert {c.split("/", 1)[1] for c in copied if "reviewed__" not in c} == originals
    assert {c for c in copied if "reviewed__" in c} == {
        f"{target}/reviewed__{key.replace('/', '__')}" for key, target in answered.items()}


def test_each_bundle_report_opens_from_the_page(browser: Any, console: Console) -> None:
    open_view(browser, console, "models")
    wait_for(browser, lambda d: len(rows(d)) == 2, what="two bundles")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-version="{console.second}"]')
    row.find_element(By.XPATH, ".//button[text()='Report']").click()
    frame = wait_for(browser, lambda d: d.find_element(By.ID, "report-dialog").is_displayed()
                     and d.find_element(By.ID, "report-frame"), what="the report")
    srcdoc = frame.get_attribute("srcdoc")
    assert f"piston-classifier {console.second}" in srcdoc
    assert "Quality gates" in srcdoc and "data:image/png;base64," in srcdoc
    assert 'src="curves.png"' not in srcdoc  # the pictures are inlined
    time.sleep(0.5)  # let the frame paint before the picture is taken
    screenshot(browser, "report")
    browser.find_element(By.ID, "report-close").click()


def test_a_wrong_or_missing_token_gets_a_clear_message(browser: Any, console: Console) -> None:
    browser.execute_script("sessionStorage.setItem('piston-admin-token', 'not-the-token')")
    try:
        open_view(browser, console, "models")
        assert "The admin token was refused" in toast(browser)
        browser.execute_script("sessionStorage.removeItem('piston-admin-token')")
        open_view(browser, console, "models")
        hint = browser.find_element(By.CSS_SELECTOR, '.needs-token[data-for="models"]')
        assert hint.is_displayed() and "Set the admin token" in hint.text
        assert browser.find_element(By.ID, "token-button").text == "Admin token: not set"
    finally:
        browser.execute_script("sessionStorage.setItem('piston-admin-token', arguments[0])",
                               console.token)


def test_console_api_refuses_bad_input(console: Console) -> None:
    auth = {"authorization": f"Bearer {console.token}"}
    jobs = httpx.get(f"{console.url}/ui/api/jobs", headers=auth, timeout=10).json()["jobs"]
    job = next(j["job_id"] for j in jobs if j["kind"] == "score")
    retrain_job = next(j["job_id"] for j in jobs if j["kind"] == "retrain")
    flagged = httpx.get(f"{console.url}/ui/api/jobs/{job}/review", headers=auth,
                        timeout=10).json()["items"][0]["image_path"]
    base = f"{console.url}/ui/api"
    table = [
        ("no token", "GET", f"{base}/jobs", {}, None, 401, "unauthorized"),
        ("unknown class", "POST", f"{base}/jobs/{job}/review", auth,
         {"image_path": flagged, "target": "cracked"}, 422, "invalid_body"),
        ("not flagged", "POST", f"{base}/jobs/{job}/review", auth,
         {"image_path": "../../etc/passwd", "target": "normal"}, 404, "not_found"),
        ("extra field", "POST", f"{base}/jobs/{job}/review", auth,
         {"image_path": flagged, "target": "normal", "by": "x"}, 422, "invalid_body"),
        ("thumbnail of another file", "GET",
         f"{base}/jobs/{job}/thumbnail?key=line-2/../../registry", auth, None, 404, "not_found"),
        ("heatmap of another file", "GET",
         f"{base}/jobs/{job}/heatmap?key=line-2/../../registry", auth, None, 404, "not_found"),
        ("heatmap without the token", "GET", f"{base}/jobs/{job}/heatmap?key={flagged}", {},
         None, 401, "unauthorized"),
        ("bad job id", "GET", f"{base}/jobs/job%20one/review", auth, None, 400,
         "invalid_name"),
        ("unknown job", "GET", f"{base}/jobs/0b1c2d3e-aaaa-bbbb-cccc-000000000000/review", auth,
         None, 404, "not_found"),
        ("not a scoring job", "GET", f"{base}/jobs/{retrain_job}/review", auth, None, 409,
         "conflict"),
        ("unknown bundle report", "GET", f"{base}/models/20000101-000000-000/report", auth,
         None, 404, "not_found"),
        ("unknown asset", "GET", f"{console.url}/ui/static/secrets.txt", {}, None, 404,
         "not_found"),
    ]
    with httpx.Client(timeout=30) as client:
        for name, method, url, headers, body, status, kind in table:
            response = client.request(method, url, headers=headers, json=body)
            assert response.status_code == status, (name, response.text)
            assert response.json()["kind"] == kind, (name, response.text)
            assert response.json()["error"], name
    assert len(reviewed_rows(console)) == 2  # nothing refused was written
