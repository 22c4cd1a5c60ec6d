"""The OpenAPI document describes the whole JSON API: every JSON route of the app (the admin API
included, with its bearer scheme) is an operation of the document, and a real answer of every
operation, success and refusal, validates against it."""

import io
import re

import pytest
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest
from openapi_core.exceptions import OpenAPIError
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from admin_support import LONG_JOB, admin_config, auth_headers, wait_for, write_dataset
from conftest import image_bytes
from ml.train.presets import PRESETS
from openapi_support import OPENAPI, SPEC, conforms
from webapp import create_app
from webapp.core.errors import JSON_PATHS, JSON_PREFIXES
from webapp.lifecycle import jobs, traffic
from webapp.lifecycle.site import Site
from webapp.predict.serving import warm_up

HTTP_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH"}


def documented_operations() -> set:
    return {(method.upper(), path) for path, item in SPEC["paths"].items() for method in item
            if method.upper() in HTTP_METHODS}


def openapi_path(rule: str) -> str:
    """Flask's /jobs/<int:job_id> -> OpenAPI's /jobs/{job_id}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def json_routes(app) -> set:
    return {(method, openapi_path(rule.rule)) for rule in app.url_map.iter_rules()
            if rule.rule.startswith(JSON_PREFIXES) or rule.rule in (*JSON_PATHS, "/metrics")
            for method in rule.methods & HTTP_METHODS}


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    app = create_app(admin_config(tmp_path, tiny_model_dir, write_dataset(tmp_path / "data", 12, 4)))
    yield app
    site = Site.of(app)
    if jobs.active_job(site):  # leave no training process behind
        jobs.cancel(site, jobs.active_job(site)["id"])
        wait_for(lambda: jobs.active_job(site) is None, 60, what="the job to stop")


class Checked:
    """Sends requests and validates every answer, remembering which operations answered."""

    def __init__(self, app):
        self.app, self.client, self.answered = app, app.test_client(), set()

    def __call__(self, method, path, status, admin=False, **kwargs):
        headers = auth_headers() if admin else {}
        response = getattr(self.client, method.lower())(path, headers=headers, **kwargs)
        assert response.status_code == status, (path, response.get_data(as_text=True))
        conforms(response)
        rule, _ = self.app.url_map.bind("localhost").match(path.split("?")[0], method, return_rule=True)
        self.answered.add((method, openapi_path(rule.rule)))
        return response.get_json(silent=True)


def photo_form(field="image", data=None):
    return {"data": {field: (io.BytesIO(image_bytes() if data is None else data), "photo.jpg")},
            "content_type": "multipart/form-data"}


def check_public_api(call, app):
    call("GET", "/readyz", 503)
    warm_up(app)
    model = call("GET", "/readyz", 200)["model"]
    call("GET", "/healthz", 200)
    call("GET", "/ping", 200)
    call("GET", "/api/v1/model", 200)
    call("GET", "/api/openapi.json", 200)
    assert call("GET", "/api/v1/traffic?version=shipped", 200)["windows"]["week"]["photos"] == 0
    call("GET", "/metrics", 200)
    call("POST", "/api/v1/predict", 200, **photo_form())
    call("POST", "/api/v1/predict", 400, data=b"", content_type="image/jpeg")
    call("POST", "/api/v1/predict", 413, content_type="multipart/form-data",
         data={"image": [(io.BytesIO(image_bytes()), f"{i}.jpg") for i in range(app.config["MAX_FILES"] + 1)]})
    call("POST", "/api/v1/predict", 415, data=b"not a photo", content_type="image/png")
    call("POST", "/api/v1/explain", 200, **photo_form())
    call("POST", "/api/v1/explain?label=cat", 200, data=image_bytes(), content_type="image/jpeg")
    call("POST", "/api/v1/explain?label=unicorn", 400, data=image_bytes(), content_type="image/jpeg")
    call("POST", f"/predictions/{model['name']}", 200, **photo_form("data"))
    call("PUT", f"/predictions/{model['name']}", 200, data=image_bytes(), content_type="image/jpeg")
    call("POST", "/predictions/no-such-model", 404, **photo_form("data"))
    traffic.flush_all()  # what this process counted, as a worker writes it every TRAFFIC_FLUSH_S
    assert call("GET", "/api/v1/traffic", 200)["windows"]["hour"]["photos"] > 0
    call("GET", "/api/v1/traffic?version=nope", 404)


def check_admin_api(call):
    call("GET", "/api/v1/admin/jobs", 401)
    call("POST", "/api/v1/admin/jobs", 400, admin=True, json={"preset": "huge"})
    job = call("POST", "/api/v1/admin/jobs", 202, admin=True, json=LONG_JOB)
    call("POST", "/api/v1/admin/jobs", 409, admin=True, json=LONG_JOB)
    call("GET", f"/api/v1/admin/jobs/{job['id']}?since=0", 200, admin=True)
    call("POST", f"/api/v1/admin/jobs/{job['id']}/cancel", 202, admin=True)
    wait_for(lambda: call("GET", f"/api/v1/admin/jobs/{job['id']}", 200, admin=True)["status"] == "cancelled",
             120, 0.5, "the job to stop")
    call("POST", f"/api/v1/admin/jobs/{job['id']}/cancel", 409, admin=True)
    call("GET", "/api/v1/admin/jobs/999", 404, admin=True)
    call("POST", "/api/v1/admin/jobs/999/cancel", 404, admin=True)
    assert call("GET", "/api/v1/admin/jobs", 200, admin=True)["jobs"][0]["status"] == "cancelled"
    call("GET", "/api/v1/admin/versions", 200, admin=True)
    call("POST", "/api/v1/admin/versions/shipped/activate", 200, admin=True)
    call("POST", "/api/v1/admin/versions/nope/activate", 404, admin=True)
    call("GET", "/api/v1/admin/versions/shipped/export/onnx", 200, admin=True)
    call("GET", "/api/v1/admin/versions/nope/export/onnx", 404, admin=True)


def check_feedback_api(call):
    form = photo_form()
    form["data"].update(label="cat", predicted="dog", version="test-1")
    sent = call("POST", "/api/v1/feedback", 201, **form)
    call("POST", "/api/v1/feedback", 200, **dict(photo_form(), data=dict(photo_form()["data"], label="cat")))
    call("POST", "/api/v1/feedback", 400, **dict(photo_form(), data=dict(photo_form()["data"], label="unicorn")))
    call("POST", "/api/v1/feedback", 415, **dict(photo_form(data=b"not a photo"),
                                                  data=dict(photo_form(data=b"not a photo")["data"], label="cat")))
    call("GET", "/api/v1/admin/feedback", 401)
    call("GET", "/api/v1/admin/feedback?status=pending", 200, admin=True)
    call("GET", "/api/v1/admin/feedback?status=maybe", 400, admin=True)
    call("POST", f"/api/v1/admin/feedback/{sent['id']}", 200, admin=True, json={"status": "accepted", "label": "dog"})
    call("POST", f"/api/v1/admin/feedback/{sent['id']}", 400, admin=True, json={"status": "perhaps"})
    call("POST", "/api/v1/admin/feedback/999", 404, admin=True, json={"status": "rejected"})
    call("DELETE", f"/api/v1/admin/feedback/{sent['id']}", 204, admin=True)
    call("DELETE", f"/api/v1/admin/feedback/{sent['id']}", 404, admin=True)


def test_every_json_route_is_documented_and_answers_as_documented(app):
    assert json_routes(app) == documented_operations()
    call = Checked(app)
    check_public_api(call, app)
    check_admin_api(call)
    check_feedback_api(call)
    assert call.answered == documented_operations()


def test_admin_operations_need_the_bearer_token():
    scheme = SPEC["components"]["securitySchemes"]["adminToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path in documented_operations():
        secured = SPEC["paths"][path][method.lower()].get("security")
        assert (secured == [{"adminToken": []}]) == path.startswith("/api/v1/admin/"), (method, path)


def test_the_job_presets_are_the_trainers():
    enum = SPEC["components"]["schemas"]["JobRequest"]["properties"]["preset"]["enum"]
    assert sorted(enum) == sorted(PRESETS)


def multipart_request(path, parts):
    builder = EnvironBuilder(path=path, method="POST", data={name: (io.BytesIO(data), "photo.jpg")
                                                             for name, data in parts.items()})
    return WerkzeugOpenAPIRequest(Request(builder.get_environ()))


@pytest.mark.parametrize("path, field", [("/api/v1/predict", "image"), ("/predictions/m", "data")])
def test_an_empty_image_part_is_invalid_in_the_schema_as_on_the_server(path, field):
    OPENAPI.validate_request(multipart_request(path, {field: image_bytes()}))
    with pytest.raises(OpenAPIError):
        OPENAPI.validate_request(multipart_request(path, {field: b""}))
