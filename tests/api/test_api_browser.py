"""The explorer page driven in headless Chromium (the Debian package, never Playwright's own
download), against the app served on a free loopback port over a SQLite file with realistic
records, at desktop and phone sizes. Leaves screenshots in tests/artifacts/ (git-ignored) for
people to look at; docs/images/explorer.png is a copy of explorer-desktop.png."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, sync_playwright
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.server import ApiServer, serve_app_in_thread
from api.settings import ApiSettings
from detector import artifact
from storage.database import make_engine, session_factory, upgrade
from storage.models import FlaggedRecordRow
from storage.queries import get_flagged
from storage.records import ModelScore, ModelVersion, RunCount
from storage.repository import add_feedback, write_flagged
from streams.messages import PlainMessage
from streams.scoring import flagged_records
from tests.support.api_data import MODEL_A, MODEL_B, T0, flagged, manifest, seed

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
DESKTOP = {"width": 1480, "height": 1000}
PHONE = {"width": 390, "height": 844}
GREY = "rgb(138, 147, 161)"  # the badge of a severity below its model's threshold
FLAG_SEVERITY = 100 * math.log(0.01) / math.log(1e-6)  # MODEL_A flags at fpr 0.01
# Two reference clusters whose centres almost coincide (their labels would overlap), a third
# far from both; and a record of this model far from all of them.
MODEL_C = ModelVersion(
    "c0ffee000001",
    manifest("c0ffee000001")
    | {
        "latent_map": {
            "method": "pca",
            "clusters": [
                {"cluster": c, "share": 1 / 3, "center_2d": xy, "covariance_2d": cov}
                for c, xy, cov in (
                    (0, [0.0, 0.0], [[0.3, 0.0], [0.0, 0.2]]),
                    (1, [0.12, 0.08], [[0.2, 0.05], [0.05, 0.3]]),
                    (2, [2.5, 1.5], [[0.4, 0.1], [0.1, 0.3]]),
                )
            ],
        }
    },
)
LONG_NAME = "customer_shipping_address_line_" * 8  # 256 characters, no break


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


def edge_cases() -> list[Any]:
    """Records older than the seeded ones (so not on the first page): an infinite score, a
    field name and value far longer than a screen, and a record far from its model's clusters
    beside three near them."""
    before = T0 - timedelta(minutes=30)
    long_value = "x" * 300
    features = [
        {"name": LONG_NAME, "actual": long_value, "expected": "short", "contribution": 4.2},
        {"name": "amount", "actual": 9_100.0, "expected": 42.0, "contribution": 2.1},
    ]
    long_one = flagged(
        1_001,
        scored_time=before,
        record_id="R" * 120,
        top_feature=LONG_NAME,
        explanation={**flagged(1_001).explanation, "features": features},
        record={"id": "R" * 120, LONG_NAME: long_value},
    )
    infinite = flagged(1_002, scored_time=before, score=math.inf, density=math.inf)
    model_c = [
        flagged(
            1_003 + i,
            scored_time=before - timedelta(minutes=i + 1),
            model_version=MODEL_C.version,
            topic="telemetry",
            explanation={**flagged(1_003 + i).explanation, "latent_2d": xy},
        )
        for i, xy in enumerate([[400.0, -250.0], [0.1, 0.1], [2.4, 1.4], [0.3, -0.2]])
    ]
    return [long_one, infinite, *model_c]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('explorer') / 'explorer.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    seed(factory, 120)
    write_flagged(factory, edge_cases(), [MODEL_A, MODEL_C])
    yield factory
    engine.dispose()


@pytest.fixture(scope="module")
def server(sessions: sessionmaker[Session]) -> Iterator[ApiServer]:
    with serve(sessions) as running:
        yield running


def serve(sessions: sessionmaker[Session], token: str | None = None) -> ApiServer:
    return serve_app_in_thread(create_app(ApiSettings(token=token), sessions))


def record_id(sessions: sessionmaker[Session], rid: str) -> int:
    """The stored id of the record whose record_id is ``rid``."""
    with sessions() as session:
        found = session.scalar(select(FlaggedRecordRow.id).where(FlaggedRecordRow.record_id == rid))
    assert found is not None, rid
    return found


def open_page(
    browser: Browser, url: str, viewport: dict[str, int] = DESKTOP
) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.goto(url)
    return page, errors


def column(page: Page, n: int) -> list[str]:
    return page.locator(f"#records tbody tr td:nth-child({n})").all_inner_texts()


def wait_for_url(page: Page, pattern: str) -> None:
    page.wait_for_function("(p) => new RegExp(p).test(window.location.search)", arg=pattern)


def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def test_explorer_sorts_filters_draws_the_timeline_and_takes_feedback(
    browser: Browser, server: ApiServer, sessions: sessionmaker[Session]
) -> None:
    page, errors = open_page(browser, f"{server.url}/")
    page.wait_for_selector("#records tbody tr")
    assert page.locator("#model-select option").count() == 4  # any + three versions
    page.wait_for_function("() => document.getElementById('page-info').textContent.endsWith('126')")
    assert page.locator("#page-info").inner_text() == "1–25 of 126"
    assert page.locator("#total").inner_text() == "126 flagged records"
    counts = [
        int(c)
        for c in page.locator("#timeline .bucket").evaluate_all(
            "(gs) => gs.map((g) => g.dataset.count)"
        )
    ]
    assert sum(counts) == 126 and len(counts) > 10

    # severity colours follow the model's threshold: flagged means coloured, never grey
    for badge in page.locator("#records tbody .badge").all()[:25]:
        severity = float(badge.inner_text())
        colour = badge.evaluate("(b) => getComputedStyle(b).backgroundColor")
        assert (colour == GREY) == (severity < FLAG_SEVERITY), (severity, colour)

    # sortable headers, in the URL too; an infinite score is shown as such
    page.click("th[data-sort=score] button")
    wait_for_url(page, "sort=score")
    page.wait_for_function(
        "() => document.querySelector('#records tbody td.num').textContent === '∞'"
    )
    assert page.get_attribute("th[data-sort=score]", "aria-sort") == "descending"
    page.click("th[data-sort=score] button")
    wait_for_url(page, "sort=score&desc=false")
    # the URL changes before the new page of rows arrives: wait for the table itself
    page.wait_for_function(
        "() => document.querySelector('#records tbody td.num').textContent !== '∞'"
    )
    scores = [float(s) for s in column(page, 4)]
    assert (
        scores == sorted(scores) and page.get_attribute("th[data-sort=time]", "aria-sort") == "none"
    )
    page.click("th[data-sort=time] button")
    wait_for_url(page, "^(?!.*sort=)")

    page.fill("input[name=topic]", "payments")
    page.fill("input[name=min_severity]", "60")
    page.click("#filters button[type=submit]")
    page.wait_for_function(
        """() => [...document.querySelectorAll('#records tbody tr td:nth-child(2)')]
             .every((td) => td.textContent === 'payments')"""
    )
    wait_for_url(page, "min_severity=60&topic=payments")
    page.wait_for_function(
        "() => document.getElementById('total').textContent !== '126 flagged records'"
    )
    severities = [float(s) for s in page.locator("#records tbody .badge").all_inner_texts()]
    assert len(severities) > 3 and min(severities) >= 60

    row = page.locator("#records tbody tr").nth(2)
    chosen = int(row.get_attribute("data-id") or 0)
    row.click()
    page.wait_for_selector(f"#latent-map circle.record-point.selected[data-id='{chosen}']")
    wait_for_url(page, f"id={chosen}$")
    detail = get_detail(server.url, chosen)
    features = detail["explanation"]["features"]
    assert page.locator(".feature-row .feature-name").all_inner_texts() == [
        f["name"] for f in features
    ]
    assert_feature_bars(page, features)
    assert page.locator("#latent-map ellipse.cluster-ellipse").count() == 3
    metrics = page.locator(".metrics").inner_text()
    assert "density" in metrics and f"C{detail['cluster']}" in metrics
    assert detail["record"]["id"] in page.locator("pre.record").inner_text()
    binary = base64.b64decode(detail["key_base64"]) != detail["key"].encode()
    shown = f"0x{detail['key']} (binary)" if binary else detail["key"]
    assert f"key {shown} ·" in page.locator(".detail-head").inner_text()

    page.fill("#feedback-note", "customer confirmed the card was stolen")
    page.click("#mark-true")
    page.wait_for_selector(".history li")
    stored = get_detail(server.url, chosen)["latest_feedback"]
    assert (stored["label"], stored["note"]) == (
        "true_alarm",
        "customer confirmed the card was stolen",
    )
    with sessions() as session:
        stored_row = get_flagged(session, chosen)
    assert stored_row is not None and stored_row.label == "true_alarm"
    verdict = page.locator(f"#records tbody tr[data-id='{chosen}'] .verdict").inner_text()
    assert verdict == "true alarm"
    screenshot(page, "explorer-desktop.png", full_page=True)

    # a click on a bucket narrows the table to it (the other filters kept)
    busiest = page.locator("#timeline .bucket[data-count]:not([data-count='0'])").first
    start, end, count = (
        busiest.get_attribute(a) or "" for a in ("data-start", "data-end", "data-count")
    )
    busiest.click()
    wait_for_url(page, "start=")
    page.wait_for_function(
        "(n) => document.getElementById('page-info').textContent.endsWith(` of ${n}`)", arg=count
    )
    times = column(page, 1)
    assert len(times) == int(count)
    assert all(start[:19].replace("T", " ") <= t < end[:19].replace("T", " ") for t in times)
    assert page.input_value("input[name=start]") == start[:19].replace("T", " ")  # 24 h, UTC
    assert page.is_checked("input[name=range][value=custom]")
    page.wait_for_selector(f"#timeline .bucket.picked[data-start='{start}']")
    page.close()
    assert errors == []


def test_a_shared_link_opens_the_same_view_and_a_failed_query_clears_the_rows(
    browser: Browser, server: ApiServer, sessions: sessionmaker[Session]
) -> None:
    other = record_id(sessions, flagged(10).record_id or "")  # a payments record: not listed
    link = (
        f"{server.url}/?start=2026-11-01T12:30:00Z&end=2026-11-01T13:00:00Z&topic=logins"
        f"&sort=score&desc=false&refresh=0&id={other}"
    )
    page, errors = open_page(browser, link)
    page.wait_for_selector("#records tbody tr")
    page.wait_for_selector(f"#detail h2:text('Record {flagged(10).record_id}')")
    assert page.input_value("input[name=start]") == "2026-11-01 12:30:00"
    assert page.input_value("input[name=end]") == "2026-11-01 13:00:00"
    assert page.input_value("input[name=topic]") == "logins"
    assert page.input_value("#refresh") == "0"
    assert page.get_attribute("th[data-sort=score]", "aria-sort") == "ascending"
    assert set(column(page, 2)) == {"logins"}
    assert all("2026-11-01 12:30:00" <= t < "2026-11-01 13:00:00" for t in column(page, 1))
    scores = [float(s) for s in column(page, 4)]
    assert scores == sorted(scores)

    page.fill("input[name=end]", "2026-11-01 12:45")  # typed on a 24-hour clock, in UTC
    page.click("#filters button[type=submit]")
    wait_for_url(page, "end=2026-11-01T12%3A45%3A00Z")
    page.wait_for_function(
        """() => [...document.querySelectorAll('#records tbody tr td:nth-child(1)')]
             .every((td) => td.textContent < '2026-11-01 12:45')"""
    )
    page.fill("input[name=end]", "11/01/2026 1:05 PM")
    page.click("#filters button[type=submit]")
    page.wait_for_selector("#status.error")
    assert "24-hour clock" in page.inner_text("#status")

    # a query the API refuses: its error, and no rows of the previous query left under it
    page.fill("input[name=end]", "")
    page.fill("input[name=cluster]", "99999999999")
    page.click("#filters button[type=submit]")
    page.wait_for_function("() => !document.getElementById('empty').hidden")
    assert page.locator("#records tbody tr").count() == 0
    assert page.inner_text("#empty").startswith("Could not load: cluster: ")
    assert page.inner_text("#page-info") == ""
    page.close()
    assert all("422" in e for e in errors), errors  # the refused request, logged by Chromium


def test_the_latent_map_keeps_the_clusters_readable_beside_a_far_record(
    browser: Browser, server: ApiServer, sessions: sessionmaker[Session]
) -> None:
    far = record_id(sessions, flagged(1_003).record_id or "")
    page, errors = open_page(browser, f"{server.url}/?topic=telemetry&id={far}")
    page.wait_for_selector(f"#latent-map .outlier.selected[data-id='{far}']")
    sizes = page.locator("#latent-map ellipse.cluster-ellipse").evaluate_all(
        "(es) => es.map((e) => Number(e.getAttribute('rx')))"
    )
    assert len(sizes) == 3 and min(sizes) > 15  # not collapsed into a dot by the far record
    edge = page.locator(f"#latent-map .outlier[data-id='{far}']")
    x, y = (float(edge.get_attribute(a) or "nan") for a in ("data-x", "data-y"))
    assert min(x, 460 - x, y, 300 - y) < 10  # on the frame's edge (the map is 460 x 300)
    assert x > 230 and y > 150  # in its direction: right (x = 400) and down (y = -250)
    assert "far outside this view" in (edge.locator("title").text_content() or "")
    assert page.locator("#latent-map circle.record-point").count() == 3
    labels = page.locator("#latent-map .cluster-label").evaluate_all(
        "(ts) => ts.map((t) => { const b = t.getBBox(); return [b.x, b.y, b.width, b.height]; })"
    )
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            apart = (
                a[0] + a[2] <= b[0]
                or b[0] + b[2] <= a[0]
                or a[1] + a[3] <= b[1]
                or b[1] + b[3] <= a[1]
            )
            assert apart, (a, b)
    assert "far outside the clusters" in page.inner_text("#map-caption")
    screenshot(page, "explorer-map-far-record.png")
    page.close()
    assert errors == []


def test_on_a_phone_nothing_is_cut_and_the_record_opens_over_the_list(
    browser: Browser, server: ApiServer, sessions: sessionmaker[Session]
) -> None:
    page, errors = open_page(browser, f"{server.url}/", PHONE)
    page.wait_for_selector("#records tbody tr")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert not page.locator("#filter-panel").evaluate("(d) => d.open")  # folded
    assert page.locator("#detail").is_hidden()  # no record opened below the fold
    screenshot(page, "explorer-phone.png")

    page.locator("#records tbody tr").nth(1).click()
    page.wait_for_selector("#close-detail")
    box = page.locator("#detail").bounding_box()
    assert box is not None and box["y"] == 0 and box["width"] <= PHONE["width"]
    assert page.locator("#detail h2").is_visible() and page.locator(".feature-row").count() > 0
    assert overflow(page, "#detail") <= 0
    screenshot(page, "explorer-phone-record.png")
    page.click("#close-detail")
    assert page.locator("#detail").is_hidden() and page.locator("#records").is_visible()

    # a field name and value longer than the screen, opened from a link
    long_one = record_id(sessions, "R" * 120)
    page.goto(f"{server.url}/?id={long_one}")
    page.wait_for_selector(f".feature-row[data-feature='{LONG_NAME}']")
    assert page.locator("#detail").is_visible()
    assert overflow(page, "#detail") <= 0
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    name_box = page.locator(".feature-name").first.bounding_box()
    assert name_box is not None and name_box["x"] + name_box["width"] <= PHONE["width"]
    screenshot(page, "explorer-phone-long-names.png")
    page.close()
    assert errors == []


def test_long_names_stay_inside_the_panel_on_a_desktop(
    browser: Browser, server: ApiServer, sessions: sessionmaker[Session]
) -> None:
    long_one = record_id(sessions, "R" * 120)
    page, errors = open_page(browser, f"{server.url}/?top_feature={LONG_NAME}&id={long_one}")
    page.wait_for_selector(f".feature-row[data-feature='{LONG_NAME}']")
    assert overflow(page, "#detail") <= 0
    assert page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
    cell = page.locator(f"#records tbody tr[data-id='{long_one}'] td.text").nth(1)
    box = cell.bounding_box()
    table = page.locator(".list").bounding_box()
    assert (
        box is not None
        and table is not None
        and box["x"] + box["width"] <= table["x"] + table["width"]
    )
    page.close()
    assert errors == []


def test_auto_refresh_announces_new_records_and_shows_them_on_demand(
    browser: Browser, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    upgrade(url)
    engine = make_engine(url)
    live = session_factory(engine)
    seed(live, 30)
    page = browser.new_page(viewport=DESKTOP)
    page.set_default_timeout(TIMEOUT_MS)
    page.clock.install()  # the page's 30 s refresh timer runs when the test says so
    with serve(live) as server:
        page.goto(f"{server.url}/")
        page.wait_for_function(
            "() => document.getElementById('page-info').textContent.endsWith(' of 30')"
        )
        write_flagged(live, [flagged(i) for i in range(30, 33)], [MODEL_A])
        page.clock.run_for(31_000)
        page.wait_for_selector("#new-records:not([hidden])")
        assert page.inner_text("#new-records") == "3 new records · show"
        assert page.locator("#page-info").inner_text() == "1–25 of 30"  # the table stays put
        page.click("#new-records")
        page.wait_for_function(
            "() => document.getElementById('page-info').textContent.endsWith(' of 33')"
        )
        assert page.locator("#new-records").is_hidden()
        newest = page.locator("#records tbody tr").first.get_attribute("data-id")
        assert get_detail(server.url, int(newest or 0))["record_id"] == flagged(32).record_id
        page.close()
    engine.dispose()


def test_paging_keeps_the_applied_filters_until_new_ones_are_submitted(
    browser: Browser, server: ApiServer
) -> None:
    """A cursor belongs to its query: a filter typed but not yet applied must not be sent with
    the cursor of the applied one (the API would answer 422)."""
    page, errors = open_page(browser, f"{server.url}/?refresh=0")
    page.wait_for_selector("#records tbody tr")
    page.fill("input[name=topic]", "payments")  # typed, not submitted
    page.click("#next-page")
    page.wait_for_function(
        "() => document.getElementById('page-info').textContent.startsWith('26–50')"
    )
    assert "error" not in (page.locator("#status").get_attribute("class") or "")
    assert len(set(column(page, 2))) > 1  # still the unfiltered query's second page
    page.click("#filters button[type=submit]")
    page.wait_for_function(
        "() => document.getElementById('page-info').textContent.startsWith('1–25')"
    )
    assert set(column(page, 2)) == {"payments"}
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


def overflow(page: Page, selector: str) -> float:
    """How far the content of ``selector`` is wider than its box (<= 0: it fits)."""
    result: float = page.locator(selector).evaluate("(e) => e.scrollWidth - e.clientWidth")
    return result


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


def get_detail(url: str, flagged_id: int) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/flagged/{flagged_id}", timeout=10)
    response.raise_for_status()
    detail: dict[str, Any] = response.json()
    return detail


def boxes(page: Page, selector: str) -> list[dict[str, float]]:
    found = [
        page.locator(selector).nth(i).bounding_box() for i in range(page.locator(selector).count())
    ]
    return [box for box in found if box is not None]


def test_the_nearest_normal_record_shows_as_a_strip_and_a_walk_on_the_map(
    browser: Browser, cancer_model: Any, tmp_path: Path
) -> None:
    """A record flagged by the real detector path: the strip runs from its nearest normal
    record to it, the changed cells highlighted; the map draws the walk. A record stored
    before nearest normal records existed still opens, with a note."""
    det = cancer_model.detector
    odd = dict(cancer_model.normal[0])
    odd["mean_area"] = float(odd["mean_area"]) * 8
    records = [odd]
    message = PlainMessage("cf", 0, 0, 1_790_000_000_000, None, orjson.dumps(odd))
    rows = flagged_records(
        det, [message], det.score_records(records), record_of=records.__getitem__, now=T0
    )
    assert rows
    url = f"sqlite:///{tmp_path / 'cf.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    _, manifest = artifact.load(cancer_model.path)
    write_flagged(factory, [*rows, flagged(7)], [ModelVersion(det.version, manifest), MODEL_A])
    walk = rows[0].explanation["nearest_normal"]
    with serve(factory) as running:
        new = record_id(factory, str(odd["id"]))
        page, errors = open_page(browser, f"{running.url}/?id={new}")
        page.wait_for_selector("#nearest-normal table.strip")
        names = page.locator("#nearest-normal tbody tr").evaluate_all(
            "(rs) => rs.map((r) => r.dataset.field)"
        )
        assert names == [c["name"] for c in walk["changes"]]
        first = page.locator("#nearest-normal tbody tr").first
        assert "changed" not in (first.locator("td[data-step='0']").get_attribute("class") or "")
        assert "changed" in (first.locator("td[data-step='1']").get_attribute("class") or "")
        points = page.locator("#latent-map polyline.walk-path").get_attribute("points") or ""
        assert len(points.split()) == len(walk["path"]) + 1
        assert page.locator("#latent-map circle.walk-end").count() == 1
        assert "walk to its nearest normal record" in page.inner_text("#map-caption")
        screenshot(page, "explorer-nearest-normal.png", full_page=True)
        old = record_id(factory, flagged(7).record_id or "")
        page.goto(f"{running.url}/?id={old}")
        page.wait_for_selector("#nearest-normal.muted")
        assert "Stored before" in page.inner_text("#nearest-normal")
        page.close()
    engine.dispose()
    assert errors == []


# Live (MODEL_A) against shadow (MODEL_B) on "payments", 200 records scored by both; the stored
# rows of the records either flagged: (record i, live score, shadow score, live flag, shadow
# flag). By hand: flag rates 4/200 = 2 % and 2/200 = 1 % (both calibrated for 1 %); flagged by
# both 1 of 5 (overlap 20 %); Spearman of the ranks (5,4,3,2,1) and (4,1,2,3,5): sum d² = 28,
# rho = 1 - 6*28 / (5*24) = -0.4; record 0, the only one labelled (a true alarm): precision
# 100 % over 1 labelled for both; record 8, flagged by the shadow model only, unlabelled.
SHADOW_CASE = [
    (0, 9.0, 8.0, True, True),
    (2, 7.0, 1.0, True, False),
    (4, 6.0, 2.0, True, False),
    (6, 5.0, 3.0, True, False),
    (8, 1.0, 9.0, False, True),
]


def test_the_explorer_compares_the_live_model_with_its_shadow(
    browser: Browser, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'compare.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    live = [flagged(i) for i, *_, live_flag, _ in SHADOW_CASE if live_flag]
    scores = [
        ModelScore(
            "shadow",
            MODEL_B.version,
            "payments",
            i % 3,
            i,
            1_793_000_000_000 + i,
            f"pay-{i}",
            T0 + timedelta(seconds=10 * i),
            shadow_score,
            50.0,
            0.01,
            shadow_flag,
            MODEL_A.version,
            live_score,
            live_flag,
        )
        for i, live_score, shadow_score, live_flag, shadow_flag in SHADOW_CASE
    ]
    counts = [RunCount("shadow", MODEL_B.version, "payments", T0, 200, 2, 4)]
    write_flagged(factory, live, [MODEL_A, MODEL_B], scores=scores, run_counts=counts)
    add_feedback(factory, record_id(factory, "pay-0"), "true_alarm")
    with serve(factory) as running:
        page, errors = open_page(browser, f"{running.url}/")
        page.wait_for_selector("#compare:not([hidden]) .comparison")
        section = page.locator("#compare .comparison")
        assert section.count() == 1  # "logins" has no shadow model: not shown
        assert section.get_attribute("data-topic") == "payments"

        def cells(role: str) -> dict[str, str]:
            row = section.locator(f"tr[data-role={role}]")
            fields = row.locator("td[data-field]").evaluate_all(
                "(tds) => tds.map((td) => [td.dataset.field, td.textContent])"
            )
            return {"version": row.locator("td.version").inner_text(), **dict(fields)}

        assert cells("live") == {
            "version": MODEL_A.version,
            "fpr": "1.00 %",
            "flagged": "4",
            "flag_rate": "2.00 %",
            "precision": "100.00 % (1 labelled)",
        }
        assert cells("shadow") == {
            "version": MODEL_B.version,
            "fpr": "1.00 %",
            "flagged": "2",
            "flag_rate": "1.00 %",
            "precision": "100.00 % (1 labelled)",
        }
        assert "200 records scored by both" in section.locator("h3").inner_text()
        summary = section.locator(".summary").inner_text()
        assert "Flagged by both 1 of 5 (overlap 20.00 %)" in summary
        assert "score rank correlation -0.40" in summary
        assert "1 shadow-only flags nobody labelled" in summary
        screenshot(page, "explorer-compare.png", full_page=True)

        # filtering on a topic without a shadow model hides the section
        page.fill("#filters input[name=topic]", "logins")
        page.click("#filters button[type=submit]")
        wait_for_url(page, "topic=logins")
        page.wait_for_function("() => document.getElementById('compare').hidden")
        assert page.locator("#compare .comparison").count() == 0
        page.close()
    engine.dispose()
    assert errors == []
