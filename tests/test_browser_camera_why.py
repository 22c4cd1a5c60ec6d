"""The upload page's camera and "Why?" in Debian's Chromium against the real gunicorn server and
the shipped model: "Take a photo" with Chromium's fake camera (live preview, capture, the captured
JPEG classified as an upload), no camera or no permission said in words while upload still works,
and the saliency overlay laid over a result's thumbnail and toggled."""

import re
import time

import pytest

from conftest import DATA_DIR, launch_chromium, screenshot_path
from web_samples import encode, noise_image

pytestmark = pytest.mark.slow
FAKE_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
PREDICT, EXPLAIN = "/api/v1/predict", "/api/v1/explain"
# what a browser without a usable camera does, made in the page before upload.js runs
NO_MEDIA_DEVICES = "Object.defineProperty(Navigator.prototype, 'mediaDevices', {get: () => undefined});"
REFUSING = ("navigator.mediaDevices.getUserMedia = () => "
            "Promise.reject(new DOMException('Permission denied', '{}'));")

# Chromium does not show Playwright a multipart body holding a Blob, so the page keeps what it sent
KEEP_SENT_PHOTOS = """window.sentPhotos = [];
const send = window.fetch;
window.fetch = (url, options) => {
    if (options && options.body instanceof FormData) window.sentPhotos.push(options.body.get("image"));
    return send(url, options);
};"""


@pytest.fixture(scope="module")
def camera_browser(playwright_driver):
    browser = launch_chromium(playwright_driver, *FAKE_CAMERA)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real CIFAR-10 photo from data/train when present, a generated one otherwise."""
    path = tmp_path_factory.mktemp("photos") / "cat.jpg"
    if (DATA_DIR / "train").is_dir():
        path.write_bytes(sorted((DATA_DIR / "train" / "cat").glob("*.jpg"))[3].read_bytes())
    else:
        path.write_bytes(encode(noise_image((320, 240), 1), "JPEG"))
    return path


class Page:
    """A page of a fresh context with its console errors and the requests it made."""

    def __init__(self, browser, **context_args):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_args)
        self.page = self.context.new_page()
        self.errors, self.requests = [], []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request))

    def posts_to(self, path):
        return [r for r in self.requests if r.method == "POST" and r.url.endswith(path)]


@pytest.fixture
def opened(request):
    pages = []

    def open_page(browser, **context_args):
        pages.append(Page(browser, **context_args))
        return pages[-1]
    yield open_page
    for page in pages:
        page.context.close()


def wait_until(page, expression, seconds=15):
    """Poll from here: page.wait_for_function evaluates its predicate with eval(), which the page's
    Content-Security-Policy refuses."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {seconds} s: {expression}"
        page.wait_for_timeout(100)


def first_result(page):
    page.locator("#results .card:not(.pending)").first.wait_for(timeout=30_000)
    return page.locator("#results .card").first


def test_take_a_photo_with_the_fake_camera_and_see_its_result(camera_browser, live_server, opened):
    watched = opened(camera_browser, permissions=["camera"])
    page = watched.page
    page.add_init_script(KEEP_SENT_PHOTOS)
    page.goto(live_server + "/")
    assert page.locator("#camera-panel").is_hidden()
    page.click("#camera-button")
    wait_until(page, "document.getElementById('camera-preview').videoWidth > 0")  # the preview plays
    assert page.locator("#camera-preview").is_visible() and page.locator("#camera-message").is_hidden()
    assert page.locator("#camera-button").get_attribute("aria-expanded") == "true"
    page.click("#camera-capture")
    card = first_result(page)
    assert re.fullmatch(r"camera-\d\d-\d\d-\d\d\.jpg", card.locator(".card-title").inner_text())
    assert card.locator(".score").count() == 5 and "failed" not in card.get_attribute("class")
    assert card.locator("img.card-image").get_attribute("src").startswith("blob:")
    assert len(watched.posts_to(PREDICT)) == 1
    sent = page.evaluate("""async () => {
        const file = window.sentPhotos[0];
        return [file.type, Array.from(new Uint8Array(await file.slice(0, 3).arrayBuffer()))];
    }""")
    assert sent == ["image/jpeg", [0xFF, 0xD8, 0xFF]]  # the canvas's JPEG, posted as an upload is
    assert "camera-" in page.locator("#upload-status").inner_text()
    page.screenshot(path=screenshot_path("upload-camera.png"), full_page=True)
    page.click("#camera-close")
    assert page.locator("#camera-panel").is_hidden()
    assert page.evaluate("document.getElementById('camera-preview').srcObject") is None  # camera off
    assert watched.errors == []


@pytest.mark.parametrize("script, says", [
    (NO_MEDIA_DEVICES, "This browser offers no camera to this page"),
    (REFUSING.replace("{}", "NotAllowedError"), "Camera access was not allowed"),
    (REFUSING.replace("{}", "NotFoundError"), "No camera was found on this device."),
])
def test_without_a_camera_it_says_so_and_upload_still_works(camera_browser, live_server, opened, photo,
                                                            script, says):
    watched = opened(camera_browser)
    page = watched.page
    page.add_init_script(script)
    page.goto(live_server + "/")
    page.click("#camera-button")
    message = page.locator("#camera-message")
    message.wait_for(state="visible")
    assert says in message.inner_text() and "You can still choose, drop or paste photos." in message.inner_text()
    assert page.locator("#camera-panel").is_hidden()
    page.set_input_files("#image-input", [str(photo)])
    card = first_result(page)
    assert card.locator(".card-title").inner_text() == photo.name and card.locator(".score").count() == 5
    assert watched.errors == []


def test_why_lays_the_saliency_overlay_over_the_thumbnail(browser, live_server, opened, photo):
    watched = opened(browser)
    page = watched.page
    page.goto(live_server + "/")
    page.set_input_files("#image-input", [str(photo)])
    card = first_result(page)
    why, overlay = card.locator(".why-toggle"), card.locator("img.saliency-overlay")
    assert why.inner_text() == "Why?" and why.get_attribute("aria-pressed") == "false" and overlay.is_hidden()
    why.click()
    overlay.wait_for(state="visible", timeout=30_000)
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert why.get_attribute("aria-pressed") == "true" and why.inner_text() == "Hide why"
    label = card.locator(".verdict strong").first.text_content()  # the label: the first of the candidates
    assert card.locator(".why-note strong").text_content() == label
    assert overlay.bounding_box() == card.locator("img.card-image").bounding_box()
    page.screenshot(path=screenshot_path("upload-why.png"), full_page=True)
    why.click()
    assert overlay.is_hidden() and card.locator(".why-note").is_hidden()
    assert why.get_attribute("aria-pressed") == "false"
    why.click()
    assert overlay.is_visible()
    assert len(watched.posts_to(EXPLAIN)) == 1  # asked once, then only shown and hidden
    assert watched.errors == []
