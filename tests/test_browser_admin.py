"""The admin flow in Chromium against a real gunicorn: log in, start a short job, watch the progress
bar and the loss plot advance live, see the new version wait at the gate, promote it, and see the
upload page answer with it. Screenshot job.png (see conftest.screenshot_path)."""

import pytest
from PIL import Image

from admin_support import PASSWORD, TOKEN, wait_for, write_dataset
from conftest import screenshot_path, start_server, watched_page

WATCHED_JOB = {"preset": "seed", "epochs": "40", "limit": "300", "batch_size": "50"}  # ~15 s of training


@pytest.fixture(scope="module")
def server(tmp_path_factory, shipped_model_dir):
    root = tmp_path_factory.mktemp("admin-browser")
    data = write_dataset(root / "data")
    instance = root / "instance"
    instance.mkdir()
    # a negative margin: a version must beat the shipped model's accuracy by a whole 100% to pass
    # the gate by itself, so the new one waits and the admin promotes it
    gunicorn = start_server(instance, shipped_model_dir, workers=2, env_extra={
        "ADMIN_PASSWORD": PASSWORD, "ADMIN_TOKEN": TOKEN, "TRAIN_DATA": str(data), "TRAIN_THREADS": "1",
        "TRAIN_SUITE": "false", "PROMOTION_MARGIN": "-1"})
    yield gunicorn.base
    gunicorn.stop()


@pytest.fixture
def page(browser, server):
    context, page = watched_page(browser, server)
    yield page
    context.close()


def number(page, selector, attribute):
    return float(page.locator(selector).get_attribute(attribute) or 0)


def test_admin_retrains_watches_promotes_and_serves(page, server, tmp_path):
    page.goto(server + "/admin")
    assert "/admin/login" in page.url
    page.fill("#password", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_url(server + "/admin")

    page.click("main a:has-text('New training job')")
    page.select_option("#preset", "seed")
    for field, value in WATCHED_JOB.items():
        if field != "preset":
            page.fill(f"#{field}", value)
    page.click("button:has-text('Start training')")
    page.wait_for_url("**/admin/jobs/*")
    job_url = page.url

    # the progress bar and the loss plot advance without a reload
    wait_for(lambda: number(page, "#progress", "value") > 0, 300, 0.2, "progress")
    first_progress = number(page, "#progress", "value")
    first_points = number(page, "#loss-chart", "data-points")
    wait_for(lambda: number(page, "#progress", "value") > first_progress
             and number(page, "#loss-chart", "data-points") > first_points, 60, 0.2, "the plot to advance")
    assert page.url == job_url
    assert page.locator("#loss-chart polyline").count() >= 1
    assert "epoch" in page.locator("#progress-text").inner_text()
    assert page.locator("#cancel-button").is_visible()
    assert "epoch" in page.locator("#log").inner_text()

    # the job ends: the page shows the new version waiting at the gate
    page.locator("#job-status:has-text('succeeded')").wait_for(timeout=300_000)
    version = page.locator("#result-version").inner_text()
    assert "stays inactive" in page.locator("#result").inner_text()
    assert page.locator("#epochs-table tbody tr").count() == 40
    assert number(page, "#acc-chart", "data-points") == 80
    page.screenshot(path=screenshot_path("job.png"), full_page=True)

    # promote it from the admin page
    page.goto(server + "/admin")
    row = page.locator(f"tr[data-version='{version}']")
    row.locator("button:has-text('Promote')").click()
    page.wait_for_url(server + "/admin")
    assert "is now active" in page.locator(".info").inner_text()
    assert page.locator(f"tr[data-version='{version}'] .badge.ok").inner_text() == "active"

    # the upload page answers with the new version (every worker within 5 s)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (30, 140, 200)).save(photo)

    def upload_answer():
        page.goto(server + "/")
        page.set_input_files("#image-input", [str(photo)])
        card = page.locator("#results .card:not(.pending)").first
        card.wait_for(timeout=30_000)
        return version in card.locator(".answered-by").inner_text()

    wait_for(upload_answer, 10, 0.5, "the upload page to answer with the new version")
    assert page.locator("#model-version").inner_text() == version
    assert not page.errors and not page.foreign
