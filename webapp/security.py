"""Security headers on every response, and errors that never show a traceback.

Errors answer JSON `{"error": {"code", "message"}}` under the API paths and an HTML page
elsewhere, with the same status either way.
"""

from flask import current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from webapp.uploads import RequestError

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "img-src 'self' data: blob:",  # previews of the user's own photos are object URLs in the page
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
JSON_PREFIXES = ("/api/", "/predictions/")
JSON_PATHS = ("/healthz", "/readyz", "/ping")
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
              415: "unsupported_media_type", 429: "too_many_requests"}
TITLES = {400: "That did not work", 404: "Page not found", 405: "Not allowed here",
          413: "Too large", 415: "Not a photo we can read", 500: "Something went wrong"}


def add_security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def wants_json() -> bool:
    return request.path.startswith(JSON_PREFIXES) or request.path in JSON_PATHS


def error_response(status: int, code: str, message: str, filename: str | None = None):
    """The one way every error is answered: JSON for API paths, the error page otherwise."""
    if wants_json():
        error = {"code": code, "message": message}
        if filename is not None:
            error.update(message=f"{filename}: {message}", filename=filename)
        return jsonify(error=error), status
    return render_template("error.html", status=status, title=TITLES.get(status, TITLES[400]),
                           message=message, filename=filename), status


def http_error_message(error: HTTPException) -> str:
    if error.code == 413:
        return (f"the request is larger than the upload limit of "
                f"{float(current_app.config['MAX_UPLOAD_MB']):g} MB")
    if isinstance(error, CSRFError):
        return "the form expired or did not come from this site: reload the page and try again"
    return error.description or error.name


def handle_http_error(error: HTTPException):
    code = "csrf_failed" if isinstance(error, CSRFError) else HTTP_CODES.get(error.code, "http_error")
    response = current_app.make_response(error_response(error.code, code, http_error_message(error)))
    allow = dict(error.get_headers()).get("Allow")
    if allow:  # a 405 says which methods would work
        response.headers["Allow"] = allow
    return response


def handle_request_error(error: RequestError):
    return error_response(error.status, error.code, error.message, error.filename)


def handle_unexpected_error(error: Exception):
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "something went wrong on the server; it has been logged")


def init_app(app):
    app.after_request(add_security_headers)
    app.register_error_handler(RequestError, handle_request_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected_error)
