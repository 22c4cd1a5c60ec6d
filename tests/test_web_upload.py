"""The upload page without JavaScript: the form, the result page, the same refusals as the API in
words, and agreement with `python -m ml.predict`."""

import base64
import io
import re

import pytest
from PIL import Image

from conftest import image_bytes
from web_samples import bad_files, encode, good_files, noise_image, run_ml_predict

GOOD, BAD = good_files(), bad_files()
CARD = re.compile(r'<article class="card(?: unrecognised| unsure)?">(.*?)</article>', re.S)
NONE_OF_THESE = "This doesn't look like any of the ten things I know."


def csrf_token(client) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)


def post_form(client, files, token=True):
    data = {"image": [(io.BytesIO(content), name) for name, content in files]}
    if token:
        data["csrf_token"] = csrf_token(client)
    return client.post("/", data=data, content_type="multipart/form-data")


def scores(card_html):
    labels = re.findall(r'<span class="score-label">(.*?)</span>', card_html)
    values = re.findall(r'<span class="score-value">(.*?)</span>', card_html)
    return list(zip(labels, values))


def assert_error_page(response, status, *words):
    page = response.get_data(as_text=True)
    assert response.status_code == status and response.mimetype == "text/html"
    assert 'role="alert"' in page and "Traceback" not in page
    for word in words:
        assert word in page
    return page


def test_page_has_an_accessible_form_that_works_without_javascript(client, app):
    page = client.get("/").get_data(as_text=True)
    form = re.search(r'<form id="upload-form"[^>]*>', page).group(0)
    assert 'method="post"' in form and 'enctype="multipart/form-data"' in form and 'action="/"' in form
    assert re.search(r'<input type="hidden" name="csrf_token" value="[^"]+">', page)
    file_input = re.search(r'<input id="image-input"[^>]*>', page, re.S).group(0)
    assert 'type="file"' in file_input and 'name="image"' in file_input and "multiple" in file_input
    assert '<label class="file-label" for="image-input">' in page
    assert '<button id="classify-button" class="button" type="submit">Classify</button>' in page
    assert 'aria-live="polite"' in page and 'role="alert"' in page
    assert '<html lang="en">' in page and 'name="viewport"' in page


def test_page_names_the_model_and_what_it_knows(client):
    page = client.get("/").get_data(as_text=True)
    assert '<strong id="model-name">test-airnet</strong>' in page
    assert '<strong id="model-version">test-1</strong>' in page
    for name in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"):
        assert f"<li>{name}</li>" in page
    assert "CIFAR-10" in page and "32×32" in page


def test_front_page_says_what_it_does_with_a_photo_of_none_of_the_classes(client, tmp_path, refusing_model_dir):
    from webapp import create_app
    older = client.get("/").get_data(as_text=True)  # a card without a threshold: the model cannot tell
    assert "This version was not fitted to tell when a photo is none of them" in older
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "i"), "MODEL_DIR": str(refusing_model_dir)})
    page = app.test_client().get("/").get_data(as_text=True)
    assert "or that the photo is none of them" in page
    for text in (older, page):
        assert "always answers" not in text and "even for a photo of something else" not in text


def test_result_page_says_none_of_these_and_keeps_the_top_five(tmp_path, refusing_model_dir):
    from webapp import create_app
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "i"), "MODEL_DIR": str(refusing_model_dir)})
    client = app.test_client()
    page = post_form(client, [("grey.png", image_bytes("PNG", color=(128, 128, 128)))]).get_data(as_text=True)
    card = re.search(r'<article class="card unrecognised">(.*?)</article>', page, re.S).group(1)
    label, percent = re.search(re.escape(NONE_OF_THESE) + r" Closest: <strong>(\w+)</strong>, (\d+)%", card).groups()
    closest = scores(card)[0]  # the first bar, to one decimal
    assert label == closest[0] and abs(int(percent) - float(closest[1].rstrip("%"))) <= 0.51
    assert len(scores(card)) == 5 and "sure)" not in card and "or maybe" not in card


def test_page_follows_its_content_security_policy(client):
    """No inline script, style attribute or event handler, and every asset from this server."""
    page = client.get("/").get_data(as_text=True)
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert not re.search(r"\sstyle=|\son[a-z]+=", page)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        assert client.get(asset).status_code == 200, asset


def test_form_post_renders_results_in_upload_order(client):
    response = post_form(client, [GOOD["jpeg"], GOOD["palette png with transparency"]])
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    cards = CARD.findall(page)
    assert [re.search(r'<h3 class="card-title">(.*?)</h3>', c).group(1) for c in cards] == ["photo.jpg", "palette.png"]
    for card in cards:
        # the fixture's card has no prediction sets: one candidate, said as "A cat (12.3% sure)"
        assert len(scores(card)) == 5 and NONE_OF_THESE not in card
        assert re.search(r'<p class="verdict">An? <strong>\w+</strong> <span class="muted">\(\d+\.\d% sure\)', card)
        assert "Answered by test-airnet version test-1" in card
        assert re.search(r'<meter class="score-bar" min="0" max="1" value="[0-9.e-]+" aria-hidden="true">', card)


