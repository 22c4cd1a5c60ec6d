"""A schema-driven fuzzer (Schemathesis) against the served OpenAPI document, every operation:
no 500, every answer's status and body as documented, schema-valid requests accepted and
schema-violating ones refused. Runs on the WSGI app in this process (no network).

A started training job's process is a `sleep` here: what is fuzzed is the HTTP contract, and
real jobs are tested in test_admin_jobs.py.
"""

import subprocess

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from admin_support import TOKEN, admin_config, write_dataset
from conftest import make_model_dir
from webapp import create_app
from webapp.lifecycle import jobs
from webapp.predict.serving import warm_up

EXAMPLES_PER_OPERATION = 60
# Photos are binary parts: no JSON schema can say "a decodable image", so schema-valid bytes that are
# not one are refused (415, documented); and a form field is always text, so a schema-violating
# "integer" in it reaches the server as the same characters a valid string would. Those two checks
# stay off for the photo operations; their refusals are tested in test_web_upload.py. A training
# job's `data` and `init_from` name things that exist at run time (folders, versions), which no
# static document lists: an unknown one is a 400 (test_admin_jobs.py), so a schema-valid job may be.
PHOTO_OPERATIONS = {("POST", "/api/v1/predict"), ("POST", "/api/v1/explain"), ("POST", "/api/v1/feedback"),
                    ("POST", "/predictions/{model_name}"), ("PUT", "/predictions/{model_name}")}


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(admin_config(tmp, make_model_dir(tmp / "model"), write_dataset(tmp / "data", 4, 2)))
    warm_up(app)
    return app


@pytest.fixture(autouse=True)
def sleeping_job_process(monkeypatch):
    started = []

    def spawn(site, job_id, params):
        started.append(subprocess.Popen(["sleep", "300"]))
        return started[-1]
    monkeypatch.setattr(jobs, "_spawn", spawn)
    yield
    for process in started:
        process.kill()
        process.wait()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.auth()
class AdminToken:
    """The admin API's bearer token on every case, except where a case tests its absence."""

    def get(self, case, context):
        return TOKEN

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    return schemathesis.openapi.from_wsgi("/api/openapi.json", fuzzed_app)


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_the_api_answers_as_its_document_says(case):
    excluded = []
    operation = (case.operation.method.upper(), case.operation.path)
    if operation in PHOTO_OPERATIONS:
        excluded += [schemathesis.checks.positive_data_acceptance, schemathesis.checks.negative_data_rejection]
    if operation == ("POST", "/api/v1/admin/jobs"):
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.call_and_validate(excluded_checks=excluded)
