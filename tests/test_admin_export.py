"""The admin's model downloads: ONNX and TorchScript per version, admin only (session for the page,
bearer token for the API), made once and then served from the cache."""

import io
import json

import onnxruntime
import pytest

from admin_support import admin_config, auth_headers, login
from ml.export import formats as export
from ml.export.formats import load_torchscript
from test_admin_versions import add, tamper
from webapp import create_app
from webapp.lifecycle.site import Site
from webapp.lifecycle.versions import store

PAGE = "/admin/versions/{}/export/{}"
API = "/api/v1/admin/versions/{}/export/{}"


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    return create_app(admin_config(tmp_path, tiny_model_dir, tmp_path / "data"))


def assert_attachment(response, suffix):
    assert response.status_code == 200
    assert response.mimetype == "application/octet-stream"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and disposition.endswith(f'shipped{suffix}')


def test_downloads_need_admin_rights(client):
    page = client.get(PAGE.format("shipped", "onnx"))
    assert page.status_code == 302 and "/admin/login" in page.headers["Location"]
    assert client.get(API.format("shipped", "onnx")).status_code == 401
    assert client.get(API.format("shipped", "onnx"), headers=auth_headers("wrong")).status_code == 401
    login(client)  # a session cookie is not enough for the API
    assert client.get(API.format("shipped", "onnx")).status_code == 401


def test_the_admin_page_links_and_serves_a_valid_onnx_file(app):
    client = app.test_client()
    login(client)
    home = client.get("/admin").get_data(as_text=True)
    assert PAGE.format("shipped", "onnx") in home and PAGE.format("shipped", "torchscript") in home
    response = client.get(PAGE.format("shipped", "onnx"))
    assert_attachment(response, ".onnx")
    session = onnxruntime.InferenceSession(response.data, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "logits", "novelty"]
    assert "card" in session.get_modelmeta().custom_metadata_map


def test_the_api_serves_torchscript_and_then_the_cached_files(app, monkeypatch):
    client = app.test_client()
    first = client.get(API.format("shipped", "torchscript"), headers=auth_headers())
    assert_attachment(first, ".pt")
    extra = {"card.json": ""}
    load_torchscript(io.BytesIO(first.data), extra)
    assert json.loads(extra["card.json"])["format"] == "torchscript"

    def no_second_export(*args):
        raise AssertionError("exported again instead of serving the cached file")

    monkeypatch.setattr(export, "export_model", no_second_export)
    again = client.get(API.format("shipped", "torchscript"), headers=auth_headers())
    assert again.status_code == 200 and again.data == first.data


def test_unknown_formats_and_versions_404_and_damaged_weights_409(app, tmp_path):
    client = app.test_client()
    assert client.get(API.format("shipped", "pickle"), headers=auth_headers()).status_code == 404
    assert client.get(API.format("nope", "onnx"), headers=auth_headers()).status_code == 404
    damaged = add(store(Site.of(app)), tmp_path, 4)
    tamper(store(Site.of(app)), damaged, keep=100)  # the weights object in the store
    response = client.get(API.format(damaged, "onnx"), headers=auth_headers())
    assert response.status_code == 409 and "checksum" in response.json["error"]["message"]
