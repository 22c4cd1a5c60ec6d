"""POST /api/v1/explain through the Flask test client on the tiny model: the documented shape, the
same prediction as /api/v1/predict, the label to explain, and every refusal a clear 4xx."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from conftest import image_bytes
from ml.predict.explain import MAX_ALPHA
from openapi_support import conforms
from webapp.predict import api
from web_samples import encode, noise_image

URL = "/api/v1/explain"
PHOTO = encode(noise_image((80, 60), seed=4), "JPEG")


def post(client, files, url=URL, **fields):
    data = {"image": [(io.BytesIO(content), name) for name, content in files], **fields}
    return client.post(url, data=data, content_type="multipart/form-data")


def assert_refused(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    conforms(response)
    return error


def overlay_image(data_url) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):])))
    assert image.format == "PNG"
    return image


def test_explains_the_top_prediction_in_the_documented_shape(client):
    response = post(client, [("photo.jpg", PHOTO)])
    assert response.status_code == 200 and response.mimetype == "application/json"
    conforms(response)
    answer = response.get_json()
    predicted = post(client, [("photo.jpg", PHOTO)], url="/api/v1/predict").get_json()
    assert answer["model"] == predicted["model"]
    assert answer["prediction"]["label"] == predicted["predictions"][0]["label"]
    assert answer["prediction"]["filename"] == "photo.jpg"
    assert answer["label"] == answer["prediction"]["label"] and answer["method"] == "integrated_gradients"
    saliency = np.array(answer["saliency"])
    assert saliency.shape == (32, 32) and saliency.min() >= 0 and saliency.max() == 1
    overlay = overlay_image(answer["overlay"])
    assert overlay.size == (32, 32) and overlay.mode == "RGBA"
    alpha = np.array(overlay)[..., 3].astype(float)
    assert np.abs(alpha - saliency * MAX_ALPHA).max() <= 1  # opaque as the map says, transparent where it is 0


def test_the_same_photo_gets_the_same_map(client):
    first, second = (post(client, [("a.jpg", PHOTO)]).get_json() for _ in range(2))
    assert first["saliency"] == second["saliency"] and first["overlay"] == second["overlay"]


def test_a_label_field_chooses_the_class_explained(client):
    top = post(client, [("a.jpg", PHOTO)]).get_json()
    other = next(t["label"] for t in top["prediction"]["top"] if t["label"] != top["label"])
    answer = post(client, [("a.jpg", PHOTO)], label=other).get_json()
    assert answer["label"] == other and answer["prediction"]["label"] == top["label"]
    assert answer["saliency"] != top["saliency"]


def test_raw_body_with_label_and_filename_in_the_query(client):
    response = client.post(URL + "?label=horse&filename=pony.png", data=image_bytes("PNG"), content_type="image/png")
    assert response.status_code == 200
    conforms(response)
    answer = response.get_json()
    assert answer["label"] == "horse" and answer["prediction"]["filename"] == "pony.png"


def test_unknown_label_is_400_naming_the_classes(client):
    error = assert_refused(post(client, [("a.jpg", PHOTO)], label="unicorn"), 400, "unknown_label")
    assert "'unicorn'" in error["message"] and "airplane" in error["message"] and "truck" in error["message"]


def test_no_photo_is_400(client):
    assert_refused(client.post(URL, data=b"", content_type="image/jpeg"), 400, "no_file")
    assert_refused(client.post(URL, data={"label": "cat"}, content_type="multipart/form-data"), 400, "no_file")


def test_one_photo_per_request(client):
    error = assert_refused(post(client, [("a.jpg", PHOTO), ("b.jpg", PHOTO)]), 413, "too_many_files")
    assert "limit is 1" in error["message"]


@pytest.mark.parametrize("content, code, status", [
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported_media_type", 415),
    (PHOTO[: len(PHOTO) // 2], "corrupt_image", 400),
])
def test_unreadable_photos_are_refused_naming_the_file(client, content, code, status):
    error = assert_refused(post(client, [("evil.jpg", content)]), status, code)
    assert error["filename"] == "evil.jpg"


def test_only_post(client):
    response = client.get(URL)
    assert response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"


def test_the_answer_is_inert_json(client):
    """The client's photo never comes back: only JSON and a PNG drawn from the map, never sniffed."""
    response = post(client, [("<script>.jpg", PHOTO)])
    assert response.mimetype == "application/json" and response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert base64.b64encode(PHOTO[:48]).decode() not in response.get_data(as_text=True)


def test_explain_steps_setting(client, app, monkeypatch):
    seen = []
    original = api.saliency_map
    monkeypatch.setattr(api, "saliency_map", lambda *args: seen.append(args[3]) or original(*args))
    app.config["EXPLAIN_STEPS"] = 4
    assert post(client, [("a.jpg", PHOTO)]).status_code == 200
    assert seen == [4]


def test_the_camera_is_allowed_on_this_site_only(client):
    policy = client.get("/").headers["Permissions-Policy"]
    assert "camera=(self)" in policy and "microphone=()" in policy
