"""The upload page in Debian's Chromium against the real gunicorn server and the shipped model:
file picker, several files, drag and drop, paste, refusals, phone width, keyboard, no JavaScript;
plus the gunicorn settings and readiness of the live server."""

import base64
import json
import runpy
import urllib.request
import uuid

import pytest

from conftest import DATA_DIR, PROJECT_ROOT, screenshot_path
from web_samples import encode, noise_image, solid_png

pytestmark = pytest.mark.slow
CLASSES = ("cat", "ship", "horse", "truck")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real CIFAR-10 photos from data/train when present, generated ones otherwise."""
    folder = tmp_path_factory.mktemp("photos")
    paths = [folder / f"{cls}.jpg" for cls in CLASSES]  # named by their true class
    for seed, (cls, path) in enumerate(zip(CLASSES, paths)):
        if (DATA_DIR / "train").is_dir():
            path.write_bytes(sorted((DATA_DIR / "train" / cls).glob("*.jpg"))[3].read_bytes())
        else:
            path.write_bytes(encode(noise_image((320, 240), seed), "JPEG"))
    return paths


@pytest.fixture(scope="module")
def shipped_version(shipped_model_dir):
    return json.loads((shipped_model_dir / "card.json").read_text())["version"]


class Watched:
    """A page with its console errors and every URL it requested."""

    def __init__(self, context):
        self.context = context
        self.page = context.new_page()
        self.errors, self.requests = [], []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))

    def assert_stayed_local(self, base):
        assert self.requests and all(url.startswith((base + "/", "blob:", "data:")) for url in self.requests), \
            self.requests


@pytest.fixture
def watched(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield Watched(context)
    context.close()


def api_top(base, path):
    return api_prediction(base, path)["top"]


def api_prediction(base, path):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(base + "/api/v1/predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"][0]


def card_scores(card):
    labels = card.locator(".score-label").all_inner_texts()
    values = card.locator(".score-value").all_inner_texts()
    return list(zip(labels, values))


def wait_for_cards(page, count):
    page.locator("#results .card:not(.pending)").nth(count - 1).wait_for(timeout=30_000)
    return page.locator("#results .card")


def test_upload_through_the_file_picker(watched, live_server, photos, shipped_version):
    page = watched.page
    page.goto(live_server + "/")
    page.set_input_files("#image-input", [str(p) for p in photos])
    cards = wait_for_cards(page, len(photos))
    assert cards.count() == len(photos)
    for card, path in zip(cards.all(), photos):
        assert card.locator(".card-title").inner_text() == path.name
        expected = [(t["label"], f"{t['probability'] * 100:.1f}%") for t in api_top(live_server, path)]
        assert card_scores(card) == expected
        assert card.locator("meter.score-bar").count() == 5
        assert f"version {shipped_version}" in card.locator(".answered-by").inner_text()
        image = card.locator("img.card-image")
        assert image.get_attribute("src").startswith("blob:") and path.name in image.get_attribute("alt")
    assert page.locator("#model-version").inner_text() == shipped_version
    assert "4 of 4 photos classified" in page.locator("#upload-status").inner_text()
    page.screenshot(path=screenshot_path("upload.png"), full_page=True)
    assert watched.errors == []
    watched.assert_stayed_local(live_server)


def test_a_photo_of_none_of_the_classes_is_called_that_with_its_closest_guesses(watched, live_server, tmp_path):
    """A flat grey picture is none of the ten classes: the card says so in words, names the closest
    class with its whole percentage, and still shows the top-5 bars."""
    grey = tmp_path / "grey.png"
    grey.write_bytes(solid_png())
    page = watched.page
    page.goto(live_server + "/")
    assert "or that the photo is none of them" in page.locator(".about").inner_text()
    page.set_input_files("#image-input", [str(grey)])
    card = wait_for_cards(page, 1).first
    answer = api_prediction(live_server, grey)
    assert answer["recognised"] is False
    top, closest = answer["top"], answer["top"][0]
    assert card.locator(".verdict").inner_text() == (
        f"This doesn't look like any of the ten things I know. Closest: {closest['label']}, "
        f"{closest['probability'] * 100:.0f}%")
    assert "unrecognised" in card.get_attribute("class")
    assert card_scores(card) == [(t["label"], f"{t['probability'] * 100:.1f}%") for t in top]
    assert card.locator("meter.score-bar").count() == 5
    assert "none of the ten classes" in page.locator("#upload-status").inner_text()
    page.screenshot(path=screenshot_path("upload-none-of-these.png"), full_page=True)
    assert watched.errors == []


def test_classify_button_after_choosing_files(watched, live_server, photos):
    """Choosing files classifies them at once; pressing "Classify" afterwards, as the button
    invites, classifies the same photos again instead of asking for a photo."""
    page = watched.page
    page.goto(live_server + "/")
    page.set_input_files("#image-input", [str(p) for p in photos[:2]])
    wait_for_cards(page, 2)
    page.click("#classify-button")
    cards = wait_for_cards(page, 4)
    assert cards.count() == 4
    assert cards.locator(".card-title").all_inner_texts() == [p.name for p in photos[:2]] * 2
    assert page.locator("#upload-error").is_hidden()
    assert "2 of 2 photos classified" in page.locator("#upload-status").inner_text()
    assert watched.errors == []


def test_classify_button_with_nothing_chosen_asks_for_a_photo(watched, live_server):
    page = watched.page
    page.goto(live_server + "/")
    page.click("#classify-button")
    assert page.locator("#upload-error").inner_text() == "Choose, drop or paste a photo first."
    assert page.locator("#results .card").count() == 0


def data_transfer(page, path, name):
    """A DataTransfer holding `path` as a File, built inside the page."""
    content = base64.b64encode(path.read_bytes()).decode()
    return page.evaluate_handle("""([content, name]) => {
        const bytes = Uint8Array.from(atob(content), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        return transfer;
    }""", [content, name])


def test_drag_and_drop(watched, live_server, photos, shipped_version):
    page = watched.page
    page.goto(live_server + "/")
    transfer = data_transfer(page, photos[1], "dropped.jpg")
    page.dispatch_event("#upload-form", "dragover", {"dataTransfer": transfer})
    assert "dragging" in page.locator("#upload-form").get_attribute("class")
    page.dispatch_event("#upload-form", "drop", {"dataTransfer": transfer})
    card = wait_for_cards(page, 1).first
    assert card.locator(".card-title").inner_text() == "dropped.jpg"
    assert card_scores(card) == [(t["label"], f"{t['probability'] * 100:.1f}%")
                                 for t in api_top(live_server, photos[1])]
    assert f"version {shipped_version}" in card.locator(".answered-by").inner_text()
    assert "dragging" not in page.locator("#upload-form").get_attribute("class")
    assert watched.errors == []
    watched.assert_stayed_local(live_server)


def test_paste_from_the_clipboard(watched, live_server, photos):
    page = watched.page
    page.goto(live_server + "/")
    transfer = data_transfer(page, photos[2], "pasted.jpg")
    page.evaluate("transfer => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: transfer}))",
                  transfer)
    card = wait_for_cards(page, 1).first
    assert card.locator(".card-title").inner_text() == "pasted.jpg"
    assert card.locator(".score").count() == 5
    assert watched.errors == []


def test_a_refused_file_shows_why_and_the_others_still_answer(watched, live_server, photos, tmp_path):
    page = watched.page
    page.goto(live_server + "/")
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo at all")
    page.set_input_files("#image-input", [str(text), str(photos[0])])
    cards = wait_for_cards(page, 2)
    refused, accepted = cards.nth(0), cards.nth(1)
    assert "failed" in refused.get_attribute("class")
    assert "not an image in an accepted format" in refused.locator(".verdict").inner_text()
    assert accepted.locator(".score").count() == 5
    assert "1 of 2 photos classified, 1 refused." in page.locator("#upload-status").inner_text()
    assert [e for e in watched.errors if "415" not in e] == []  # Chromium logs the refused request


def test_phone_width(browser, live_server, photos):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.goto(live_server + "/")
    page.set_input_files("#image-input", [str(photos[0])])
    wait_for_cards(page, 1)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    card_box = page.locator("#results .card").first.bounding_box()
    assert card_box["x"] >= 0 and card_box["x"] + card_box["width"] <= 390
    page.screenshot(path=screenshot_path("upload-phone.png"), full_page=True)
    context.close()


def test_keyboard_reaches_the_file_picker_and_the_button(watched, live_server):
    page = watched.page
    page.goto(live_server + "/")
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert focused[0] == "Skip to content"
    assert "image-input" in focused and "classify-button" in focused
    assert focused.index("image-input") + 1 == focused.index("classify-button")


def test_works_without_javascript(browser, live_server, photos, shipped_version):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_server + "/")
    page.set_input_files("#image-input", [str(photos[0]), str(photos[1])])
    page.click("button[type=submit]")
    page.wait_for_url(live_server + "/")
    assert page.locator("h1").inner_text() == "Results"
    cards = page.locator(".card")
    assert cards.count() == 2
    assert card_scores(cards.first) == [(t["label"], f"{t['probability'] * 100:.1f}%")
                                        for t in api_top(live_server, photos[0])]
    assert f"version {shipped_version}" in cards.first.locator(".answered-by").inner_text()
    context.close()


# --- the live gunicorn server ----------------------------------------------------------------

def test_live_server_is_ready_with_the_shipped_model(live_server, shipped_version):
    with urllib.request.urlopen(live_server + "/readyz", timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read())["model"]["version"] == shipped_version
    with urllib.request.urlopen(live_server + "/healthz", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok"}


@pytest.mark.parametrize("cores,torch_threads,requested,expected", [
    (2, 1, None, (2, 1)), (2, 1, 8, (2, 1)), (2, 1, 1, (1, 1)), (16, 4, None, (4, 4)),
    (2, 4, None, (1, 2)), (1, 1, 3, (1, 1)),
])
def test_gunicorn_never_plans_more_threads_than_cores(cores, torch_threads, requested, expected):
    plan = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))["worker_plan"]
    assert plan(cores, torch_threads, requested) == expected


def test_gunicorn_settings(monkeypatch):
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("WEB_WORKERS", "64")
    monkeypatch.setenv("TORCH_THREADS", "1")
    settings = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    assert settings["bind"] == "127.0.0.1:8123"  # loopback unless WEB_HOST says
    monkeypatch.setenv("WEB_HOST", "0.0.0.0")
    assert runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))["bind"] == "0.0.0.0:8123"
    monkeypatch.delenv("WEB_HOST")
    assert settings["workers"] * int(settings["torch_threads"]) <= settings["available_cores"]()
    assert settings["timeout"] > 0 and settings["preload_app"] is False and callable(settings["post_worker_init"])
    # no recycling by default; when an operator turns it on, staggered (docs/operations.md)
    assert settings["max_requests"] == 0 and settings["max_requests_jitter"] == 0
    assert settings["worker_class"] == "webapp.core.graceful.DrainingThreadWorker" and settings["DRAIN_S"] == 5
    monkeypatch.setenv("WEB_MAX_REQUESTS", "500")
    recycling = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    assert recycling["max_requests"] == 500 and recycling["max_requests_jitter"] == 100


def test_an_unsure_answer_names_its_candidates_and_marks_them_in_the_bars(watched, live_server, tmp_path):
    """The JavaScript path says a two-class set as the template does: "A cat, or maybe a dog", both
    marked in the top-5 bars. The server's answer is rewritten on its way to the page (a real photo
    gives a two-class set only by chance), its top 5 kept."""
    photo = tmp_path / "noise.png"
    photo.write_bytes(encode(noise_image((64, 64)), "PNG"))
    page = watched.page

    prediction = api_prediction(live_server, photo)  # the server's own answer, asked beside the page
    first, second = (t["label"] for t in prediction["top"][:2])
    prediction.update(candidates=[first, second], answer="unsure", recognised=True)
    version = json.loads(urllib.request.urlopen(live_server + "/api/v1/model", timeout=30).read())

    def two_candidates(route):
        route.fulfill(json={"model": {"name": version["name"], "version": version["version"]},
                            "predictions": [prediction]})
    page.route("**/api/v1/predict", two_candidates)
    page.goto(live_server + "/")
    page.set_input_files("#image-input", [str(photo)])
    card = wait_for_cards(page, 1).first

    def article(label):
        return "an" if label[0] in "aeiou" else "a"
    words = f"{article(first).capitalize()} {first}, or maybe {article(second)} {second}"
    assert card.locator(".verdict").inner_text() == words
    assert card.locator(".score.candidate .score-label").all_inner_texts() == [first, second]
    assert "unsure" in card.get_attribute("class")
    assert watched.errors == []
