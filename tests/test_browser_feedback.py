"""Feedback in Chromium against a real gunicorn: a user corrects a prediction on the upload page
(reading first that sending keeps the photo), then an admin finds it on the Feedback page, sees the
re-encoded photo and accepts it with the keyboard."""

import pytest

from admin_support import PASSWORD, TOKEN
from conftest import screenshot_path, start_server, watched_page
from web_samples import encode, noise_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, shipped_model_dir):
    instance = tmp_path_factory.mktemp("feedback-browser") / "instance"
    instance.mkdir()
    gunicorn = start_server(instance, shipped_model_dir, env_extra={"ADMIN_PASSWORD": PASSWORD, "ADMIN_TOKEN": TOKEN})
    yield gunicorn.base
    gunicorn.stop()


@pytest.fixture
def page(browser, server):
    context, page = watched_page(browser, server)
    yield page
    context.close()


def test_a_user_corrects_a_prediction_and_an_admin_accepts_it(page, server, tmp_path):
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(encode(noise_image((320, 240), 3), "JPEG"))
    page.goto(server + "/")
    page.set_input_files("#image-input", [str(photo)])
    card = page.locator("#results .card:not(.pending)").first
    card.wait_for(timeout=30_000)
    card.locator(".feedback summary").click()
    form = card.locator(".feedback-form")
    assert "the only way a photo is ever kept" in form.locator(".consent").inner_text()
    assert form.locator("input[name=predicted]").input_value()
    form.locator("select[name=label]").select_option("ship")
    form.locator("button:has-text('Send photo and answer')").click()
    form.locator(".feedback-status:has-text('Thank you')").wait_for(timeout=30_000)
    page.screenshot(path=screenshot_path("feedback-sent.png"), full_page=True)

    page.goto(server + "/admin/feedback")
    page.fill("#password", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_url(server + "/admin/feedback")
    item = page.locator(".feedback-item")
    assert item.count() == 1 and "ship" in item.inner_text() and "pending" in item.inner_text()
    image = item.locator("img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert max(image.evaluate("img => [img.naturalWidth, img.naturalHeight]")) <= 512

    item.locator("input[type=checkbox]").focus()
    page.keyboard.press("Space")
    page.locator("button[accesskey=a]").focus()
    page.keyboard.press("Enter")
    page.locator(".info:has-text('accepted')").wait_for(timeout=10_000)
    page.screenshot(path=screenshot_path("feedback-review.png"), full_page=True)
    page.select_option("#filter-status", "accepted")
    page.click("button:has-text('Filter')")
    assert "accepted" in page.locator(".feedback-item").inner_text()
    assert page.errors == [] and page.foreign == []
