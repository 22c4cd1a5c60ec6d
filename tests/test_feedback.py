"""Feedback on a prediction: kept only when sent, re-encoded without metadata, one item per photo,
refused (and nothing kept) beyond the upload limits and the rate limit; reviewed only by an admin
(bearer token for the API, login and CSRF for the page); exported as an image-folder zip."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from admin_support import PASSWORD, TOKEN, auth_headers, csrf_token, login
from conftest import image_bytes
from ml.predict.predictor import Predictor
from webapp import create_app
from webapp.lifecycle import feedback
from webapp.lifecycle.site import Site

CAMERA = "SecretCam 3000"


def config(tmp_path, model_dir, **extra):
    return {"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"), "MODEL_DIR": str(model_dir),
            "WTF_CSRF_ENABLED": True, "ADMIN_PASSWORD": PASSWORD, "ADMIN_TOKEN": TOKEN, **extra}


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    return create_app(config(tmp_path, tiny_model_dir))


@pytest.fixture
def client(app):
    return app.test_client()


def photo(color=(200, 30, 30), size=(64, 48)) -> bytes:
    return image_bytes(color=color, size=size)


def camera_photo() -> bytes:
    """A 1200x900 JPEG whose EXIF names the camera and says "rotate 90 degrees"."""
    exif = Image.Exif()
    exif[0x010F] = CAMERA   # Make
    exif[0x0112] = 6        # Orientation: shown rotated by 90 degrees
    pixels = np.random.default_rng(0).integers(0, 255, (900, 1200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif.tobytes(), quality=80)
    return buffer.getvalue()


def send(client, data=None, label="cat", filename="photo.jpg", **fields):
    form = {"label": label, "predicted": "dog", "version": "test-1", **fields}
    if data is not None:
        form["image"] = (io.BytesIO(data), filename)
    return client.post("/api/v1/feedback", data=form, content_type="multipart/form-data")


def stored(app) -> tuple:
    """(rows of the feedback table, files in the feedback folder)."""
    with Site.of(app).database() as conn:
        rows = conn.execute("SELECT * FROM feedback").fetchall()
    folder = feedback.folder(Site.of(app))
    return rows, sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_plain_upload_keeps_nothing(app, client):
    assert client.post("/api/v1/predict", data={"image": (io.BytesIO(camera_photo()), "a.jpg")}).status_code == 200
    page = client.get("/").get_data(as_text=True)
    form = {"image": (io.BytesIO(photo()), "a.jpg"), "csrf_token": csrf_token(client, "/")}
    result = client.post("/", data=form, content_type="multipart/form-data").get_data(as_text=True)
    assert "Wrong? Tell us what it is" in result and "the only way a photo is ever kept" in result
    assert "only then is a copy kept" in page
    assert stored(app) == ([], [])


def test_feedback_keeps_a_re_encoded_copy_and_the_model_input(app, client, tiny_model_dir):
    original = camera_photo()
    response = send(client, original, label="none")
    assert response.status_code == 201 and response.json == {"id": 1, "duplicate": False}
    [item] = feedback.list_items(Site.of(app))
    assert (item["claimed"], item["label"], item["predicted"], item["version"], item["status"]) == \
        ("none", "none", "dog", "test-1", "pending")
    folder = feedback.folder(Site.of(app))
    kept = (folder / f"{item['hash']}.jpg").read_bytes()
    assert kept != original and CAMERA.encode() not in kept
    with Image.open(io.BytesIO(kept)) as image:
        assert image.format == "JPEG" and not image.getexif() and "exif" not in image.info
        assert image.size == (384, 512)  # turned upright as EXIF said, longest side 512
    with Image.open(folder / f"{item['hash']}.png") as model_input:
        assert np.array_equal(np.asarray(model_input), Predictor(tiny_model_dir).decode(original))


def test_the_same_photo_sent_twice_is_one_item(app, client):
    first = send(client, photo()).json
    again = send(client, photo(), label="dog")
    assert again.status_code == 200 and again.json == {"id": first["id"], "duplicate": True}
    # other metadata, same pixels: still the same photo
    same_pixels = io.BytesIO()
    Image.open(io.BytesIO(photo())).save(same_pixels, "PNG")
    assert send(client, same_pixels.getvalue(), filename="other.png").json["id"] == first["id"]
    rows, files = stored(app)
    assert len(rows) == 1 and len(files) == 2
    [item] = feedback.list_items(Site.of(app))
    assert item["sends"] == 3 and item["claimed"] == "cat"


def noise_png(size) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("request_kwargs, status, code", [
    ({"data": b"not a photo"}, 415, "unsupported_media_type"),
    ({"data": noise_png((300, 300))}, 413, "payload_too_large"),      # over MAX_UPLOAD_MB
    ({"data": photo(size=(600, 500))}, 413, "image_too_large"),       # over MAX_PIXELS
    ({"data": None}, 400, "no_file"),
    ({"data": photo(), "label": ""}, 400, "bad_request"),
    ({"data": photo(), "label": "unicorn"}, 400, "bad_label"),
    ({"data": photo(), "predicted": "x" * 500}, 400, "bad_request"),
])
def test_refused_feedback_keeps_nothing(tmp_path, tiny_model_dir, request_kwargs, status, code):
    app = create_app(config(tmp_path, tiny_model_dir, MAX_UPLOAD_MB=0.1, MAX_PIXELS=200_000))
    response = send(app.test_client(), **request_kwargs)
    assert response.status_code == status and response.json["error"]["code"] == code
    assert stored(app) == ([], [])


def test_two_photos_at_once_are_refused(app, client):
    form = {"label": "cat", "image": [(io.BytesIO(photo()), "a.jpg"), (io.BytesIO(photo((0, 0, 255))), "b.jpg")]}
    response = client.post("/api/v1/feedback", data=form, content_type="multipart/form-data")
    assert response.status_code == 413 and response.json["error"]["code"] == "too_many_files"
    assert stored(app) == ([], [])


def test_feedback_is_rate_limited_per_client(tmp_path, tiny_model_dir):
    app = create_app(config(tmp_path, tiny_model_dir, FEEDBACK_MAX_SENDS=2))
    client = app.test_client()
    assert [send(client, photo((i * 40, 0, 0))).status_code for i in range(2)] == [201, 201]
    refused = send(client, photo((0, 200, 0)))
    assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_requests"
    assert len(stored(app)[0]) == 2 and len(stored(app)[1]) == 4
    # another address may still send
    assert client.post("/api/v1/feedback", data={"label": "cat", "image": (io.BytesIO(photo((0, 0, 9))), "c.jpg")},
                       environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 201


def test_the_no_javascript_form_sends_feedback_with_csrf(app, client):
    form = {"label": "cat", "predicted": "dog", "version": "test-1", "image": (io.BytesIO(photo()), "a.jpg")}
    assert client.post("/feedback", data=dict(form), content_type="multipart/form-data").status_code == 400
    assert stored(app) == ([], [])
    form.update(csrf_token=csrf_token(client, "/"), image=(io.BytesIO(photo()), "a.jpg"))
    response = client.post("/feedback", data=form, content_type="multipart/form-data")
    assert response.status_code == 201 and "Thank you" in response.get_data(as_text=True)
    assert len(stored(app)[0]) == 1


def test_review_api_needs_the_token(app, client):
    item_id = send(client, photo()).json["id"]
    assert client.get("/api/v1/admin/feedback").status_code == 401
    assert client.post(f"/api/v1/admin/feedback/{item_id}", json={"status": "accepted"}).status_code == 401
    assert client.delete(f"/api/v1/admin/feedback/{item_id}").status_code == 401
    assert feedback.list_items(Site.of(app))[0]["status"] == "pending"
    reviewed = client.post(f"/api/v1/admin/feedback/{item_id}", json={"status": "accepted", "label": "dog"},
                           headers=auth_headers())
    assert reviewed.status_code == 200 and (reviewed.json["status"], reviewed.json["label"]) == ("accepted", "dog")
    listed = client.get("/api/v1/admin/feedback?status=accepted", headers=auth_headers()).json["items"]
    assert [i["id"] for i in listed] == [item_id] and listed[0]["claimed"] == "cat"
    assert client.get("/api/v1/admin/feedback?status=pending", headers=auth_headers()).json["items"] == []
    assert client.delete(f"/api/v1/admin/feedback/{item_id}", headers=auth_headers()).status_code == 204
    assert stored(app) == ([], [])


def review(client, ids, action, token=None, **extra):
    form = {"ids": [str(i) for i in ids], "action": action, **extra}
    if token:
        form["csrf_token"] = token
    return client.post("/admin/feedback/review", data=form)


def test_review_page_needs_login_and_csrf(app, client):
    ids = [send(client, photo((i * 50, 10, 10))).json["id"] for i in range(3)]
    assert client.get("/admin/feedback").status_code == 302
    assert client.get(f"/admin/feedback/{ids[0]}/photo.jpg").status_code == 302
    assert review(client, ids, "accept").status_code == 400  # no CSRF token
    refused = review(client, ids, "accept", csrf_token(client))
    assert refused.status_code == 302 and "/admin/login" in refused.headers["Location"]
    login(client)
    assert review(client, ids, "accept").status_code == 400  # no CSRF token
    assert {i["status"] for i in feedback.list_items(Site.of(app))} == {"pending"}
    token = csrf_token(client, "/admin/feedback")
    assert review(client, ids[:2], "relabel", token, new_label="ship").status_code == 302
    assert review(client, ids[2:], "reject", token).status_code == 302
    by_id = {i["id"]: i for i in feedback.list_items(Site.of(app))}
    assert [(by_id[i]["status"], by_id[i]["label"]) for i in ids] == \
        [("accepted", "ship"), ("accepted", "ship"), ("rejected", "cat")]
    page = client.get("/admin/feedback?status=accepted&label=ship").get_data(as_text=True)
    assert page.count('name="ids"') == 2 and 'accesskey="a"' in page and "(user said cat)" in page
    assert '<option value="none">none</option>' in page and "None" not in page


def test_photos_are_served_to_the_admin_as_inert_images(app, client):
    item_id = send(client, camera_photo()).json["id"]
    login(client)
    response = client.get(f"/admin/feedback/{item_id}/photo.jpg")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["Content-Disposition"].startswith("inline")
    assert CAMERA.encode() not in response.data
    assert client.get(f"/admin/feedback/{item_id}/photo.png").mimetype == "image/png"
    assert client.get(f"/admin/feedback/{item_id}/photo.svg").status_code == 404
    assert client.get("/admin/feedback/999/photo.jpg").status_code == 404


def test_delete_for_good_removes_the_photo_and_its_copies(app, client):
    ids = [send(client, photo((i * 50, 10, 10))).json["id"] for i in range(2)]
    digest = feedback.get(Site.of(app), ids[0])["hash"]
    copy = Path(app.instance_path) / "jobs" / "7" / "feedback" / "train" / "cat" / f"{digest}.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"a job's copy")
    login(client)
    assert review(client, ids[:1], "delete", csrf_token(client, "/admin/feedback")).status_code == 302
    rows, files = stored(app)
    assert len(rows) == 1 and not any(digest in name for name in files) and not copy.exists()


def test_export_is_an_image_folder_zip_of_the_accepted(app, client):
    ids = [send(client, photo((i * 40, 90, 10)), label=label).json["id"]
           for i, label in enumerate(["cat", "cat", "ship", "none", "dog"])]
    feedback.review(Site.of(app), ids[:4], "accepted", [])
    feedback.review(Site.of(app), ids[4:], "rejected", [])
    login(client)
    response = client.get("/admin/feedback/export.zip")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.data)).namelist()
    hashes = {i: feedback.get(Site.of(app), i)["hash"] for i in ids}
    assert sorted(names) == sorted([f"cat/{hashes[ids[0]]}.jpg", f"cat/{hashes[ids[1]]}.jpg",
                                    f"ship/{hashes[ids[2]]}.jpg"])
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        assert Image.open(io.BytesIO(archive.read(names[0]))).format == "JPEG"


def test_the_split_is_fixed_by_the_hash():
    assert feedback.split_of("00000000" + "f" * 56) == "eval"
    assert feedback.split_of("00000001" + "0" * 56) == "train"
    digests = [f"{i:08x}" + "0" * 56 for i in range(1000)]
    assert sum(feedback.split_of(d) == "eval" for d in digests) == 200
