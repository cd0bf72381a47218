"""The explorer page driven in headless Chromium (the Debian package, never Playwright's own
download), against the app served on a free loopback port over a SQLite file with realistic
records. Leaves a screenshot in tests/artifacts/explorer.png for the README."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_data import seed
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.server import ApiServer, serve_app_in_thread
from api.settings import ApiSettings
from storage.database import make_engine, session_factory, upgrade
from storage.queries import get_flagged

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make system-deps` to install Chromium", pytrace=False
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'explorer.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    seed(factory, 120)
    yield factory
    engine.dispose()


def serve(sessions: sessionmaker[Session], token: str | None = None) -> ApiServer:
    return serve_app_in_thread(create_app(ApiSettings(token=token), sessions))


def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": 1480, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.goto(url)
    return page, errors


def test_explorer_filters_explains_maps_and_takes_feedback(
    browser: Browser, sessions: sessionmaker[Session]
) -> None:
    with serve(sessions) as server:
        page, errors = open_page(browser, f"{server.url}/")
        page.wait_for_selector("#records tbody tr")
        assert page.locator("#model-select option").count() == 3  # any + two versions

        page.fill("input[name=topic]", "payments")
        page.fill("input[name=min_severity]", "60")
        page.click("#filters button[type=submit]")
        page.wait_for_function(
            """() => [...document.querySelectorAll('#records tbody tr td:nth-child(2)')]
                 .every((td) => td.textContent === 'payments')"""
        )
        rows = page.locator("#records tbody tr")
        assert rows.count() > 3
        severities = [float(s) for s in page.locator("#records tbody .badge").all_inner_texts()]
        assert min(severities) >= 60

        row = rows.nth(2)
        record_id = int(row.get_attribute("data-id") or 0)
        row.click()
        page.wait_for_selector(f"#latent-map circle.record-point.selected[data-id='{record_id}']")
        detail = get_detail(server.url, record_id)

        features = detail["explanation"]["features"]
        names = page.locator(".feature-row .feature-name").all_inner_texts()
        assert names == [f["name"] for f in features]
        assert_feature_bars(page, features)
        assert page.locator("#latent-map ellipse.cluster-ellipse").count() == 3
        assert page.locator("#latent-map circle.record-point").count() >= 2
        metrics = page.locator(".metrics").inner_text()
        assert (
            "density" in metrics
            and "reconstruction" in metrics
            and f"C{detail['cluster']}" in metrics
        )
        assert detail["record"]["id"] in page.locator("pre.record").inner_text()

        page.fill("#feedback-note", "customer confirmed the card was stolen")
        page.click("#mark-true")
        page.wait_for_selector(".history li")
        stored = get_detail(server.url, record_id)["latest_feedback"]
        assert stored["label"] == "true_alarm"
        assert stored["note"] == "customer confirmed the card was stolen"
        with sessions() as session:
            stored_row = get_flagged(session, record_id)
        assert stored_row is not None and stored_row.label == "true_alarm"
        assert page.locator(f"#records tbody tr[data-id='{record_id}'] .verdict").inner_text() == (
            "true alarm"
        )

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)
        page.close()
    assert errors == []


def test_paging_keeps_the_applied_filters_until_new_ones_are_submitted(
    browser: Browser, sessions: sessionmaker[Session]
) -> None:
    """A cursor belongs to its query: a filter typed but not yet applied must not be sent with
    the cursor of the applied one (the API would answer 422)."""
    with serve(sessions) as server:
        page, errors = open_page(browser, f"{server.url}/")
        page.wait_for_selector("#records tbody tr")
        page.fill("input[name=topic]", "payments")  # typed, not submitted
        page.click("#next-page")
        page.wait_for_function("() => document.getElementById('page-info').textContent === '26–50'")
        assert "error" not in (page.locator("#status").get_attribute("class") or "")
        topics = set(page.locator("#records tbody tr td:nth-child(2)").all_inner_texts())
        assert len(topics) > 1  # still the unfiltered query's second page
        page.click("#filters button[type=submit]")
        page.wait_for_function("() => document.getElementById('page-info').textContent === '1–25'")
        assert set(page.locator("#records tbody tr td:nth-child(2)").all_inner_texts()) == {
            "payments"
        }
        page.close()
    assert errors == []


def test_explorer_asks_for_the_token_and_sends_it(
    browser: Browser, sessions: sessionmaker[Session]
) -> None:
    with serve(sessions, token="page-token-0123456") as server:
        page, errors = open_page(browser, f"{server.url}/")
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token-input", "page-token-0123456")
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#records tbody tr")
        assert page.locator("#token-form").is_hidden()
        stored = page.evaluate("() => sessionStorage.getItem('latentwatch.token')")
        assert stored == "page-token-0123456"
        page.close()
    # the first, refused requests are logged by the browser as failed loads (401): expected
    assert all("401" in e for e in errors), errors


def assert_feature_bars(page: Page, features: list[dict[str, Any]]) -> None:
    """Numeric fields: actual and expected as two marks on the field's axis, in the order of
    their values, within the model's typical range band; categorical ones: both values as
    text. Every field keeps its contribution bar, the largest first."""
    numeric = [f for f in features if isinstance(f["expected"], float | int)]
    text = [f for f in features if f not in numeric]
    assert numeric and text  # the seeded records explain both kinds
    for f in numeric:
        row = page.locator(f".feature-row[data-feature='{f['name']}'][data-kind='numeric']")
        actual, expected = row.locator(".mark.actual"), row.locator(".mark.expected")
        assert (actual.count(), expected.count()) == (1, 1), f["name"]
        assert float(actual.get_attribute("data-value") or "nan") == f["actual"]
        assert float(expected.get_attribute("data-value") or "nan") == f["expected"]
        x_actual, x_expected = (centre_x(mark) for mark in (actual, expected))
        if f["actual"] != f["expected"]:
            assert (x_actual > x_expected) == (f["actual"] > f["expected"]), f["name"]
        band = row.locator(".typical").bounding_box()
        assert band is not None and band["x"] <= x_expected <= band["x"] + band["width"]
        shown = row.locator(".feature-values .actual").inner_text()
        assert float(shown) == pytest.approx(f["actual"], rel=1e-2, abs=1e-2)
    for f in text:
        row = page.locator(f".feature-row[data-feature='{f['name']}'][data-kind='text']")
        assert row.locator(".value.actual").inner_text() == f["actual"]
        assert row.locator(".value.expected").inner_text() == f["expected"]
        assert row.locator(".mark").count() == 0
    widths = [box["width"] for box in boxes(page, ".feature-contribution .fill")]
    assert len(widths) == len(features) and all(w > 0 for w in widths)
    assert widths[0] == max(widths)  # most surprising first, drawn longest


def centre_x(locator: Locator) -> float:
    box = locator.bounding_box()
    assert box is not None
    return box["x"] + box["width"] / 2


def get_detail(url: str, record_id: int) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/flagged/{record_id}", timeout=10)
    response.raise_for_status()
    detail: dict[str, Any] = response.json()
    return detail


def boxes(page: Page, selector: str) -> list[dict[str, float]]:
    found = [
        page.locator(selector).nth(i).bounding_box() for i in range(page.locator(selector).count())
    ]
    return [box for box in found if box is not None]