def answered(result):
    """A predictor's answer for one photo, as the Predictor shapes it."""
    top = [{"label": label, "probability": p} for label, p in result["top"]]
    return {"label": top[0]["label"], "confidence": top[0]["probability"], "top": top,
            "candidates": result["candidates"], "answer": result["answer"], "recognised": True, "novelty": -1.0}


@pytest.mark.parametrize("candidates, words", [
    (["cat"], "A <strong>cat</strong>"),
    (["cat", "dog"], "A <strong>cat</strong>, or maybe a <strong>dog</strong>"),
    (["automobile", "truck", "airplane"],
     "An <strong>automobile</strong>, or maybe a <strong>truck</strong> or an <strong>airplane</strong>"),
])
def test_result_page_says_the_candidates_and_marks_them_in_the_bars(app, client, monkeypatch, candidates, words):
    from webapp.predict.serving import current_predictor
    with app.app_context():
        predictor = current_predictor()
    ranked = list(zip(candidates + [c for c in ("frog", "ship", "horse", "deer", "bird") if c not in candidates],
                      [0.5, 0.3, 0.1, 0.05, 0.03]))[:5]
    result = answered({"top": ranked, "candidates": candidates, "answer": "sure" if len(candidates) == 1 else "unsure"})
    monkeypatch.setattr(predictor, "predict_arrays", lambda arrays: [result for _ in arrays])
    page = post_form(client, [GOOD["jpeg"]]).get_data(as_text=True)
    card = CARD.search(page).group(0)
    assert words in card
    marked = re.findall(r'<li class="score candidate">\s*<span class="score-label">(\w+)</span>', card)
    assert marked == candidates
    assert ('<article class="card unsure">' in card) == (len(candidates) > 1)
    assert ("50.0% sure" in card) == (len(candidates) == 1)


def test_result_page_never_serves_the_upload_back(client):
    upload = encode(noise_image((200, 150)), "PNG")
    page = post_form(client, [("photo.png", upload)]).get_data(as_text=True)
    assert base64.b64encode(upload[:60]).decode() not in page
    previews = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(previews) == 1
    preview = Image.open(io.BytesIO(base64.b64decode(previews[0])))
    assert preview.format == "PNG" and preview.size == (32, 32)  # only what the model saw, re-encoded
    assert 'alt="The 32 by 32 pixel image the model saw for photo.png"' in page


def test_file_names_are_escaped(client):
    page = post_form(client, [('<img src=x onerror=alert(1)>.jpg', GOOD["jpeg"][1])]).get_data(as_text=True)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.jpg" in page


def test_page_agrees_with_ml_predict(client, tiny_model_dir, tmp_path):
    names = ["jpeg", "exif rotated", "cmyk jpeg"]
    paths = []
    for name in names:
        filename, data = GOOD[name]
        paths.append(tmp_path / filename)
        paths[-1].write_bytes(data)
    cards = CARD.findall(post_form(client, [GOOD[name] for name in names]).get_data(as_text=True))
    for card, cli in zip(cards, run_ml_predict(tiny_model_dir, paths), strict=True):
        assert scores(card) == [(t["label"], f"{t['probability'] * 100:.1f}%") for t in cli["top"]]
        assert f"<strong>{cli['label']}</strong>" in card


def test_form_without_csrf_token_is_refused(client):
    assert_error_page(post_form(client, [GOOD["jpeg"]], token=False), 400, "reload the page")


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_files_get_the_api_status_in_words(client, kind):
    filename, data, status, _ = BAD[kind]
    page = assert_error_page(post_form(client, [GOOD["jpeg"], (filename, data)]), status, filename)
    assert CARD.findall(page) == []


def test_no_file_chosen(client):
    assert_error_page(post_form(client, [("", b"")]), 400, "No image was sent")


def test_too_many_files(client):
    files = [(f"p{i}.png", image_bytes("PNG", (8, 8))) for i in range(20)]
    assert_error_page(post_form(client, files), 413, "20 files were sent; the limit is 16")


def test_over_size_upload(client):
    assert_error_page(post_form(client, [("huge.jpg", bytes(11 * 1024 * 1024))]), 413, "10 MB")


def test_unknown_page_and_wrong_method_are_html(client):
    assert_error_page(client.get("/no-such-page"), 404, "Page not found")
    assert_error_page(client.delete("/"), 405, "Not allowed here")


def test_unexpected_failure_is_a_plain_500_page(client, app, monkeypatch):
    from webapp.predict.serving import current_predictor
    with app.app_context():
        predictor = current_predictor()

    def explode(arrays):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(predictor, "predict_arrays", explode)
    page = assert_error_page(post_form(client, [GOOD["jpeg"]]), 500, "Something went wrong")
    assert "secret internals" not in page


def test_page_agrees_with_ml_predict_with_the_shipped_model(real_data_dir, shipped_model_dir, tmp_path):
    from webapp import create_app
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"),
                      "MODEL_DIR": str(shipped_model_dir)})
    photos = [sorted((real_data_dir / "train" / cls).glob("*.jpg"))[1] for cls in ("dog", "frog")]
    page = post_form(app.test_client(), [(p.name, p.read_bytes()) for p in photos]).get_data(as_text=True)
    cards = CARD.findall(page)
    for card, cli in zip(cards, run_ml_predict(shipped_model_dir, photos), strict=True):
        assert scores(card) == [(t["label"], f"{t['probability'] * 100:.1f}%") for t in cli["top"]]
