"""The one error type of the web app and the one way every error is answered.

`AppError(status, code, message, filename=None)` is what views and helpers raise for a refused
request (RequestError, for photos, derives from it). The lifecycle's errors (JobError, VersionError,
FeedbackError: webapp.lifecycle, which knows no HTTP) carry a code, and `LIFECYCLE_STATUS` says
which status each code is answered with. Every error, ours or Werkzeug's, is answered as JSON
`{"error": {"code", "message"}}` when `wants_json()` says so and as the error page otherwise, with
the same status either way and never a traceback.
"""

from flask import current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from webapp.lifecycle.errors import LifecycleError

JSON_PREFIXES = ("/api/", "/predictions/")
JSON_PATHS = ("/healthz", "/readyz", "/ping")
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
              415: "unsupported_media_type", 429: "too_many_requests"}
# the lifecycle's codes that are not a 400
# damaged: a stored version whose digests do not match, refused like a version that does not load;
# store_unavailable: the object store cannot be reached, a retry later may work
LIFECYCLE_STATUS = {"not_found": 404, "job_running": 409, "not_resumable": 409, "not_running": 409,
                    "refused": 409, "damaged": 409, "spawn_failed": 500, "store_unavailable": 503}
TITLES = {400: "That did not work", 404: "Page not found", 405: "Not allowed here",
          413: "Too large", 415: "Not a photo we can read", 500: "Something went wrong"}


class AppError(Exception):
    """A refused request. `filename` names the refused file when the problem is one file of it."""

    def __init__(self, status: int, code: str, message: str, filename: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.filename = status, code, message, filename


def wants_json() -> bool:
    """The one rule: the APIs, the health checks and the JSON the admin pages poll (`*.json`)."""
    path = request.path
    return path.startswith(JSON_PREFIXES) or path in JSON_PATHS or path.endswith(".json")


def error_response(status: int, code: str, message: str, filename: str | None = None):
    """JSON for a JSON request, the error page otherwise; a Response, so callers can add headers."""
    if wants_json():
        error = {"code": code, "message": message}
        if filename is not None:
            error.update(message=f"{filename}: {message}", filename=filename)
        response = jsonify(error=error)
    else:
        response = current_app.make_response(render_template(
            "error.html", status=status, title=TITLES.get(status, TITLES[400]), message=message,
            filename=filename))
    response.status_code = status
    return response


def http_error_message(error: HTTPException) -> str:
    if error.code == 413:
        return (f"the request is larger than the upload limit of "
                f"{float(current_app.config['MAX_UPLOAD_MB']):g} MB")
    if isinstance(error, CSRFError):
        return "the form expired or did not come from this site: reload the page and try again"
    return error.description or error.name


def handle_http_error(error: HTTPException):
    code = "csrf_failed" if isinstance(error, CSRFError) else HTTP_CODES.get(error.code, "http_error")
    response = error_response(error.code, code, http_error_message(error))
    allow = dict(error.get_headers()).get("Allow")
    if allow:  # a 405 says which methods would work
        response.headers["Allow"] = allow
    return response


def handle_app_error(error: AppError):
    return error_response(error.status, error.code, error.message, error.filename)


def status_of(error: LifecycleError) -> int:
    return LIFECYCLE_STATUS.get(error.code, 400)


def handle_lifecycle_error(error: LifecycleError):
    return error_response(status_of(error), error.code, error.message)


def handle_unexpected_error(error: Exception):
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "something went wrong on the server; it has been logged")


def init_app(app):
    app.register_error_handler(AppError, handle_app_error)
    app.register_error_handler(LifecycleError, handle_lifecycle_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected_error)
