"""The OpenAPI document (webapp/predict/openapi.json) and a check of real responses against it."""

import json

from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse

from conftest import PROJECT_ROOT

SPEC = json.loads((PROJECT_ROOT / "webapp" / "predict" / "openapi.json").read_text())
OPENAPI = OpenAPI.from_dict(SPEC)


class AnsweredRequest(WerkzeugOpenAPIRequest):
    """The request as openapi-core needs it to check the response: its method and path (the body
    was consumed by the app)."""

    @property
    def body(self):
        return None


def conforms(response):
    """Validate a real response against the OpenAPI document (raises on any mismatch)."""
    OPENAPI.validate_response(AnsweredRequest(response.request), WerkzeugOpenAPIResponse(response))
    return response
