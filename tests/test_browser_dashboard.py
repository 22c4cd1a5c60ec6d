"""The dashboard in a real browser (Debian's Chromium via Playwright) against gunicorn serving the
shipped model: charts render, gallery images load, no console errors or CSP violations, nothing
fetched from outside 127.0.0.1, usable at phone width. Screenshot dashboard.png (see conftest.screenshot_path)."""

from urllib.parse import urlparse

import pytest

from conftest import screenshot_path

pytestmark = pytest.mark.slow

CHARTS = ("chart-per-class", "chart-confusion", "chart-loss", "chart-accuracy", "chart-calibration",
          "chart-dataset")


def open_dashboard(browser, base, **context_args):
    """A page on /dashboard with every image loaded; returns (page, console errors, outside requests)."""
    context = browser.new_context(**context_args)
    page = context.new_page()
    errors, outside = [], []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: urlparse(request.url).scheme not in ("data", "blob")
            and urlparse(request.url).hostname != "127.0.0.1" and outside.append(request.url))
    page.goto(base + "/dashboard", wait_until="networkidle")
    for image in page.locator("img").all():  # lazy images load once scrolled to
        image.scroll_into_view_if_needed()
    page.wait_for_function("[...document.images].every(img => img.complete)", timeout=15_000)
    return page, errors, outside


def test_dashboard_renders_charts_and_gallery(browser, live_server):
    page, errors, outside = open_dashboard(browser, live_server, viewport={"width": 1280, "height": 900})
    for chart_id in CHARTS:
        chart = page.locator(f"svg#{chart_id}")
        assert chart.is_visible(), chart_id
        box = chart.bounding_box()
        assert box["width"] > 200 and box["height"] > 100, chart_id
    assert page.locator("svg#chart-confusion g.cell rect").count() == 100
    assert page.locator("svg#chart-loss polyline").count() == 2
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => ({src: i.src, w: i.naturalWidth, alt: i.alt, shown: i.clientWidth}))")
    assert len(images) >= 10
    for image in images:
        assert image["w"] > 0 and image["alt"] and image["shown"] > 0, image
    assert page.locator("#misclassified img").count() > 0 and page.locator("#dataset img").count() == 10
    page.locator("#confusion summary").click()  # the numbers as a table, without JavaScript
    assert page.locator("#confusion table").is_visible()
    page.locator("#confusion summary").click()
    page.screenshot(path=screenshot_path("dashboard.png"), full_page=True)
    assert errors == [] and outside == []
    page.context.close()


def test_version_menu_submits_and_fits_a_phone(browser, live_server):
    page, errors, outside = open_dashboard(browser, live_server, viewport={"width": 390, "height": 844})
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"page wider than the phone: {width}"
    version = page.locator("select#version").input_value()
    page.locator("select#version").select_option(version)
    page.get_by_role("button", name="Show").click()
    page.wait_for_load_state("networkidle")
    assert f"version={version}" in page.url and page.locator("svg#chart-confusion").is_visible()
    assert errors == [] and outside == []
    page.context.close()
